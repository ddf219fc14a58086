"""The login decision: password then code, single use, throttling, audit, and no secret in any log."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from roamgate.audit import Auditor
from roamgate.auth import otp
from roamgate.auth.passwords import hash_password
from roamgate.config import Lockout, OtpSettings, UpstreamServer
from roamgate.login.authenticator import Authenticator
from roamgate.login.second_factor import Enrollment, SecondFactor
from roamgate.login.throttle import Throttle
from roamgate.login.verifiers import LocalVerifier, UpstreamImapVerifier
from roamgate.secretbox import SecretBox
from roamgate.store import Store, open_store
from roamgate.store.base import UserRecord
from tests.conftest import FakeClock

PASSWORD = "Correct-Horse-7"
IP = "192.0.2.10"


@dataclass
class Rig:
    store: Store
    clock: FakeClock
    auditor: Auditor
    second: SecondFactor
    throttle: Throttle
    auth: Authenticator
    user: UserRecord
    token: Enrollment
    audit_file: Path

    def code(self, offset_steps: int = 0) -> str:
        p = otp.TotpParams(self.token.secret)
        return otp.totp_code(p, otp.time_step(self.clock(), 30) + offset_steps)


@pytest.fixture
async def rig(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Rig]:
    store = await open_store(str(tmp_path / "gw.db"), create=True)
    box = SecretBox(os.urandom(32))
    audit_file = tmp_path / "audit.jsonl"
    auditor = Auditor(store, audit_file, clock)
    second = SecondFactor(store, box, OtpSettings(), clock)
    throttle = Throttle(store, auditor, Lockout(), clock)
    auth = Authenticator(
        store, LocalVerifier(), second, throttle, auditor, clock, travel_window_seconds=3600
    )
    user = await store.add_user("alice", clock(), password_hash=hash_password(PASSWORD))
    token = await second.enroll(user, "totp")
    yield Rig(store, clock, auditor, second, throttle, auth, user, token, audit_file)
    await store.close()


async def login(
    rig: Rig, code: str, password: str = PASSWORD, user: str = "alice", source: str = IP
) -> str:
    result = await rig.auth.login(user, password, code, source=source, door="imaps")
    return result.reason


async def test_password_and_code_log_in_once(rig: Rig) -> None:
    code = rig.code()
    assert await login(rig, code) == "ok"
    assert await login(rig, code) == "bad_code:replay"
    rig.clock.advance(30)
    assert await login(rig, rig.code()) == "ok"
    events = await rig.store.query_audit(kind="auth")
    assert [(e.result, e.reason, e.factor) for e in events] == [
        ("ok", None, "password+totp"),
        ("fail", "bad_code:replay", "totp"),
        ("ok", None, "password+totp"),
    ]
    assert all(e.source == IP and e.door == "imaps" for e in events)


async def test_wrong_password_leaves_the_code_unused(rig: Rig) -> None:
    code = rig.code()
    assert await login(rig, code, password="wrong-password") == "bad_password"
    assert await login(rig, code) == "ok"


async def test_code_window_and_clock_skew(rig: Rig) -> None:
    assert await login(rig, rig.code(-1)) == "ok"
    assert await login(rig, rig.code(+1)) == "ok"
    assert await login(rig, rig.code(+4)) == "bad_code:clock_skew"
    [event] = await rig.store.query_audit(result="fail")
    assert event.detail["drift_steps"] == 4


async def test_backup_code_works_once(rig: Rig) -> None:
    codes = await rig.second.issue_backup_codes(rig.user)
    assert await login(rig, codes[3]) == "ok"
    assert await login(rig, codes[3]) == "bad_code:replay"
    assert await login(rig, f"{codes[4][:5]}-{codes[4][5:]}") == "ok"
    assert await rig.store.count_backup_codes(rig.user.id) == 8


async def test_lock_escalates_and_success_resets(rig: Rig) -> None:
    for _ in range(10):
        assert await login(rig, "000000") in ("bad_code:wrong", "bad_code:clock_skew")
    # Locked now: even the right password and code are refused, unchecked and uncounted.
    assert await login(rig, rig.code()) == "user_locked"
    rec = await rig.store.get_throttle("user", "alice")
    assert rec is not None and rec.failures == 10 and rec.locked_until == rig.clock() + 60
    rig.clock.advance(61)
    assert await login(rig, "000000", password="nope") == "bad_password"
    rec = await rig.store.get_throttle("user", "alice")
    assert rec is not None and rec.locked_until == rig.clock() + 120  # doubled
    rig.clock.advance(121)
    assert await login(rig, rig.code()) == "ok"
    assert await rig.store.get_throttle("user", "alice") is None
    locks = await rig.store.query_audit(kind="lock")
    assert [(e.result, e.detail["seconds"]) for e in locks] == [("timed", 60), ("timed", 120)]


async def test_hard_lock_before_one_hundred_and_unlock(rig: Rig) -> None:
    for _ in range(98):
        await rig.throttle.failure("alice", None, "imaps")
        rig.clock.advance(4000)  # beyond the longest timed lock
    assert await login(rig, "000000", source="198.51.100.1") == "bad_code:wrong"  # the 99th
    rec = await rig.store.get_throttle("user", "alice")
    assert rec is not None and rec.hard_locked and rec.failures == 99
    rig.clock.advance(10**7)  # a hard lock does not expire
    assert await login(rig, rig.code()) == "user_locked"
    assert await rig.throttle.unlock("user", "alice", "test")
    assert await login(rig, rig.code()) == "ok"
    kinds = [(e.kind, e.result) for e in await rig.store.query_audit(kind="lock", limit=5)]
    assert kinds[-1] == ("lock", "hard")
    assert [(e.kind, e.actor) for e in await rig.store.query_audit(kind="unlock")] == [
        ("unlock", "test")
    ]


async def test_source_lock_covers_every_user_from_that_network(rig: Rig) -> None:
    bob = await rig.store.add_user("bob", rig.clock(), password_hash=hash_password(PASSWORD))
    bob_token = await rig.second.enroll(bob, "totp")
    for i in range(20):
        assert (
            await login(rig, "123456", user=f"ghost{i}", source="2001:db8:7:7::1") == "unknown_user"
        )
    # Nothing is kept for made-up names; the /64 they came from is locked.
    assert [t.scope for t in await rig.store.list_throttles()] == ["source"]
    code = otp.totp_code(otp.TotpParams(bob_token.secret), otp.time_step(rig.clock(), 30))
    assert await login(rig, code, user="bob", source="2001:db8:7:7::99") == "source_locked"
    assert await login(rig, code, user="bob", source="2001:db8:8::1") == "ok"


async def test_disabled_user_is_refused(rig: Rig) -> None:
    await rig.store.set_user_enabled("alice", False, rig.clock())
    assert await login(rig, rig.code()) == "disabled"


async def test_upstream_down_is_temporary_and_not_counted(rig: Rig) -> None:
    # A real TCP connection to a closed loopback port: the corporate server is unreachable.
    verifier = UpstreamImapVerifier(
        UpstreamServer(host="127.0.0.1", port=1, tls="none", timeout_seconds=2)
    )
    auth = Authenticator(rig.store, verifier, rig.second, rig.throttle, rig.auditor, rig.clock)
    result = await auth.login("alice", PASSWORD, rig.code(), source=IP, door="imaps")
    assert (result.ok, result.reason, result.temporary) == (False, "verifier_unavailable", True)
    assert await rig.store.get_throttle("user", "alice") is None
    assert await login(rig, rig.code()) == "ok"  # the code was not used up


async def test_no_secret_reaches_logs_or_audit(
    rig: Rig, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    backup = await rig.second.issue_backup_codes(rig.user)
    used: list[str] = []
    for code in (rig.code(), rig.code(), "999999", backup[0]):
        await login(rig, code)
        used.append(code)
    await login(rig, rig.code(), password="Wrong-Password-9")
    verifier = UpstreamImapVerifier(
        UpstreamServer(host="127.0.0.1", port=1, tls="none", timeout_seconds=1)
    )
    await Authenticator(
        rig.store, verifier, rig.second, rig.throttle, rig.auditor, rig.clock
    ).login("alice", PASSWORD, rig.code(), source=IP, door="imaps")
    texts = [caplog.text, rig.audit_file.read_text()]
    texts += [repr(e) for e in await rig.store.query_audit()]
    secrets = [PASSWORD, "Wrong-Password-9", rig.token.secret, *used, *backup]
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert len(rig.audit_file.read_text().splitlines()) >= 6


async def test_the_audit_writer_refuses_credential_fields(rig: Rig) -> None:
    with pytest.raises(ValueError, match="credentials"):
        await rig.auditor.record("auth", "ok", detail={"password": "x"})


async def test_token_secret_is_not_in_the_database_file(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "gw.db"
    store = await open_store(str(path), create=True)
    second = SecondFactor(store, SecretBox(os.urandom(32)), OtpSettings(), clock)
    user = await store.add_user("zoe", clock())
    made = [await second.enroll(user, kind) for kind in ("totp", "hotp", "totp")]
    await store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("gw.db"))
    for m in made:
        assert m.secret.encode() not in raw
        assert m.secret.lower().encode() not in raw
        assert base64.b32decode(m.secret) not in raw
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def combined(rig: Rig, text: str, device: str = "addr:192.0.2.10", source: str = IP) -> str:
    result = await rig.auth.login_combined("alice", text, source=source, door="imap", device=device)
    return result.reason if not result.ok else f"ok:{result.factor}"


async def test_one_field_carries_password_then_code(rig: Rig) -> None:
    assert await combined(rig, PASSWORD + "000000") == "bad_code:wrong"
    assert await combined(rig, PASSWORD) == "bad_code:malformed"  # no code, no window
    assert await combined(rig, PASSWORD + rig.code()) == "ok:totp"
    [window] = await rig.store.list_travel_windows(rig.clock())
    assert (window.device, window.expires_at) == ("addr:192.0.2.10", rig.clock() + 3600)


async def test_password_ending_in_digits_with_backup_code(rig: Rig) -> None:
    await rig.store.set_password_hash("alice", hash_password("Secret2024"), rig.clock())
    codes = await rig.second.issue_backup_codes(rig.user)
    assert await combined(rig, "Secret2024" + codes[0]) == "ok:backup"
    assert await combined(rig, "Secret2024" + rig.code(), device="addr:x") == "ok:totp"


async def test_travel_window_lets_the_same_device_in_with_the_password(rig: Rig) -> None:
    code = rig.code()
    assert await combined(rig, PASSWORD + code) == "ok:totp"
    rig.clock.advance(600)
    # The client re-sends what it saved (password + the old code), or the user types only the
    # password: both pass inside the window, and neither uses up anything.
    assert await combined(rig, PASSWORD + code) == "ok:window"
    assert await combined(rig, PASSWORD) == "ok:window"
    assert await combined(rig, "wrong-password") == "bad_password"
    # Another device, or the same one after the window, needs a code again.
    assert await combined(rig, PASSWORD, device="addr:198.51.100.7") == "bad_code:malformed"
    rig.clock.advance(3600)
    assert await combined(rig, PASSWORD + code) == "bad_code:wrong"
    assert await combined(rig, PASSWORD) == "bad_code:malformed"
    events = await rig.store.query_audit(kind="auth", result="ok")
    assert [e.factor for e in events] == ["password+totp", "password+window", "password+window"]


async def test_a_revoked_window_needs_a_code_again(rig: Rig) -> None:
    assert await combined(rig, PASSWORD + rig.code()) == "ok:totp"
    [window] = await rig.store.list_travel_windows(rig.clock())
    assert await rig.store.revoke_travel_window(window.id, rig.clock())
    assert await combined(rig, PASSWORD) == "bad_code:malformed"


async def test_a_hold_can_refuse_a_good_login(rig: Rig) -> None:
    async def callback_not_answered(user: UserRecord, source: str, door: str) -> str | None:
        return "callback_unanswered"

    rig.auth.holds.append(callback_not_answered)
    assert await combined(rig, PASSWORD + rig.code()) == "callback_unanswered"
    [event] = await rig.store.query_audit(result="fail")
    assert (event.reason, event.factor) == ("callback_unanswered", "hold")
