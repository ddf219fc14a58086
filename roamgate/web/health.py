"""/healthz (store and upstream IMAP reachable) and /metrics (Prometheus text) of the web door.

Neither needs a login or a CSRF token (both are GET and read nothing of a session). /healthz
answers from a result at most web.health_cache_seconds old and runs one probe at a time, so a
storm of health checks costs the upstream one connection per period. /metrics is served only
to the addresses in web.metrics_allow: the counters tell an outsider how busy the gateway is
and how many logins fail, which is nobody else's business.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass

from aiohttp import web

from roamgate.gateway.upstream import UpstreamImap
from roamgate.metrics import CONTENT_TYPE
from roamgate.runtime import Runtime
from roamgate.web.keys import RT

log = logging.getLogger("roamgate.web.health")

routes = web.RouteTableDef()


@dataclass(frozen=True)
class Health:
    """One probe's result: each check is "ok" or "fail" (never an error text)."""

    store: str
    upstream_imap: str

    @property
    def ok(self) -> bool:
        return self.store == "ok" and self.upstream_imap == "ok"

    def body(self) -> dict[str, str]:
        return {
            "status": "ok" if self.ok else "fail",
            "store": self.store,
            "upstream_imap": self.upstream_imap,
        }


class HealthProbe:
    """Checks the store and the upstream IMAP server; caches the answer for a few seconds."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cache_seconds = rt.config.web.health_cache_seconds
        self.timeout = rt.config.web.health_timeout_seconds
        self._lock = asyncio.Lock()
        self._last: tuple[float, Health] | None = None
        self.probes = 0  # how many probes ran (the storm test reads it)

    async def health(self) -> Health:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        # One probe at a time; requests that waited for it take its result.
        async with self._lock:
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            self.probes += 1
            store, upstream = await asyncio.gather(self._store(), self._upstream())
            result = Health(store, upstream)
            self._last = (time.monotonic(), result)
            return result

    def _fresh(self) -> Health | None:
        if self._last is None:
            return None
        at, result = self._last
        return result if time.monotonic() - at < self.cache_seconds else None

    async def _store(self) -> str:
        try:
            await asyncio.wait_for(self.rt.store.schema_version(), self.timeout)
        # Any failure, whatever the backend raises (sqlite3, asyncpg), is a "fail", not a 500.
        except Exception as exc:  # noqa: BLE001
            log.warning("health: store unreachable: %s", type(exc).__name__)
            return "fail"
        return "ok"

    async def _upstream(self) -> str:
        server = self.rt.config.upstream.imap
        try:
            # TCP, the greeting, STARTTLS or implicit TLS with the certificate verified.
            conn = await asyncio.wait_for(UpstreamImap.connect(server), self.timeout)
        # UpstreamError, a timeout, or a server that speaks no IMAP: all "fail", never a 500.
        except Exception as exc:  # noqa: BLE001
            # The log names the server and the failure for the operator; the answer does not.
            log.warning(
                "health: upstream IMAP %s:%d unreachable: %s", server.host, server.port, exc
            )
            return "fail"
        await conn.close()
        return "ok"


PROBE = web.AppKey("health_probe", HealthProbe)


def setup(app: web.Application, rt: Runtime) -> None:
    app[PROBE] = HealthProbe(rt)
    app.add_routes(routes)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    health = await request.app[PROBE].health()
    return web.json_response(health.body(), status=200 if health.ok else 503)


def metrics_allowed(rt: Runtime, remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for entry in rt.config.web.metrics_allow:
        network = ipaddress.ip_network(entry, strict=False)
        if address.version == network.version and address in network:
            return True
    return False


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RT]
    if not metrics_allowed(rt, request.remote):
        log.info("/metrics refused to %s (not in web.metrics_allow)", request.remote)
        raise web.HTTPForbidden(reason="Refused")
    return web.Response(body=rt.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
