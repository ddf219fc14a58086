"""The verified-password cache: hits, misses, expiry, invalidation, its bound, and no secret kept."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from roamgate.audit import Auditor
from roamgate.auth import otp
from roamgate.auth.passwords import hash_password
from roamgate.config import Lockout, OtpSettings
from roamgate.login.authenticator import Authenticator
from roamgate.login.password_cache import PasswordCache, cache_passwords
from roamgate.login.second_factor import Enrollment, SecondFactor
from roamgate.login.throttle import Throttle
from roamgate.login.verifiers import LocalVerifier, Outcome
from roamgate.secretbox import SecretBox
from roamgate.store import Store, open_store
from roamgate.store.base import UserRecord
from tests.conftest import FakeClock

PASSWORD = "Tr4vel-by-PHS"
IP = "198.51.100.7"


def cheap_hash(password: str) -> str:
    """A hash verify_password reads, at scrypt's lowest accepted cost (fast tests)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**10, r=8, p=1, dklen=32)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode().rstrip("=")

    return f"$scrypt$ln=10,r=8,p=1${b64(salt)}${b64(digest)}"


class CountingLocal(LocalVerifier):
    """The real scrypt verifier, counting how often scrypt actually ran."""

    def __init__(self) -> None:
        self.checks = 0

    async def verify(self, user: UserRecord, password: str) -> Outcome:
        self.checks += 1
        return await super().verify(user, password)


@dataclass
class Rig:
    store: Store
    clock: FakeClock
    inner: CountingLocal
    cache: PasswordCache
    auth: Authenticator
    token: Enrollment
    audit_file: Path

    async def user(self, name: str = "alice") -> UserRecord:
        user = await self.store.get_user(name)
        assert user is not None
        return user

    def code(self) -> str:
        return otp.totp_code(otp.TotpParams(self.token.secret), otp.time_step(self.clock(), 30))


@pytest.fixture
async def rig(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Rig]:
    store = await open_store(str(tmp_path / "gw.db"), create=True)
    audit_file = tmp_path / "audit.jsonl"
    auditor = Auditor(store, audit_file, clock)
    second = SecondFactor(store, SecretBox(os.urandom(32)), OtpSettings(), clock)
    throttle = Throttle(store, auditor, Lockout(), clock)
    inner = CountingLocal()
    cache = PasswordCache(inner, seconds=900, size=100, clock=clock)
    throttle.user_failure_listeners.append(cache.forget)
    auth = Authenticator(store, cache, second, throttle, auditor, clock)
    user = await store.add_user("alice", clock(), password_hash=cheap_hash(PASSWORD))
    token = await second.enroll(user, "totp")
    yield Rig(store, clock, inner, cache, auth, token, audit_file)
    await store.close()


async def test_a_verified_password_is_accepted_from_memory_the_second_time(rig: Rig) -> None:
    user = await rig.user()
    assert await rig.cache.verify(user, PASSWORD) is Outcome.ACCEPTED
    assert await rig.cache.verify(user, PASSWORD) is Outcome.ACCEPTED
    assert await rig.cache.verify(user, PASSWORD) is Outcome.ACCEPTED
    assert rig.inner.checks == 1
    assert (rig.cache.hits, rig.cache.misses) == (2, 1)


async def test_another_password_misses_and_failures_are_never_cached(rig: Rig) -> None:
    user = await rig.user()
    assert await rig.cache.verify(user, "wrong") is Outcome.REJECTED
    assert await rig.cache.verify(user, "wrong") is Outcome.REJECTED
    assert rig.inner.checks == 2 and len(rig.cache) == 0
    assert await rig.cache.verify(user, PASSWORD) is Outcome.ACCEPTED
    # With the right password remembered, a wrong one still pays scrypt and is refused.
    assert await rig.cache.verify(user, PASSWORD + "x") is Outcome.REJECTED
    assert await rig.cache.verify(user, PASSWORD[:-1]) is Outcome.REJECTED
    assert await rig.cache.verify(user, "") is Outcome.REJECTED
    assert rig.inner.checks == 6
    assert await rig.cache.verify(user, PASSWORD) is Outcome.ACCEPTED
    assert rig.inner.checks == 6


