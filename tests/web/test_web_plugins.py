"""The hooks another package uses to add pages: extra routes and sub-apps, behind the same guards."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from roamgate.config import Listener, load_config
from roamgate.demo.dovecot import free_port
from roamgate.runtime import open_runtime
from roamgate.web.app import WebDoor, create_app
from roamgate.web.keys import RT
from roamgate.web.middlewares import csrf_exempt
from tests.conftest import FakeClock
from tests.web.conftest import WebUnderTest, configure

extra = web.RouteTableDef()


@extra.get("/callback/approve")
async def approve_page(request: web.Request) -> web.Response:
    return web.Response(text="approve or deny " + request.app[RT].config.hostname)


@extra.post("/callback/approve")
async def approve_post(request: web.Request) -> web.Response:
    return web.Response(text="posted")


@extra.post("/callback/status")
@csrf_exempt
async def provider_status(request: web.Request) -> web.Response:
    return web.Response(text="signature checked by the handler")


async def test_extra_routes_and_subapps_get_headers_and_csrf(
    gateway_dir: Path, clock: FakeClock
) -> None:
    cfg = load_config(configure(gateway_dir))
    sub = web.Application()

    async def sub_page(request: web.Request) -> web.Response:
        return web.Response(text="sub " + request.app[RT].config.hostname)

    sub.router.add_get("/page", sub_page)
    async with open_runtime(cfg, clock=clock) as rt:
        port = free_port()
        app = create_app(rt, extra_routes=list(extra), subapps=[("/plugin/", sub)])
        door = WebDoor(rt, Listener(port=port), app)
        await door.start()
        try:
            w = WebUnderTest(rt, f"https://127.0.0.1:{port}", cfg.tls.ca_file, clock)
            async with w.client() as c:
                r = await c.get("/callback/approve")
                assert r.status == 200 and "approve or deny" in await r.text()
                assert r.headers["X-Frame-Options"] == "DENY"
                assert (await c.post("/callback/approve", data={})).status == 403
                r = await c.post("/callback/status", data={"x": "1"})
                assert r.status == 200
                r = await c.get("/plugin/page")
                assert r.status == 200 and await r.text() == "sub localhost"
                assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
        finally:
            await door.close()
