"""Self-service account pages: changing the registered call-back number (password and code)."""

from __future__ import annotations

import secrets
import time

from aiohttp import web

from roamgate.callback.service import RegistrationError
from roamgate.web import sessions
from roamgate.web.enroll import failure_delay
from roamgate.web.keys import RT
from roamgate.web.middlewares import login_csrf
from roamgate.web.pages import html_page
from roamgate.web.render import Markup, fill, page

routes = web.RouteTableDef()
DOOR = "web"
PATH = "/account/callback"


def _form(request: web.Request, error: str, status: int = 200) -> web.Response:
    # Before login there is no session: the CSRF token is keyed to a pre-login cookie, as
    # on the administrator's login form.
    pre = request.cookies.get(sessions.LOGIN_COOKIE)
    fresh = not pre or len(pre) > 128
    if fresh:
        pre = secrets.token_urlsafe(32)
    assert pre is not None
    err = fill('<p class="error" id="error">$t</p>', t=error) if error else Markup("")
    body = page("account_callback", {"csrf": login_csrf(request, pre), "error": err})
    response = html_page(request, "Change your call-back number", body, status=status)
    if fresh:
        sessions.set_cookie(response, sessions.LOGIN_COOKIE, pre, 3600)
    return response


@routes.get(PATH)
async def change_form(request: web.Request) -> web.Response:
    if request.app[RT].callbacks is None:
        raise web.HTTPNotFound(reason="Callback verification is not configured")
    return _form(request, "")


@routes.post(PATH)
async def change(request: web.Request) -> web.Response:
    rt = request.app[RT]
    service = rt.callbacks
    if service is None:
        raise web.HTTPNotFound(reason="Callback verification is not configured")
    began = time.monotonic()
    source = request.remote or "?"
    form = await request.post()
    name = str(form.get("user", ""))[:128]
    channel = str(form.get("channel", ""))
    user = await rt.store.get_user(name) if name else None
    registration = -1  # no such user or registration: the service refuses it like a bad code
    if user is not None:
        mine = [r for r in await rt.store.list_callbacks(user.id) if r.channel == channel]
        if mine:
            registration = mine[0].id
    try:
        changed = await service.change_registration(
            name,
            str(form.get("password", "")),
            str(form.get("code", "")),
            registration,
            str(form.get("address", "")),
            source=source,
            door=DOOR,
        )
    except RegistrationError as exc:
        # Only reached after the user and registration were found: the message is about the
        # new number's form, never about the account.
        await failure_delay(rt, began)
        return _form(request, str(exc), status=400)
    if changed is None:
        await failure_delay(rt, began)
        return _form(request, "Not changed: check your user name, password, code and choice.", 403)
    key = Markup("")
    if changed.device_key is not None:
        key = fill(
            "<p>The device key for roamgate-connect, shown this once: save it to a file and"
            " pass <code>--callback-key-file FILE</code>.</p><pre id='device-key'>$k</pre>",
            k=changed.device_key,
        )
    body = fill(
        "<p id='changed'>Changed: the gateway now calls $addr.</p>",
        addr=changed.record.address,
    )
    return html_page(request, "Call-back number changed", Markup(body + key))
