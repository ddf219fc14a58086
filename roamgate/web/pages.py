"""Whole pages: the layout around a body, and the short message page."""

from __future__ import annotations

from aiohttp import web

from roamgate.web.keys import RT, session_of
from roamgate.web.render import Markup, fill, page

_ADMIN_NAV = """<nav><a href="/admin">Users</a><a href="/admin/sessions">Sessions</a>\
<a href="/admin/audit">Audit</a><a href="/admin/invites">Invites</a>\
<form method="post" action="/admin/logout"><input type="hidden" name="csrf" value="$csrf">\
<button type="submit" id="logout">Log out ($user)</button></form></nav>"""


def html_page(request: web.Request, title: str, body: Markup, *, status: int = 200) -> web.Response:
    session = session_of(request)
    nav = Markup("")
    if session is not None and session.kind == "admin":
        nav = fill(_ADMIN_NAV, csrf=session.csrf, user=session.user_name)
    text = page(
        "base",
        {"title": title, "hostname": request.app[RT].config.hostname, "nav": nav, "body": body},
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def message_page(
    request: web.Request,
    title: str,
    text: str,
    *,
    status: int = 200,
    css: str = "error",
    more: Markup = Markup(""),  # noqa: B008 (an immutable str)
) -> web.Response:
    body = page("message", {"css": css, "text": text, "more": more})
    return html_page(request, title, body, status=status)


def redirect(location: str) -> web.Response:
    """303 See Other: after a POST the browser GETs the result (a reload repeats nothing)."""
    return web.Response(status=303, headers={"Location": location})
