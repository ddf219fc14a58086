"""HTTP handlers of callback verification, as aiohttp route definitions for the web app.

    GET  /callback/approve/{token}   a page with Approve / Deny buttons (changes nothing:
                                     link previewers fetch links)
    POST /callback/approve/{token}   decision=approve|deny: once, before the link expires
    POST /callback/status            the provider's signed status callback (delivered/failed)

The token in the link is the capability (256 random bits, single use, expires with the
callback); pages are sent with no-referrer and no-store so it does not leak onward.
"""

from __future__ import annotations

import html

from aiohttp import web

from roamgate.callback.service import CallbackService

MAX_FORM_BYTES = 1024
MAX_STATUS_BYTES = 8192
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:30em;margin:2em auto;padding:0 1em}"
        "button{font-size:1.2em;padding:.5em 1em;margin:.3em}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(text=text, status=status, content_type="text/html", headers=_HEADERS)


def routes(service: CallbackService) -> list[web.RouteDef]:
    """The callback routes; the web app adds them to its own (paths under /callback/)."""

    async def approve_page(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if not service.token_shape_ok(token):
            return _page("Link not valid", "<p>This approval link is not valid.</p>", 404)
        form = (
            "<p>A login to your roamgate account is waiting for your approval."
            " Approve it only if you are logging in right now.</p>"
            "<form method=post><button name=decision value=approve>Approve</button>"
            "<button name=decision value=deny>Deny</button></form>"
        )
        return _page("Approve this login?", form)

    async def approve_answer(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if (request.content_length or 0) > MAX_FORM_BYTES:
            return _page("Bad request", "<p>Too large.</p>", 413)
        form = await request.post()
        decision = form.get("decision")
        if decision not in ("approve", "deny"):
            return _page("Bad request", "<p>Choose Approve or Deny.</p>", 400)
        approve = decision == "approve"
        ok = await service.answer_approval(token, approve, request.remote or "?")
        if not ok:
            return _page(
                "Link not valid",
                "<p>This approval link has expired or was used already.</p>",
                410,
            )
        if approve:
            return _page("Approved", "<p>The login goes through. You may close this page.</p>")
        return _page("Denied", "<p>The login was refused. Tell IT if it was not you.</p>")

    async def status(request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_STATUS_BYTES:
            return web.Response(status=413, text="Too large")
        body = await request.content.read(MAX_STATUS_BYTES + 1)
        if len(body) > MAX_STATUS_BYTES:
            return web.Response(status=413, text="Too large")
        code, text = await service.provider_status(request.headers, body)
        return web.Response(status=code, text=text, headers={"Cache-Control": "no-store"})

    # The web app's CSRF check does not apply: the link's token and the provider's signature
    # are these requests' proof (the attribute roamgate.web.middlewares.csrf_exempt sets).
    for handler in (approve_answer, status):
        handler.roamgate_csrf_exempt = True  # type: ignore[attr-defined]
    return [
        web.get("/callback/approve/{token}", approve_page),
        web.post("/callback/approve/{token}", approve_answer),
        web.post("/callback/status", status),
    ]
