"""Typed keys of the app and of a request."""

from __future__ import annotations

from aiohttp import web

from roamgate.runtime import Runtime
from roamgate.web.sessions import WebSession

RT = web.AppKey("rt", Runtime)
# The browser's session, loaded by the session middleware (None: not logged in or enrolling).
SESSION: web.RequestKey[WebSession | None] = web.RequestKey("roamgate_session")


def session_of(request: web.Request) -> WebSession | None:
    return request.get(SESSION)
