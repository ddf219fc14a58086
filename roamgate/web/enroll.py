"""Enrollment handlers: invite link -> password -> QR code -> first code -> backup codes -> extras.

The invite is used up when its link is opened (compare-and-set): the browser that opened it
holds the only session that can go on, and the link works for no one else afterwards. A
stolen password alone never gets here; a stolen link alone stops at the password step.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any

import segno
from aiohttp import web

from roamgate.devices import DeviceError, issue_device
from roamgate.invites import token_hash
from roamgate.login.verifiers import Outcome
from roamgate.runtime import Runtime
from roamgate.store.base import DuplicateError, TokenRecord, UserRecord
from roamgate.web import downloads, sessions
from roamgate.web.keys import RT, session_of
from roamgate.web.pages import html_page, message_page, redirect
from roamgate.web.render import Markup, esc, fill, join, page
from roamgate.web.sessions import WebSession

DOOR = "web"
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]{1,253}:[0-9]{1,5}$|^\[[0-9A-Fa-f:.]{2,45}\]:[0-9]{1,5}$")
_DEVICE_LABEL = re.compile(r"^[\w .\-]{1,64}$")

routes = web.RouteTableDef()


def _gone(request: web.Request) -> web.Response:
    return message_page(
        request,
        "Link not valid",
        "This enrollment link cannot be used: it was used already, has expired or was"
        " cancelled. Ask your administrator for a new one.",
        status=410,
    )


async def failure_delay(rt: Runtime, began: float) -> None:
    """Answer a failed form web.failure_delay_ms after it came, whichever check failed."""
    left = began + rt.config.web.failure_delay_ms / 1000 - time.monotonic()
    if left > 0:
        await asyncio.sleep(left)


@routes.get("/invite/{token}")
async def open_invite(request: web.Request) -> web.Response:
    """The link from `roamgate invite`: use it up, keep the session, drop the token from the URL."""
    rt = request.app[RT]
    source = request.remote or "?"
    token = request.match_info["token"]
    lock = await rt.throttle.check(None, source)
    if lock is not None:
        await rt.auditor.record("invite_open", "fail", source=source, door=DOOR, reason="locked")
        return _gone(request)
    invite = await rt.store.find_invite(token_hash(token)) if len(token) <= 128 else None
    now = rt.clock()
    reason = None
    user: UserRecord | None = None
    if invite is None:
        reason = "unknown"
    elif invite.used_at is not None:
        reason = "used"
    elif invite.cancelled_at is not None:
        reason = "cancelled"
    elif invite.expires_at <= now:
        reason = "expired"
    else:
        user = await rt.store.get_user(invite.user_name)
        if user is None or not user.enabled:
            reason = "user_unavailable"
        elif not await rt.store.consume_invite(invite.id, now):
            reason = "used"  # another request won the compare-and-set
    if reason is not None or invite is None or user is None:
        await rt.auditor.record(
            "invite_open",
            "fail",
            user=invite.user_name if invite is not None else None,
            source=source,
            door=DOOR,
            reason=reason,
            detail={"invite_id": invite.id if invite is not None else None},
        )
        if reason == "unknown":
            # A guessed link counts against the source, like a failed login.
            await rt.throttle.failure(None, source, DOOR)
        return _gone(request)
    lifetime = rt.config.web.enroll_session_minutes * 60
    value, _session = await sessions.create(
        rt, "enroll", user.name, lifetime, {"invite_id": invite.id, "step": "password"}
    )
    await rt.auditor.record(
        "invite_open", "ok", user=user.name, source=source, door=DOOR,
        detail={"invite_id": invite.id},
    )  # fmt: skip
    response = redirect("/enroll")
    sessions.set_cookie(response, sessions.COOKIE, value, lifetime)
    return response


async def _enroll_session(request: web.Request) -> tuple[Runtime, WebSession, UserRecord]:
    rt = request.app[RT]
    session = session_of(request)
    if session is None or session.kind != "enroll":
        raise web.HTTPForbidden(reason="No enrollment in progress")
    user = await rt.store.get_user(session.user_name)
    if user is None or not user.enabled:
        await sessions.end(rt, session)
        raise web.HTTPForbidden(reason="No enrollment in progress")
    return rt, session, user


@routes.get("/enroll")
async def enroll_page(request: web.Request) -> web.Response:
    rt, session, user = await _enroll_session(request)
    step = session.data.get("step")
    if step == "password":
        return _password_page(request, session, user, "")
    if step == "token":
        return await _token_page(request, rt, session, user, "")
    if step == "backup":
        return redirect("/enroll/backup-codes")
    if step != "done":
        raise web.HTTPForbidden(reason="No enrollment in progress")
    return await _done_page(request, rt, session, user, Markup(""))


def _password_page(
    request: web.Request, session: WebSession, user: UserRecord, error: str, status: int = 200
) -> web.Response:
    body = page(
        "enroll_password",
        {"user": user.name, "csrf": session.csrf, "error": _error(error)},
    )
    return html_page(request, "Set up your codes", body, status=status)


def _error(text: str) -> Markup:
    return fill('<p class="error" id="error">$text</p>', text=text) if text else Markup("")


@routes.post("/enroll/password")
async def enroll_password(request: web.Request) -> web.Response:
    rt, session, user = await _enroll_session(request)
    if session.data.get("step") != "password":
        return redirect("/enroll")
    began = time.monotonic()
    source = request.remote or "?"
    form = await request.post()
    password = form.get("password")
    lock = await rt.throttle.check(user.name, source)
    outcome = Outcome.REJECTED
    if lock is None and isinstance(password, str) and password:
        outcome = await rt.verifier.verify(user, password)
    if outcome is Outcome.ACCEPTED:
        await sessions.save(rt, session, {**session.data, "step": "token"})
        await rt.auditor.record("enroll_password", "ok", user=user.name, source=source, door=DOOR)
        return redirect("/enroll")
    reason = "locked" if lock is not None else outcome.value
    await rt.auditor.record(
        "enroll_password", "fail", user=user.name, source=source, door=DOOR, reason=reason
    )
    if lock is None and outcome is Outcome.REJECTED:
        await rt.throttle.failure(user.name, source, DOOR)
    await failure_delay(rt, began)
    text = "That did not work. Check the password and try again."
    if outcome is Outcome.UNAVAILABLE:
        text = "The password cannot be checked right now. Try again in a few minutes."
    return _password_page(request, session, user, text, status=403)


def _pending(rt: Runtime, session: WebSession) -> tuple[TokenRecord, str] | None:
    pending = session.data.get("pending")
    if not isinstance(pending, dict):
        return None
    sealed = base64.b64decode(pending["sealed"])
    token = TokenRecord(
        id=pending["id"],
        user_id=int(pending["user_id"]),
        kind="totp",
        sealed_secret=sealed,
        digits=int(pending["digits"]),
        period=int(pending["period"]),
        algorithm="sha1",
        state=None,
        label=str(pending["label"]),
        created_at=float(pending["created_at"]),
    )
    return token, rt.box.open(sealed, token.id).decode()


async def _token_page(
    request: web.Request,
    rt: Runtime,
    session: WebSession,
    user: UserRecord,
    error: str,
    status: int = 200,
) -> web.Response:
    held = _pending(rt, session)
    if held is None:
        # The token exists only in this session (its secret sealed) until a code proves it.
        made = rt.second_factor.prepare(user, "totp", label="web enrollment")
        t = made.token
        pending = {
            "id": t.id,
            "user_id": t.user_id,
            "sealed": base64.b64encode(t.sealed_secret).decode(),
            "digits": t.digits,
            "period": t.period,
            "label": t.label,
            "created_at": t.created_at,
        }
        if not await sessions.save(rt, session, {**session.data, "pending": pending}):
            return redirect("/enroll")
        token, secret = t, made.secret
    else:
        token, secret = held
    enrollment = rt.second_factor.describe(user, token, secret)
    qr = segno.make(enrollment.uri, error="m")
    svg = Markup(qr.svg_inline(scale=6, dark="#000", light="#fff", title="QR code"))
    body = page(
        "enroll_token",
        {
            "qr": svg,
            "secret": " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
            "uri": enrollment.uri,
            "digits": token.digits,
            "period": token.period,
            "csrf": session.csrf,
            "error": _error(error),
        },
    )
    return html_page(request, "Scan the code", body, status=status)


@routes.post("/enroll/activate")
async def enroll_activate(request: web.Request) -> web.Response:
    rt, session, user = await _enroll_session(request)
    held = _pending(rt, session) if session.data.get("step") == "token" else None
    if held is None:
        return redirect("/enroll")
    began = time.monotonic()
    source = request.remote or "?"
    token, _secret = held
    form = await request.post()
    code = form.get("code")
    lock = await rt.throttle.check(user.name, source)
    result = None
    if lock is None and isinstance(code, str):
        result = await rt.second_factor.activate(token, code)
    if result is None or not result.ok:
        reason = "locked" if lock is not None else (result.reason if result else "missing")
        await rt.auditor.record(
            "enroll", "fail", user=user.name, source=source, door=DOOR, factor="totp",
            reason=reason, detail={"token_id": token.id},
        )  # fmt: skip
        if lock is None:
            await rt.throttle.failure(user.name, source, DOOR)
        await failure_delay(rt, began)
        text = "That code did not match. Wait for the next code in the app and try again."
        if result is not None and result.reason == "clock_skew":
            text = "That code is from another time: set your phone's clock automatically."
        return await _token_page(request, rt, session, user, text, status=403)
    codes = await rt.second_factor.issue_backup_codes(user)
    sealed_codes = rt.box.seal(json.dumps(codes).encode(), _codes_binding(session))
    data: dict[str, Any] = {k: v for k, v in session.data.items() if k != "pending"}
    data.update(step="backup", token_id=token.id, codes=base64.b64encode(sealed_codes).decode())
    await sessions.save(rt, session, data)
    await rt.auditor.record(
        "enroll", "ok", user=user.name, source=source, door=DOOR, factor="totp",
        actor="web:" + user.name,
        detail={"token_id": token.id, "invite_id": session.data.get("invite_id")},
    )  # fmt: skip
    return redirect("/enroll/backup-codes")


def _codes_binding(session: WebSession) -> str:
    return "backup-codes:" + session.record.id_hash.hex()


@routes.get("/enroll/backup-codes")
async def enroll_backup_codes(request: web.Request) -> web.Response:
    """The backup codes, shown to exactly one request: they leave the session as they are read."""
    rt, session, _user = await _enroll_session(request)
    sealed = session.data.get("codes")
    if not isinstance(sealed, str):
        return message_page(
            request,
            "Backup codes",
            "Your backup codes were shown once already and are not kept anywhere readable."
            " If you lost them, ask your administrator for a new sheet.",
            css="error",
            more=Markup('<p><a href="/enroll">Continue</a></p>'),
        )
    data = {k: v for k, v in session.data.items() if k != "codes"}
    data["step"] = "done"
    if not await sessions.save(rt, session, data):
        return redirect("/enroll/backup-codes")
    codes = json.loads(rt.box.open(base64.b64decode(sealed), _codes_binding(session)))
    items = join(fill("<li><code>$c</code></li>", c=c) for c in codes)
    return html_page(request, "Backup codes", page("enroll_backup", {"codes": items}))


async def _done_page(
    request: web.Request, rt: Runtime, session: WebSession, user: UserRecord, notice: Markup
) -> web.Response:
    callbacks = await rt.store.list_callbacks(user.id)
    devices = await rt.store.list_devices(user_name=user.name)
    cb_text = join(
        fill("<span class='cb'>$ch: $addr</span> ", ch=c.channel, addr=c.address) for c in callbacks
    ) or esc("none yet")
    dev_text = (
        fill("Certificates: $names.", names=", ".join(d.name for d in devices))
        if devices
        else Markup("")
    )
    body = page(
        "enroll_done",
        {
            "user": user.name,
            "notice": notice,
            "csrf": session.csrf,
            "callbacks": cb_text,
            "devices": dev_text,
        },
    )
    return html_page(request, "All set", body)


async def _finished_session(request: web.Request) -> tuple[Runtime, WebSession, UserRecord]:
    rt, session, user = await _enroll_session(request)
    if session.data.get("step") != "done":
        raise web.HTTPForbidden(reason="Finish the enrollment first")
    return rt, session, user


@routes.post("/enroll/callback")
async def enroll_callback(request: web.Request) -> web.Response:
    rt, session, user = await _finished_session(request)
    form = await request.post()
    channel = str(form.get("channel", ""))
    address = str(form.get("address", "")).strip()
    valid = {
        "webhook": _PHONE,
        "dialback": _HOST_PORT,
        "approve": _DEVICE_LABEL,
    }.get(channel)
    if valid is None or not valid.fullmatch(address):
        notice = _error(
            "Not registered: a phone number looks like +15551234567, a device endpoint like"
            " laptop.example.com:7000, a device name is up to 64 letters and digits."
        )
        return await _done_page(request, rt, session, user, notice)
    try:
        record = await rt.store.add_callback(user.id, channel, address, rt.clock())
    except DuplicateError:
        return await _done_page(request, rt, session, user, _error("That is registered already."))
    await rt.auditor.record(
        "callback_register", "ok", user=user.name, source=request.remote, door=DOOR,
        actor="web:" + user.name, detail={"callback_id": record.id, "channel": channel},
    )  # fmt: skip
    return redirect("/enroll")


@routes.post("/enroll/device")
async def enroll_device(request: web.Request) -> web.Response:
    rt, session, user = await _finished_session(request)
    form = await request.post()
    try:
        issued = await issue_device(
            rt.config, rt.store, user.name, str(form.get("name", "")), rt.clock()
        )
    except DeviceError as exc:
        return await _done_page(request, rt, session, user, _error(str(exc)))
    filename = re.sub(r"[^A-Za-z0-9._-]", "-", f"{user.name}-{issued.record.name}") + ".p12"
    # The file is encrypted with the passphrase, which is never stored; the file stays in the
    # session until it is downloaded once.
    p12 = {"id": issued.record.id, "file": filename, "data": base64.b64encode(issued.p12).decode()}
    await sessions.save(rt, session, {**session.data, "p12": p12})
    await rt.auditor.record(
        "device_issue", "ok", user=user.name, source=request.remote, door=DOOR,
        actor="web:" + user.name,
        detail={"device_id": issued.record.id, "serial": issued.record.serial},
    )  # fmt: skip
    body = page(
        "enroll_device",
        {"name": issued.record.name, "passphrase": issued.passphrase, "filename": filename},
    )
    return html_page(request, "Device certificate", body)


@routes.get("/enroll/device.p12")
async def enroll_device_file(request: web.Request) -> web.Response:
    rt, session, _user = await _finished_session(request)
    p12 = session.data.get("p12")
    if not isinstance(p12, dict):
        raise web.HTTPGone(reason="Downloaded already")
    if not await sessions.save(rt, session, {k: v for k, v in session.data.items() if k != "p12"}):
        raise web.HTTPGone(reason="Downloaded already")
    return web.Response(
        body=base64.b64decode(p12["data"]),
        content_type="application/x-pkcs12",
        headers={"Content-Disposition": f'attachment; filename="{p12["file"]}"'},
    )


@routes.get("/enroll/download/{name}")
async def enroll_download(request: web.Request) -> web.Response:
    rt, _session, user = await _finished_session(request)
    name = request.match_info["name"]
    made = downloads.render(rt.config, name, user.name, user.email)
    if made is None:
        raise web.HTTPNotFound(reason="No such file")
    body, kind = made
    return web.Response(
        body=body,
        content_type=kind,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
