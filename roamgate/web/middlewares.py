"""Middlewares (plain async functions): security headers, errors as pages, sessions, CSRF."""

from __future__ import annotations

import hmac
import logging
import re

from aiohttp import web
from aiohttp.typedefs import Handler

from roamgate.web import sessions
from roamgate.web.keys import RT, SESSION
from roamgate.web.pages import message_page

log = logging.getLogger("roamgate.web")

# default-src 'self' and no script at all: nothing on these pages needs JavaScript, so an
# injected <script> (or an inline handler) never runs. data: only for images (none today).
CSP = (
    "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'; img-src 'self' data:"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def csrf_exempt(handler: Handler) -> Handler:
    """Mark a handler that authenticates its POST itself (an HMAC-signed provider callback)."""
    handler.roamgate_csrf_exempt = True  # type: ignore[attr-defined]
    return handler


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # Pages may show a secret (a code sheet, a passphrase, an invite link): never cached.
    # Only the stylesheet may be kept.
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes a short page; exception text never reaches the browser."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            location = exc.headers.get("Location")
            return web.Response(
                status=exc.status, headers={"Location": location} if location else {}
            )
        text = {
            403: "This request was refused.",
            404: "There is no such page.",
            405: "This page does not take that method.",
            410: "This link cannot be used.",
            413: "The request is too large.",
        }.get(exc.status, "The request was refused.")
        return message_page(request, exc.reason, text, status=exc.status)
    except Exception:
        log.exception("web request %s %s failed", request.method, _safe_path(request.path))
        return message_page(request, "Something went wrong", "Please try again later.", status=500)


@web.middleware
async def session_loader(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[SESSION] = await sessions.load(request.app[RT], request)
    return await handler(request)


@web.middleware
async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every POST carries the synchronizer token of its session (or of the login form)."""
    if request.method not in _UNSAFE_METHODS:
        return await handler(request)
    if getattr(handler, "roamgate_csrf_exempt", False) or _route_exempt(request):
        return await handler(request)
    form = await request.post()
    sent = form.get("csrf")
    expected = expected_csrf(request)
    if not isinstance(sent, str) or expected is None or not hmac.compare_digest(sent, expected):
        log.info("POST %s refused: missing or wrong CSRF token", _safe_path(request.path))
        raise web.HTTPForbidden(reason="Refused")
    return await handler(request)


def _route_exempt(request: web.Request) -> bool:
    route = request.match_info.route
    inner = getattr(route, "handler", None)
    return bool(getattr(inner, "roamgate_csrf_exempt", False))


def login_csrf(request: web.Request, pre_value: str) -> str:
    """The login form's token: a keyed hash of the pre-login cookie (no server state)."""
    box = request.app[RT].box
    return box.keyed_hash("web-login-csrf", pre_value).hex()


def expected_csrf(request: web.Request) -> str | None:
    if request.path == "/admin/login":
        pre = request.cookies.get(sessions.LOGIN_COOKIE)
        return login_csrf(request, pre) if pre and len(pre) <= 128 else None
    session = request.get(SESSION)
    return session.csrf if session is not None else None


_INVITE = re.compile(r"^/invite/.*$")


def _safe_path(path: str) -> str:
    """A request path fit for a log: an invite link's token is cut off."""
    return _INVITE.sub("/invite/[token]", path)[:200]
