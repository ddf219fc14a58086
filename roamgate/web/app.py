"""The web door: the aiohttp app factory, and the listener `roamgate serve` opens for it."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from roamgate.config import Listener
from roamgate.devices import DeviceError, build_crl
from roamgate.gateway.serve import DOORS, Door
from roamgate.gateway.tls import server_context
from roamgate.runtime import Runtime
from roamgate.web import account, admin, enroll, health, middlewares
from roamgate.web.keys import RT
from roamgate.web.pages import html_page, redirect
from roamgate.web.render import Markup

log = logging.getLogger("roamgate.web")

# Forms are small; nothing larger is ever posted.
MAX_REQUEST_BYTES = 64 * 1024
_INVITE = re.compile(r"/invite/[^ ?]*")
_APPROVE = re.compile(r"/callback/approve/[^ ?]*")

routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    body = Markup(
        "<p>This is the gateway's enrollment and administration site. To set up your codes,"
        " open the one-time link your administrator sent you.</p>"
        '<p><a href="/admin/login">Administrator login</a></p>'
    )
    return html_page(request, "roamgate", body)


@routes.get("/static/style.css")
async def stylesheet(request: web.Request) -> web.Response:
    css = (resources.files("roamgate.web") / "static" / "style.css").read_bytes()
    return web.Response(
        body=css, content_type="text/css", headers={"Cache-Control": "max-age=3600"}
    )


@routes.get("/ca.pem")
async def ca_pem(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[RT].config.tls.ca_file.read_bytes(),
        content_type="application/x-pem-file",
        headers={"Content-Disposition": 'attachment; filename="roamgate-ca.pem"'},
    )


@routes.get("/crl.pem")
async def crl_pem(request: web.Request) -> web.Response:
    """The current CRL, made from the store at each request (so every node serves the same)."""
    rt = request.app[RT]
    try:
        data = await build_crl(rt.config, rt.store, rt.clock())
    except DeviceError:
        raise web.HTTPNotFound(reason="No CRL") from None
    return web.Response(body=data, content_type="application/x-pem-file")


@routes.get("/crl.der")
async def crl_der(request: web.Request) -> web.Response:
    """The CRL in DER, as RFC 5280 4.2.1.13 wants at the URI the server certificate names."""
    rt = request.app[RT]
    try:
        data = await build_crl(rt.config, rt.store, rt.clock())
    except DeviceError:
        raise web.HTTPNotFound(reason="No CRL") from None
    der = x509.load_pem_x509_crl(data).public_bytes(serialization.Encoding.DER)
    return web.Response(body=der, content_type="application/pkix-crl")


@routes.get("/enroll/")
async def enroll_slash(request: web.Request) -> web.Response:
    return redirect("/enroll")


def create_app(
    rt: Runtime,
    *,
    extra_routes: Sequence[web.AbstractRouteDef] = (),
    subapps: Sequence[tuple[str, web.Application]] = (),
) -> web.Application:
    """The web app. extra_routes and subapps plug in more pages (e.g. callback approval).

    Extra handlers run behind the same middlewares: security headers, error pages, the
    session (request[roamgate.web.keys.SESSION]) and CSRF on every POST, unless a handler
    is wrapped in roamgate.web.middlewares.csrf_exempt because it checks a signature itself.
    """
    app = web.Application(
        middlewares=[
            middlewares.security_headers,
            middlewares.errors,
            middlewares.session_loader,
            middlewares.csrf,
        ],
        client_max_size=MAX_REQUEST_BYTES,
    )
    app[RT] = rt
    app.add_routes(routes)
    app.add_routes(enroll.routes)
    app.add_routes(admin.routes)
    app.add_routes(account.routes)
    health.setup(app, rt)
    app.add_routes(extra_routes)
    for prefix, sub in subapps:
        sub[RT] = rt
        app.add_subapp(prefix, sub)
    return app


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request, with an invite link's token cut out and no query string."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = _INVITE.sub("/invite/[token]", request.path)
        path = _APPROVE.sub("/callback/approve/[token]", path)[:200]
        self.logger.info(
            "web %s %s %s %d %.3fs", request.remote, request.method, path, response.status, time
        )


class WebDoor:
    """The HTTPS listener of the web app (TLS with the gateway's certificate)."""

    name = "web"

    def __init__(self, rt: Runtime, listener: Listener, app: web.Application) -> None:
        self.rt = rt
        self.listener = listener
        self.runner = web.AppRunner(
            app,
            access_log_class=RedactingAccessLogger,
            access_log=logging.getLogger("roamgate.web.access"),
            handle_signals=False,
            shutdown_timeout=5,
        )
        self.site: web.TCPSite | None = None
        # Browsers are never asked for a client certificate here (a prompt would confuse).
        self.ssl_context = server_context(
            dataclasses.replace(rt.config.tls, client_certificates="none")
        )

    async def start(self) -> None:
        await self.runner.setup()
        self.site = web.TCPSite(
            self.runner,
            self.listener.host,
            self.listener.port,
            ssl_context=self.ssl_context,
        )
        await self.site.start()

    def reload(self, rt: Runtime) -> None:
        """SIGHUP: new handshakes get the new certificate (see ImapDoor.reload)."""
        self.ssl_context.load_cert_chain(str(rt.config.tls.cert_file), str(rt.config.tls.key_file))

    async def close(self) -> None:
        await self.runner.cleanup()


async def open_web(rt: Runtime, listener: Listener, **plugins: Any) -> Door:
    if rt.callbacks is not None and "extra_routes" not in plugins:
        from roamgate.callback.http_routes import routes as callback_routes

        # Approve links and the provider's status callbacks (/callback/...).
        plugins["extra_routes"] = callback_routes(rt.callbacks)
    door = WebDoor(rt, listener, create_app(rt, **plugins))
    await door.start()
    return door


DOORS["web"] = open_web
