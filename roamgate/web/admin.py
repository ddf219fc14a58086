"""Admin pages: users, tokens, devices, locks, travel windows and live sessions, audit, invites.

Admins are the users named in web.admins; they log in with password AND code. Every change
is a POST with the session's CSRF token, is audited with the actor `web:ADMIN`, and answers
with a redirect (a reload repeats nothing).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

from aiohttp import web

from roamgate import accounts
from roamgate.audit import to_json
from roamgate.auth.lockout import is_locked
from roamgate.commands.common import CliError, fmt_time, parse_when
from roamgate.commands.directory import entry_summary
from roamgate.directory.client import DirectoryError
from roamgate.invites import cancel_invite, create_invite
from roamgate.runtime import Runtime
from roamgate.web import sessions
from roamgate.web.enroll import failure_delay
from roamgate.web.keys import RT, session_of
from roamgate.web.middlewares import login_csrf
from roamgate.web.pages import html_page, redirect
from roamgate.web.render import Markup, fill, join, page
from roamgate.web.sessions import WebSession

DOOR = "web"
routes = web.RouteTableDef()


# -- login
@routes.get("/admin/login")
async def login_form(request: web.Request) -> web.Response:
    return _login_page(request, "")


def _login_page(request: web.Request, error: str, status: int = 200) -> web.Response:
    pre = request.cookies.get(sessions.LOGIN_COOKIE)
    fresh = not pre or len(pre) > 128
    if fresh:
        pre = secrets.token_urlsafe(32)
    assert pre is not None
    err = fill('<p class="error" id="error">$t</p>', t=error) if error else Markup("")
    body = page("admin_login", {"csrf": login_csrf(request, pre), "error": err})
    response = html_page(request, "Administrator login", body, status=status)
    if fresh:
        sessions.set_cookie(response, sessions.LOGIN_COOKIE, pre, 3600)
    return response


@routes.post("/admin/login")
async def login(request: web.Request) -> web.Response:
    rt = request.app[RT]
    began = time.monotonic()
    source = request.remote or "?"
    form = await request.post()
    name = str(form.get("user", ""))[:128]
    password = str(form.get("password", ""))
    code = str(form.get("code", ""))
    if name not in rt.config.web.admins:
        # Refused before any factor is checked (no code is used up); counted against the source.
        lock = await rt.throttle.check(None, source)
        await rt.auditor.record(
            "web_login", "fail", user=name or None, source=source, door=DOOR,
            reason="source_locked" if lock is not None else "not_admin",
        )  # fmt: skip
        if lock is None:
            await rt.throttle.failure(None, source, DOOR)
        return await _failed(request, rt, began)
    result = await rt.authenticator.login(name, password, code, source=source, door=DOOR)
    if not result.ok:
        await rt.auditor.record(
            "web_login", "fail", user=name, source=source, door=DOOR, reason=result.reason
        )
        return await _failed(request, rt, began)
    cfg = rt.config.web
    lifetime = cfg.admin_idle_minutes * 60
    value, _session = await sessions.create(
        rt, "admin", name, lifetime, {"absolute": rt.clock() + cfg.admin_session_hours * 3600}
    )
    await rt.auditor.record("web_login", "ok", user=name, source=source, door=DOOR)
    response = redirect("/admin")
    # A new session id at login: a cookie planted before it (fixation) is worth nothing.
    sessions.set_cookie(response, sessions.COOKIE, value, None)
    sessions.clear_cookie(response, sessions.LOGIN_COOKIE)
    return response


async def _failed(request: web.Request, rt: Runtime, began: float) -> web.Response:
    await failure_delay(rt, began)
    return _login_page(request, "Login failed.", status=403)


@routes.post("/admin/logout")
async def logout(request: web.Request) -> web.Response:
    rt = request.app[RT]
    session = session_of(request)
    if session is not None:
        await sessions.end(rt, session)
        await rt.auditor.record(
            "web_logout", "ok", user=session.user_name, source=request.remote, door=DOOR
        )
    response = redirect("/admin/login")
    sessions.clear_cookie(response, sessions.COOKIE)
    return response


async def _admin(request: web.Request) -> tuple[Runtime, WebSession, str]:
    """The logged-in admin; the session slides (idle limit) up to its absolute end."""
    rt = request.app[RT]
    session = session_of(request)
    if session is None or session.kind != "admin":
        raise web.HTTPSeeOther("/admin/login")
    user = await rt.store.get_user(session.user_name)
    if user is None or not user.enabled or user.name not in rt.config.web.admins:
        await sessions.end(rt, session)
        raise web.HTTPSeeOther("/admin/login")
    now = rt.clock()
    absolute = float(session.data.get("absolute", now))
    await sessions.touch(rt, session, min(absolute, now + rt.config.web.admin_idle_minutes * 60))
    return rt, session, "web:" + user.name


# -- rendering helpers
def _button(action: str, label: str, csrf: str, ident: str = "") -> Markup:
    return fill(
        '<form method="post" action="$action"><input type="hidden" name="csrf" value="$csrf">'
        '<button type="submit" class="danger" id="$ident">$label</button></form>',
        action=action,
        csrf=csrf,
        label=label,
        ident=ident,
    )


def _table(
    ident: str,
    head: Sequence[str],
    rows: Sequence[Sequence[object]],
    intro: Markup = Markup(""),  # noqa: B008 (immutable)
    after: Markup = Markup(""),  # noqa: B008
) -> Markup:
    head_html = join(fill("<th>$h</th>", h=h) for h in head)
    rows_html = join(
        Markup("<tr>" + "".join(fill("<td>$v</td>", v=v) for v in row) + "</tr>\n") for row in rows
    ) or fill('<tr><td colspan="$n">none</td></tr>', n=len(head))
    return page(
        "admin_table",
        {"id": ident, "head": head_html, "rows": rows_html, "intro": intro, "after": after},
    )


# -- users
@routes.get("/admin")
async def users(request: web.Request) -> web.Response:
    rt, session, _actor = await _admin(request)
    now = rt.clock()
    rows = []
    for user in await rt.store.list_users():
        tokens = await rt.store.list_tokens(user.id)
        lock = await rt.store.get_throttle("user", user.name)
        locked = lock is not None and is_locked(lock.locked_until, lock.hard_locked, now)
        lock_text = "no"
        if locked and lock is not None:
            lock_text = "hard" if lock.hard_locked else f"until {fmt_time(lock.locked_until)}"
        actions = [
            _button(
                f"/admin/user/{user.name}/{'disable' if user.enabled else 'enable'}",
                "Disable" if user.enabled else "Enable",
                session.csrf,
                f"{'disable' if user.enabled else 'enable'}-{user.name}",
            )
        ]
        if locked:
            actions.append(
                _button(
                    f"/admin/user/{user.name}/unlock", "Unlock", session.csrf, f"unlock-{user.name}"
                )
            )
        rows.append(
            [
                fill('<a href="/admin/user/$n">$n</a>', n=user.name),
                "yes" if user.enabled else "no",
                "admin" if user.name in rt.config.web.admins else "",
                len(tokens),
                await rt.store.count_backup_codes(user.id),
                lock_text,
                join(actions),
            ]
        )
    source_locks = [
        [t.key, t.failures, "hard" if t.hard_locked else fmt_time(t.locked_until),
         _source_unlock(t.key, session.csrf)]
        for t in await rt.store.list_throttles("source")
        if is_locked(t.locked_until, t.hard_locked, now)
    ]  # fmt: skip
    body = _table(
        "users", ["user", "enabled", "role", "tokens", "backup codes", "locked", ""], rows
    ) + _table(
        "source-locks",
        ["source", "failures", "locked until", ""],
        source_locks,
        intro=Markup("<h2>Locked sources</h2>"),
    )
    return html_page(request, "Users", Markup(body))


@routes.get("/admin/user/{name}")
async def user_detail(request: web.Request) -> web.Response:
    rt, session, _actor = await _admin(request)
    user = await rt.store.get_user(request.match_info["name"])
    if user is None:
        raise web.HTTPNotFound(reason="No such user")
    csrf = session.csrf
    tokens = [
        [t.id, t.kind, t.label, fmt_time(t.created_at), fmt_time(t.last_used_at),
         "revoked " + fmt_time(t.revoked_at) if t.revoked_at else
         _button(f"/admin/token/{t.id}/revoke", "Revoke", csrf, f"revoke-{t.id}")]
        for t in await rt.store.list_tokens(user.id, include_revoked=True)
    ]  # fmt: skip
    devices = [
        [d.id, d.name, d.serial, fmt_time(d.expires_at),
         "revoked " + fmt_time(d.revoked_at) if d.revoked_at else
         _button(f"/admin/device/{d.id}/revoke", "Revoke", csrf, f"revoke-{d.id}")]
        for d in await rt.store.list_devices(user_name=user.name, include_revoked=True)
    ]  # fmt: skip
    callbacks = [
        [c.channel, c.address, fmt_time(c.created_at), fmt_time(c.verified_at)]
        for c in await rt.store.list_callbacks(user.id)
    ]
    body = join(
        [
            fill(
                "<p>Enabled: $e. Email: $m. Profile: $p. Backup codes left: $b.</p>",
                e="yes" if user.enabled else "no",
                m=user.email or "-",
                p=user.profile,
                b=await rt.store.count_backup_codes(user.id),
            ),
            _table("tokens", ["token", "type", "label", "created", "last used", ""], tokens,
                   intro=Markup("<h2>Tokens</h2>")),
            _table("devices", ["device", "name", "serial", "expires", ""], devices,
                   intro=Markup("<h2>Device certificates</h2>")),
            _table("callbacks", ["channel", "address", "registered", "verified"], callbacks,
                   intro=Markup("<h2>Call-back registrations</h2>")),
            await _directory_part(rt, user.name),
        ]
    )  # fmt: skip
    return html_page(request, f"User {user.name}", body)


async def _directory_part(rt: Runtime, name: str) -> Markup:
    """What the directory says about the user, read now (with an ldap: section only)."""
    if rt.directory is None:
        return Markup("")
    intro = Markup("<h2>Directory</h2>")
    try:
        entry = await rt.directory.lookup(name)
    except DirectoryError:
        return join([intro, fill('<p id="directory">The directory could not be reached.</p>')])
    if entry is None:
        return join(
            [intro, fill('<p id="directory">The directory has no entry for $n.</p>', n=name)]
        )
    summary = entry_summary(rt.directory, entry)
    cert = summary["certificate"]
    cert_text = "-"
    if isinstance(cert, dict):
        cert_text = ", ".join(f"{k}: {v}" for k, v in cert.items())
    rows = [
        ["entry", entry.dn],
        ["access", "allowed" if summary["allowed"] else "not allowed"],
        ["disabled in the directory", "yes" if entry.disabled else "no"],
        ["groups", ", ".join(sorted(entry.groups)) or "-"],
        ["mail", entry.mail or "-"],
        ["callback number", entry.callback_number or "-"],
        ["S/MIME certificate", cert_text],
    ]
    return _table("directory", ["attribute", "value"], rows, intro=intro)


@routes.post("/admin/user/{name}/{action:disable|enable|unlock}")
async def user_action(request: web.Request) -> web.Response:
    rt, _session, actor = await _admin(request)
    name = request.match_info["name"]
    action = request.match_info["action"]
    if action == "unlock":
        if await rt.store.get_user(name) is None:
            raise web.HTTPNotFound(reason="No such user")
        await rt.throttle.unlock("user", name, actor)
    elif await accounts.set_user_enabled(rt, name, action == "enable", actor) is None:
        raise web.HTTPNotFound(reason="No such user")
    return redirect("/admin")


def _source_unlock(key: str, csrf: str) -> Markup:
    # The key goes in the form, not the path: an IPv6 /64 has a slash.
    return fill(
        '<form method="post" action="/admin/source/unlock">'
        '<input type="hidden" name="csrf" value="$csrf">'
        '<input type="hidden" name="source" value="$key">'
        '<button type="submit" class="danger">Unlock</button></form>',
        csrf=csrf,
        key=key,
    )


@routes.post("/admin/source/unlock")
async def source_unlock(request: web.Request) -> web.Response:
    rt, _session, actor = await _admin(request)
    source = str((await request.post()).get("source", ""))[:64]
    if not source:
        raise web.HTTPNotFound(reason="No such source")
    await rt.throttle.unlock("source", source, actor)
    return redirect("/admin")


@routes.post("/admin/token/{token_id}/revoke")
async def token_revoke(request: web.Request) -> web.Response:
    rt, _session, actor = await _admin(request)
    token = await rt.store.get_token(request.match_info["token_id"])
    if token is None or not await rt.store.revoke_token(token.id, rt.clock()):
        raise web.HTTPNotFound(reason="No such active token")
    user = await rt.store.get_user_by_id(token.user_id)
    await rt.auditor.record(
        "token_revoke", "ok", user=user.name if user else None, actor=actor,
        detail={"token_id": token.id},
    )  # fmt: skip
    return redirect(f"/admin/user/{user.name}" if user else "/admin")


@routes.post("/admin/device/{device_id}/revoke")
async def device_revoke(request: web.Request) -> web.Response:
    rt, _session, actor = await _admin(request)
    device = await rt.store.get_device(request.match_info["device_id"])
    if device is None or not await accounts.revoke_device(rt, device.id, actor):
        raise web.HTTPNotFound(reason="No such active device")
    return redirect(f"/admin/user/{device.user_name}")


# -- travel windows and live sessions
@routes.get("/admin/sessions")
async def sessions_page(request: web.Request) -> web.Response:
    rt, session, _actor = await _admin(request)
    now = rt.clock()
    csrf = session.csrf
    windows = [
        [w.id, w.user_name, w.device, w.door, fmt_time(w.expires_at),
         _button(f"/admin/window/{w.id}/revoke", "Revoke", csrf, f"revoke-{w.id}")]
        for w in await rt.store.list_travel_windows(now)
    ]  # fmt: skip
    live = [
        [s.id, s.user_name, s.door, s.source, s.device or "-", fmt_time(s.started_at),
         s.bytes_in + s.bytes_out,
         "ending" if s.end_requested_at else
         _button(f"/admin/session/{s.id}/end", "End", csrf, f"end-{s.id}")]
        for s in await rt.store.list_sessions()
    ]  # fmt: skip
    body = _table(
        "windows",
        ["window", "user", "device", "door", "until", ""],
        windows,
        intro=Markup("<h2>Travel windows</h2>"),
    ) + _table(
        "live",
        ["session", "user", "door", "source", "device", "since", "bytes", ""],
        live,
        intro=Markup("<h2>Live sessions</h2>"),
    )
    return html_page(request, "Sessions", Markup(body))


@routes.post("/admin/window/{window_id}/revoke")
async def window_revoke(request: web.Request) -> web.Response:
    rt, _session, actor = await _admin(request)
    window_id = request.match_info["window_id"]
    if not await rt.store.revoke_travel_window(window_id, rt.clock()):
        raise web.HTTPNotFound(reason="No such open window")
    await rt.auditor.record("session_revoke", "ok", actor=actor, detail={"window_id": window_id})
    return redirect("/admin/sessions")


@routes.post("/admin/session/{session_id}/end")
async def session_end(request: web.Request) -> web.Response:
    rt, _session, actor = await _admin(request)
    record = await rt.store.get_session(request.match_info["session_id"])
    if record is None or not await rt.store.request_session_end(record.id, rt.clock()):
        raise web.HTTPNotFound(reason="No such live session")
    await rt.auditor.record(
        "session_revoke", "ok", user=record.user_name, actor=actor,
        detail={"session_id": record.id},
    )  # fmt: skip
    return redirect("/admin/sessions")


# -- audit
_AUDIT_FILTERS = ("user", "kind", "result", "since", "until")


@routes.get("/admin/audit")
async def audit(request: web.Request) -> web.Response:
    rt, _session, _actor = await _admin(request)
    q = {k: request.query.get(k, "").strip()[:64] for k in _AUDIT_FILTERS}
    limit_text = request.query.get("limit", "200")
    limit = int(limit_text) if limit_text.isdigit() and 0 < int(limit_text) <= 5000 else 200
    now = rt.clock()
    error = ""
    since = until = None
    try:
        since = parse_when(q["since"], now) if q["since"] else None
        until = parse_when(q["until"], now) if q["until"] else None
    except CliError as exc:
        error = str(exc)
    records = await rt.store.query_audit(
        user_name=q["user"] or None,
        since=since,
        until=until,
        kind=q["kind"] or None,
        result=q["result"] or None,
        limit=limit,
    )
    rows = []
    for rec in reversed(records):
        j = to_json(rec)
        detail = ", ".join(f"{k}={v}" for k, v in sorted(rec.detail.items()))
        rows.append(
            [j["time"], rec.kind, rec.result, rec.user_name or "", rec.source or "",
             rec.door or "", rec.reason or "", rec.actor or "", detail]
        )  # fmt: skip
    inputs = join(
        fill(
            '<label>$k <input name="$k" value="$v"></label>',
            k=k,
            v=q[k],
        )
        for k in _AUDIT_FILTERS
    )
    form = fill(
        '<form class="filters" method="get" action="/admin/audit">$inputs'
        '<label>limit <input name="limit" value="$limit"></label>'
        '<button type="submit">Search</button></form>$error',
        inputs=inputs,
        limit=limit,
        error=fill('<p class="error">$e</p>', e=error) if error else Markup(""),
    )
    body = _table(
        "audit",
        ["time", "kind", "result", "user", "source", "door", "reason", "actor", "detail"],
        rows,
        intro=form,
    )
    return html_page(request, "Audit trail", body)


# -- invites
@routes.get("/admin/invites")
async def invites(request: web.Request) -> web.Response:
    rt, session, _actor = await _admin(request)
    return await _invites_page(request, rt, session, Markup(""))


async def _invites_page(
    request: web.Request, rt: Runtime, session: WebSession, notice: Markup
) -> web.Response:
    now = rt.clock()
    rows = []
    for inv in await rt.store.list_invites(now, include_ended=True):
        state = "open"
        if inv.used_at is not None:
            state = "used " + fmt_time(inv.used_at)
        elif inv.cancelled_at is not None:
            state = "cancelled"
        elif inv.expires_at <= now:
            state = "expired"
        action: object = ""
        if state == "open":
            action = _button(
                f"/admin/invite/{inv.id}/cancel", "Cancel", session.csrf, f"cancel-{inv.id}"
            )
        rows.append(
            [inv.id, inv.user_name, state, fmt_time(inv.expires_at), inv.created_by, action]
        )
    form = fill(
        '<form method="post" action="/admin/invites"><input type="hidden" name="csrf"'
        ' value="$csrf"><label for="invite-user">User</label>'
        '<input id="invite-user" name="user" required>'
        '<label for="invite-hours">Valid for (hours)</label>'
        '<input id="invite-hours" name="hours" value="$hours" inputmode="numeric">'
        '<button type="submit" id="invite-create">Make an invite link</button></form>',
        csrf=session.csrf,
        hours=rt.config.web.invite_hours,
    )
    body = Markup(notice) + _table(
        "invites",
        ["invite", "user", "state", "expires", "made by", ""],
        rows,
        after=Markup(Markup("<h2>New invite</h2>") + form),
    )
    return html_page(request, "Invites", Markup(body))


@routes.post("/admin/invites")
async def invite_create(request: web.Request) -> web.Response:
    rt, session, actor = await _admin(request)
    form = await request.post()
    name = str(form.get("user", "")).strip()
    hours_text = str(form.get("hours", "")).strip()
    user = await rt.store.get_user(name)
    if not hours_text.isdigit() or not 1 <= int(hours_text) <= 720:
        notice = fill('<p class="error" id="error">$t</p>', t="Hours: 1 to 720.")
    elif user is None or not user.enabled:
        notice = fill('<p class="error" id="error">$t</p>', t="No such enabled user.")
    else:
        new = await create_invite(rt, user.name, int(hours_text), actor)
        # Shown on this page only (not stored, not in a redirect): give it to the user.
        notice = fill(
            '<p class="ok">One-time link for $u (shown only now):</p>'
            '<p><code id="invite-link">$link</code></p>',
            u=user.name,
            link=new.link,
        )
    return await _invites_page(request, rt, session, notice)


@routes.post("/admin/invite/{invite_id}/cancel")
async def invite_cancel(request: web.Request) -> web.Response:
    rt, _session, actor = await _admin(request)
    if not await cancel_invite(rt, request.match_info["invite_id"], actor):
        raise web.HTTPNotFound(reason="No such open invite")
    return redirect("/admin/invites")
