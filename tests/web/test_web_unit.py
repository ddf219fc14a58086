"""Handler logic over a real HTTPS listener: invites, activation, CSRF, headers, rate limits."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import parse_qs, urlsplit

import pyotp

from roamgate.invites import create_invite
from roamgate.web.middlewares import CSP
from tests.web.conftest import ADMIN, PASSWORD, WebUnderTest, csrf_of


async def _open(w: WebUnderTest, user: str = "alice", hours: int = 1) -> tuple[str, str]:
    new = await create_invite(w.rt, user, hours, "test")
    path = urlsplit(new.link).path
    return new.record.id, path


async def test_invite_link_opens_once_and_leaves_no_token_in_the_url(web_app: WebUnderTest) -> None:
    w = web_app
    _id, path = await _open(w)
    async with w.client() as c:
        r = await c.get(path, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/enroll"
        assert "__Host-roamgate" in r.cookies
        page = await (await c.get("/enroll")).text()
        assert "confirm it is you" in page
    async with w.client() as other:
        r = await other.get(path, allow_redirects=False)
        assert r.status == 410
        assert "cannot be used" in await r.text()
    kinds = [(a.kind, a.result, a.reason) for a in await w.rt.store.query_audit()]
    assert ("invite_open", "ok", None) in kinds and ("invite_open", "fail", "used") in kinds


async def test_concurrent_opens_of_one_invite_have_one_winner(web_app: WebUnderTest) -> None:
    w = web_app
    _id, path = await _open(w)
    clients = [w.client() for _ in range(5)]
    try:
        results = await asyncio.gather(*(c.get(path, allow_redirects=False) for c in clients))
        assert sorted(r.status for r in results) == [303, 410, 410, 410, 410]
    finally:
        for c in clients:
            await c.close()


async def test_expired_and_cancelled_invites_are_refused(web_app: WebUnderTest) -> None:
    w = web_app
    _id, path = await _open(w, hours=1)
    w.clock.advance(3601)
    async with w.client() as c:
        assert (await c.get(path, allow_redirects=False)).status == 410
    inv_id, path2 = await _open(w)
    assert await w.rt.store.cancel_invite(inv_id, w.clock())
    async with w.client() as c:
        assert (await c.get(path2, allow_redirects=False)).status == 410
        assert (await c.get("/invite/made-up", allow_redirects=False)).status == 410
    reasons = {a.reason for a in await w.rt.store.query_audit(kind="invite_open")}
    assert {"expired", "cancelled", "unknown"} <= reasons


async def _to_token_step(w: WebUnderTest, c: object) -> str:
    import aiohttp

    assert isinstance(c, aiohttp.ClientSession)
    _id, path = await _open(w)
    await c.get(path)
    page = await (await c.get("/enroll")).text()
    r = await c.post("/enroll/password", data={"csrf": csrf_of(page), "password": PASSWORD})
    page = await r.text()
    assert "Scan this code" in page, page
    return page


async def test_activation_needs_a_valid_code_and_backup_codes_show_once(
    web_app: WebUnderTest,
) -> None:
    w = web_app
    async with w.client() as c:
        page = await _to_token_step(w, c)
        user = await w.rt.store.get_user("alice")
        assert user is not None
        assert await w.rt.store.list_tokens(user.id) == []  # pending: nothing stored yet
        uri = re.search(r'<code id="uri">([^<]+)</code>', page)
        assert uri is not None
        secret = parse_qs(urlsplit(uri.group(1).replace("&amp;", "&")).query)["secret"][0]
        r = await c.post("/enroll/activate", data={"csrf": csrf_of(page), "code": "000000"})
        assert r.status == 403 and "did not match" in await r.text()
        assert await w.rt.store.list_tokens(user.id) == []
        code = pyotp.TOTP(secret).at(w.clock())
        r = await c.post("/enroll/activate", data={"csrf": csrf_of(page), "code": code})
        body = await r.text()
        codes = re.findall(r"<li><code>([0-9 -]+)</code></li>", body)
        assert len(codes) == 10, body
        assert len(await w.rt.store.list_tokens(user.id)) == 1
        again = await (await c.get("/enroll/backup-codes")).text()
        assert "shown once already" in again and codes[0] not in again
        # The activation code is used up: it does not log in afterwards.
        assert not (await w.rt.second_factor.verify(user, code)).ok


async def test_a_stolen_password_alone_enrolls_nothing(web_app: WebUnderTest) -> None:
    w = web_app
    async with w.client() as c:
        r = await c.get("/enroll", allow_redirects=False)
        assert r.status == 403
        r = await c.post("/enroll/password", data={"password": PASSWORD}, allow_redirects=False)
        assert r.status == 403


async def test_wrong_password_at_enrollment_is_counted(web_app: WebUnderTest) -> None:
    w = web_app
    async with w.client() as c:
        _id, path = await _open(w)
        await c.get(path)
        page = await (await c.get("/enroll")).text()
        r = await c.post("/enroll/password", data={"csrf": csrf_of(page), "password": "nope"})
        assert r.status == 403
    rec = await w.rt.store.get_throttle("user", "alice")
    assert rec is not None and rec.failures == 1


async def test_post_without_csrf_token_is_refused(web_app: WebUnderTest) -> None:
    w = web_app
    async with w.client() as c:
        _id, path = await _open(w)
        await c.get(path)
        page = await (await c.get("/enroll")).text()
        r = await c.post("/enroll/password", data={"password": PASSWORD})
        assert r.status == 403
        r = await c.post("/enroll/password", data={"password": PASSWORD, "csrf": "x" * 43})
        assert r.status == 403
        # Still at the password step: the refused POSTs changed nothing.
        assert "confirm it is you" in await (await c.get("/enroll")).text()
        assert csrf_of(page)
        # The login form has its own token, bound to its cookie.
        r = await c.post("/admin/login", data={"user": ADMIN, "password": PASSWORD})
        assert r.status == 403


async def _admin_login(w: WebUnderTest, c: object, code: str) -> int:
    import aiohttp

    assert isinstance(c, aiohttp.ClientSession)
    page = await (await c.get("/admin/login")).text()
    r = await c.post(
        "/admin/login",
        data={"csrf": csrf_of(page), "user": ADMIN, "password": PASSWORD, "code": code},
        allow_redirects=False,
    )
    return r.status


async def test_admin_login_needs_password_and_code(web_app: WebUnderTest) -> None:
    w = web_app
    admin = await w.rt.store.get_user(ADMIN)
    assert admin is not None
    made = await w.rt.second_factor.enroll(admin, "totp")
    async with w.client() as c:
        assert await _admin_login(w, c, "") == 403
        assert (await c.get("/admin", allow_redirects=False)).status == 303
        code = pyotp.TOTP(made.secret).at(w.clock())
        assert await _admin_login(w, c, code) == 303
        page = await (await c.get("/admin")).text()
        assert 'id="users"' in page and "alice" in page
        # CSRF on an admin action: refused without the token, done with it.
        r = await c.post("/admin/user/alice/disable", data={}, allow_redirects=False)
        assert r.status == 403
        r = await c.post(
            "/admin/user/alice/disable", data={"csrf": csrf_of(page)}, allow_redirects=False
        )
        assert r.status == 303
    alice = await w.rt.store.get_user("alice")
    assert alice is not None and not alice.enabled
    audit = await w.rt.store.query_audit(kind="user_disable")
    assert audit[-1].actor == f"web:{ADMIN}"


async def test_a_non_admin_cannot_log_in_and_the_source_limit_trips(web_app: WebUnderTest) -> None:
    w = web_app
    async with w.client() as c:
        for _ in range(5):
            page = await (await c.get("/admin/login")).text()
            r = await c.post(
                "/admin/login",
                data={"csrf": csrf_of(page), "user": "alice", "password": PASSWORD, "code": "1"},
            )
            assert r.status == 403
    lock = await w.rt.throttle.check(None, "127.0.0.1")
    assert lock is not None and lock.scope == "source"
    kinds = [a.kind for a in await w.rt.store.query_audit(kind="lock")]
    assert kinds


async def test_security_headers_on_every_page(web_app: WebUnderTest) -> None:
    w = web_app
    async with w.client() as c:
        for path in ("/", "/admin/login", "/no-such-page", "/invite/x", "/enroll"):
            r = await c.get(path, allow_redirects=False)
            h = r.headers
            assert h["Content-Security-Policy"] == CSP, path
            assert "script-src 'none'" in CSP and "default-src 'self'" in CSP
            assert h["X-Frame-Options"] == "DENY"
            assert h["Referrer-Policy"] == "no-referrer"
            assert h["X-Content-Type-Options"] == "nosniff"
            assert h["Strict-Transport-Security"].startswith("max-age=")
            assert h["Cache-Control"] == "no-store"
    async with w.client() as c:
        r = await c.get("/admin/login")
        cookie = r.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_values_are_escaped_in_pages(web_app: WebUnderTest) -> None:
    w = web_app
    admin = await w.rt.store.get_user(ADMIN)
    assert admin is not None
    made = await w.rt.second_factor.enroll(admin, "totp")
    async with w.client() as c:
        assert await _admin_login(w, c, pyotp.TOTP(made.secret).at(w.clock())) == 303
        page = await (await c.get("/admin/audit", params={"kind": '<script>x"'})).text()
        assert "<script>" not in page and "&lt;script&gt;x&quot;" in page


async def test_large_posts_are_refused(web_app: WebUnderTest) -> None:
    w = web_app
    async with w.client() as c:
        page = await (await c.get("/admin/login")).text()
        r = await c.post(
            "/admin/login", data={"csrf": csrf_of(page), "user": "x" * 100_000, "password": "p"}
        )
        assert r.status == 413
        assert r.headers["Content-Security-Policy"] == CSP


async def test_a_disabled_admin_loses_the_session_at_once(web_app: WebUnderTest) -> None:
    from roamgate import accounts

    w = web_app
    admin = await w.rt.store.get_user(ADMIN)
    assert admin is not None
    made = await w.rt.second_factor.enroll(admin, "totp")
    async with w.client() as c:
        assert await _admin_login(w, c, pyotp.TOTP(made.secret).at(w.clock())) == 303
        assert (await c.get("/admin", allow_redirects=False)).status == 200
        await accounts.set_user_enabled(w.rt, ADMIN, False, "test")
        r = await c.get("/admin", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/admin/login"


async def test_an_admin_unlocks_a_locked_source(web_app: WebUnderTest) -> None:
    w = web_app
    admin = await w.rt.store.get_user(ADMIN)
    assert admin is not None
    made = await w.rt.second_factor.enroll(admin, "totp")
    await w.rt.store.set_lock("source", "2001:db8:1:2::/64", w.clock() + 600, False)
    async with w.client() as c:
        assert await _admin_login(w, c, pyotp.TOTP(made.secret).at(w.clock())) == 303
        page = await (await c.get("/admin")).text()
        assert "2001:db8:1:2::/64" in page
        r = await c.post(
            "/admin/source/unlock",
            data={"csrf": csrf_of(page), "source": "2001:db8:1:2::/64"},
            allow_redirects=False,
        )
        assert r.status == 303
    assert await w.rt.store.get_throttle("source", "2001:db8:1:2::/64") is None
    unlock = (await w.rt.store.query_audit(kind="unlock"))[-1]
    assert unlock.actor == f"web:{ADMIN}" and unlock.result == "ok"