async def test_an_entry_expires_after_its_ttl(rig: Rig) -> None:
    user = await rig.user()
    await rig.cache.verify(user, PASSWORD)
    rig.clock.advance(899)
    await rig.cache.verify(user, PASSWORD)
    assert rig.inner.checks == 1
    rig.clock.advance(2)  # 901 s after the check: the hit above did not extend it
    assert await rig.cache.verify(user, PASSWORD) is Outcome.ACCEPTED
    assert rig.inner.checks == 2


async def test_a_reload_that_shortens_the_ttl_shortens_existing_entries(rig: Rig) -> None:
    user = await rig.user()
    await rig.cache.verify(user, PASSWORD)
    rig.clock.advance(120)
    rig.cache.apply(60, rig.cache.size)  # SIGHUP: 900 s -> 60 s
    assert await rig.cache.verify(user, PASSWORD) is Outcome.ACCEPTED
    assert rig.inner.checks == 2  # the 120 s old entry no longer counts


async def test_a_password_change_misses_and_the_old_password_is_refused(rig: Rig) -> None:
    await rig.cache.verify(await rig.user(), PASSWORD)
    await rig.store.set_password_hash("alice", cheap_hash("new-" + PASSWORD), rig.clock())
    changed = await rig.user()
    assert await rig.cache.verify(changed, PASSWORD) is Outcome.REJECTED
    assert await rig.cache.verify(changed, "new-" + PASSWORD) is Outcome.ACCEPTED
    assert rig.inner.checks == 3


async def test_disable_then_enable_misses(rig: Rig) -> None:
    await rig.cache.verify(await rig.user(), PASSWORD)
    rig.clock.advance(1)
    await rig.store.set_user_enabled("alice", False, rig.clock())
    result = await rig.auth.login("alice", PASSWORD, rig.code(), source=IP, door="imaps")
    assert result.reason == "disabled" and rig.inner.checks == 1  # refused before any check
    rig.clock.advance(1)
    await rig.store.set_user_enabled("alice", True, rig.clock())
    assert await rig.cache.verify(await rig.user(), PASSWORD) is Outcome.ACCEPTED
    assert rig.inner.checks == 2


async def test_a_removed_and_recreated_user_misses(rig: Rig) -> None:
    old_hash = (await rig.user()).password_hash
    await rig.cache.verify(await rig.user(), PASSWORD)
    await rig.store.remove_user("alice")
    rig.clock.advance(1)  # even with the very same hash copied over (`user add` salts anew)
    await rig.store.add_user("alice", rig.clock(), password_hash=old_hash)
    assert await rig.cache.verify(await rig.user(), PASSWORD) is Outcome.ACCEPTED
    assert rig.inner.checks == 2


async def test_a_failure_and_a_lock_forget_the_user(rig: Rig) -> None:
    assert (await rig.auth.login("alice", PASSWORD, rig.code(), source=IP, door="imaps")).ok
    assert len(rig.cache) == 1
    # The right password with a wrong code: the failure is counted, the entry dropped.
    wrong = await rig.auth.login("alice", PASSWORD, "000000", source=IP, door="imaps")
    assert wrong.reason.startswith("bad_code") and len(rig.cache) == 0
    for _ in range(9):
        await rig.auth.login("alice", PASSWORD, "000000", source=IP, door="imaps")
    locked = await rig.auth.login("alice", PASSWORD, rig.code(), source=IP, door="imaps")
    assert locked.reason == "user_locked" and len(rig.cache) == 0
    checks = rig.inner.checks
    rig.clock.advance(61)
    assert (await rig.auth.login("alice", PASSWORD, rig.code(), source=IP, door="imaps")).ok
    assert rig.inner.checks == checks + 1  # after the lock, scrypt again


