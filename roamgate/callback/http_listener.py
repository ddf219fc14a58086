"""A plain HTTP listener for the callback routes (`callback.http`), until the web door serves them.

Meant for a lab or behind a TLS-terminating proxy: approve links and provider status callbacks
should reach the gateway over TLS. With the web door, its app adds http_routes.routes instead.
"""

from __future__ import annotations

from aiohttp import web

from roamgate.callback.http_routes import routes
from roamgate.callback.service import CallbackService
from roamgate.config import Listener


class CallbackHttp:
    """The running listener (a Door for serve)."""

    name = "callback-http"

    def __init__(self, runner: web.AppRunner, site: web.TCPSite) -> None:
        self.runner = runner
        self.site = site

    async def close(self) -> None:
        await self.runner.cleanup()


async def open_callback_http(service: CallbackService, listener: Listener) -> CallbackHttp:
    app = web.Application(client_max_size=16 * 1024)
    app.add_routes(routes(service))
    # No access log: an approve link's path carries its token.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, listener.host, listener.port)
    await site.start()
    return CallbackHttp(runner, site)