async def test_the_second_factor_is_never_cached(rig: Rig) -> None:
    code = rig.code()
    assert (await rig.auth.login("alice", PASSWORD, code, source=IP, door="imaps")).ok
    again = await rig.auth.login("alice", PASSWORD, code, source=IP, door="imaps")
    assert again.reason == "bad_code:replay"
    events = await rig.store.query_audit(kind="auth")
    assert [e.detail.get("password_cache") for e in events] == ["miss", None]
    rig.clock.advance(30)
    assert (await rig.auth.login("alice", PASSWORD, rig.code(), source=IP, door="imaps")).ok
    events = await rig.store.query_audit(kind="auth", result="ok")
    assert [e.detail.get("password_cache") for e in events] == ["miss", "miss"]


async def test_a_hit_is_recorded_in_the_audit_trail(rig: Rig) -> None:
    assert (await rig.auth.login("alice", PASSWORD, rig.code(), source=IP, door="imaps")).ok
    rig.clock.advance(30)
    assert (await rig.auth.login("alice", PASSWORD, rig.code(), source=IP, door="imaps")).ok
    events = await rig.store.query_audit(kind="auth", result="ok")
    assert [e.detail["password_cache"] for e in events] == ["miss", "hit"]
    assert rig.inner.checks == 1


async def test_the_cache_is_bounded_least_recently_used_out(rig: Rig, clock: FakeClock) -> None:
    inner = CountingLocal()
    cache = PasswordCache(inner, seconds=900, size=3, clock=clock)
    users = []
    for i in range(5):
        users.append(await rig.store.add_user(f"u{i}", clock(), password_hash=cheap_hash(f"pw{i}")))
    for i in range(3):
        await cache.verify(users[i], f"pw{i}")
    await cache.verify(users[0], "pw0")  # u0 used: u1 is now the oldest
    await cache.verify(users[3], "pw3")
    await cache.verify(users[4], "pw4")
    assert len(cache) == 3 and inner.checks == 5
    for i in (0, 3, 4):
        await cache.verify(users[i], f"pw{i}")
    assert inner.checks == 5
    await cache.verify(users[1], "pw1")
    assert inner.checks == 6 and len(cache) == 3
    cache.apply(900, 1)
    assert len(cache) == 1


async def test_zero_seconds_checks_every_time_and_a_reload_can_turn_it_on(rig: Rig) -> None:
    user = await rig.user()
    rig.cache.apply(0, 100)
    for _ in range(3):
        assert await rig.cache.verify(user, PASSWORD) is Outcome.ACCEPTED
    assert rig.inner.checks == 3 and len(rig.cache) == 0
    rig.cache.apply(60, 100)
    await rig.cache.verify(user, PASSWORD)
    await rig.cache.verify(user, PASSWORD)
    assert rig.inner.checks == 4


async def test_only_the_local_verifier_is_wrapped() -> None:
    local = LocalVerifier()
    assert isinstance(cache_passwords(local, seconds=900, size=10), PasswordCache)
    assert isinstance(cache_passwords(local, seconds=0, size=10), PasswordCache)

    class Directory:
        name = "ldap"

        async def verify(self, user: UserRecord, password: str) -> Outcome:
            return Outcome.REJECTED

    directory = Directory()
    assert cache_passwords(directory, seconds=900, size=10) is directory


async def test_no_secret_in_memory_logs_or_audit(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = await rig.store.add_user(
        "bob", rig.clock(), password_hash=hash_password("Bob's-own-pw-1")
    )
    assert await rig.cache.verify(user, "Bob's-own-pw-1") is Outcome.ACCEPTED
    assert (await rig.auth.login("alice", PASSWORD, rig.code(), source=IP, door="imaps")).ok
    await rig.auth.login("alice", "not-" + PASSWORD, rig.code(), source=IP, door="imaps")
    kept = repr(vars(rig.cache)) + repr(list(rig.cache._entries.values()))
    for secret in (PASSWORD, "not-" + PASSWORD, "Bob's-own-pw-1"):
        assert secret not in kept
        assert secret.encode() not in kept.encode()
        assert secret not in caplog.text
        assert secret not in rig.audit_file.read_text()
    # What is kept is a 32-byte HMAC per user, nothing else.
    assert all(len(e.digest) == 32 for e in rig.cache._entries.values())
