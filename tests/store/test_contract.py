"""The Store contract: every backend must pass this suite unchanged.

Add a backend by adding it to the `backend` fixture's params; nothing else here may change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from roamgate.store import DuplicateError, Store, open_store
from roamgate.store.base import (
    AuditRecord,
    DeviceRecord,
    InviteRecord,
    PendingCallback,
    SessionRecord,
    TokenRecord,
    WebSessionRecord,
)

T0 = 1_750_000_000.0

Opener = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Returns a function opening a new connection to one shared, migrated database."""
    if request.param == "sqlite":
        url = str(tmp_path / "contract.db")

        async def open_sqlite() -> Store:
            return await open_store(url, create=True)

        return open_sqlite
    if request.param == "postgresql":
        pg_url = str(request.getfixturevalue("pg_database"))

        async def open_postgresql() -> Store:
            return await open_store(pg_url)

        return open_postgresql
    raise AssertionError(request.param)


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[Store]:
    s = await opener()
    yield s
    await s.close()


def _token(token_id: str, user_id: int, state: int | None = None) -> TokenRecord:
    return TokenRecord(
        id=token_id,
        user_id=user_id,
        kind="totp",
        sealed_secret=b"\x01sealed",
        digits=6,
        period=30,
        algorithm="sha1",
        state=state,
        label="phone",
        created_at=T0,
    )


async def test_migrations_are_versioned_and_idempotent(store: Store) -> None:
    version = await store.schema_version()
    assert version >= 1
    assert await store.migrate() == 0
    assert await store.schema_version() == version


async def test_users(store: Store) -> None:
    alice = await store.add_user("alice", T0, email="alice@example.com")
    assert (alice.name, alice.email, alice.enabled, alice.profile) == (
        "alice",
        "alice@example.com",
        True,
        "lan",
    )
    assert alice.password_hash is None
    with pytest.raises(DuplicateError):
        await store.add_user("alice", T0)
    await store.add_user("bob", T0, profile="phs", password_hash="$scrypt$x")
    assert [u.name for u in await store.list_users()] == ["alice", "bob"]
    assert await store.get_user_by_id(alice.id) == alice
    assert await store.set_user_enabled("alice", False, T0 + 1)
    disabled = await store.get_user("alice")
    assert disabled is not None and not disabled.enabled and disabled.updated_at == T0 + 1
    assert not await store.set_user_enabled("nobody", False, T0)
    assert await store.set_password_hash("alice", "$scrypt$y", T0)
    assert (await store.get_user("alice")).password_hash == "$scrypt$y"  # type: ignore[union-attr]
    assert await store.get_user("nobody") is None


async def test_user_profile_can_be_changed(store: Store) -> None:
    await store.add_user("frank", T0, profile="isdn")
    assert await store.set_user_profile("frank", "phs", T0 + 5)
    frank = await store.get_user("frank")
    assert frank is not None and (frank.profile, frank.updated_at) == ("phs", T0 + 5)
    assert [u.profile for u in await store.list_users() if u.name == "frank"] == ["phs"]
    assert not await store.set_user_profile("nobody", "phs", T0)
    assert await store.get_user("nobody") is None


async def test_user_email_can_be_changed(store: Store) -> None:
    await store.add_user("gina", T0, email="gina@old.example")
    assert await store.set_user_email("gina", "gina@new.example", T0 + 5)
    gina = await store.get_user("gina")
    assert gina is not None and (gina.email, gina.updated_at) == ("gina@new.example", T0 + 5)
    assert await store.set_user_email("gina", None, T0 + 6)
    assert (await store.get_user("gina")).email is None  # type: ignore[union-attr]
    assert not await store.set_user_email("nobody", "x@y.example", T0)


async def test_a_device_can_have_its_own_profile(store: Store) -> None:
    u = await store.add_user("gina", T0)
    await store.set_device_profile(u.id, "cert:SHA256:ab", "pda", T0)
    await store.set_device_profile(u.id, "addr:192.0.2.7", "phs", T0)
    await store.set_device_profile(u.id, "cert:SHA256:ab", "isdn", T0 + 1)  # replaced
    assert await store.device_profiles(u.id) == {
        "addr:192.0.2.7": "phs",
        "cert:SHA256:ab": "isdn",
    }
    await store.set_device_profile(u.id, "addr:192.0.2.7", None, T0 + 2)
    assert await store.device_profiles(u.id) == {"cert:SHA256:ab": "isdn"}
    assert await store.remove_user("gina")
    v = await store.add_user("gina", T0)
    assert await store.device_profiles(v.id) == {}


async def test_remove_user_cascades_but_keeps_audit(store: Store) -> None:
    u = await store.add_user("carol", T0)
    await store.add_token(_token("tok_c", u.id))
    await store.replace_backup_codes(u.id, [b"h1", b"h2"], T0)
    await store.add_callback(u.id, "sms", "+81 90 0000 0000", T0)
    await store.append_audit(AuditRecord(ts=T0, kind="auth", result="ok", user_name="carol"))
    assert await store.remove_user("carol")
    assert not await store.remove_user("carol")
    assert await store.get_token("tok_c") is None
    assert await store.count_backup_codes(u.id) == 0
    assert await store.list_callbacks(u.id) == []
    assert len(await store.query_audit(user_name="carol")) == 1


async def test_tokens_and_revocation(store: Store) -> None:
    u = await store.add_user("dave", T0)
    await store.add_token(_token("tok_1", u.id))
    await store.add_token(_token("tok_2", u.id, state=0))
    with pytest.raises(DuplicateError):
        await store.add_token(_token("tok_1", u.id))
    with pytest.raises(DuplicateError):
        await store.add_token(_token("tok_orphan", 999_999))
    got = await store.get_token("tok_1")
    assert got == _token("tok_1", u.id)
    assert [t.id for t in await store.list_tokens(u.id)] == ["tok_1", "tok_2"]
    assert await store.revoke_token("tok_1", T0 + 5)
    assert not await store.revoke_token("tok_1", T0 + 6)
    assert [t.id for t in await store.list_tokens(u.id)] == ["tok_2"]
    assert [t.id for t in await store.list_tokens(include_revoked=True)] == ["tok_1", "tok_2"]
    revoked = await store.get_token("tok_1")
    assert revoked is not None and not revoked.active and revoked.revoked_at == T0 + 5


async def test_token_state_only_grows(store: Store) -> None:
    u = await store.add_user("erin", T0)
    await store.add_token(_token("tok_e", u.id))
    assert await store.advance_token_state("tok_e", 100, T0)
    assert not await store.advance_token_state("tok_e", 100, T0)  # the same code again
    assert not await store.advance_token_state("tok_e", 99, T0)  # an older code
    assert await store.advance_token_state("tok_e", 101, T0 + 30)
    tok = await store.get_token("tok_e")
    assert tok is not None and tok.state == 101 and tok.last_used_at == T0 + 30
    await store.revoke_token("tok_e", T0)
    assert not await store.advance_token_state("tok_e", 200, T0)  # revoked: nothing accepted


async def test_concurrent_use_of_one_code_has_exactly_one_winner(opener: Opener) -> None:
    """Several connections (like several gateway nodes) race to accept the same step."""
    stores = [await opener() for _ in range(4)]
    try:
        u = await stores[0].add_user("frank", T0)
        await stores[0].add_token(_token("tok_f", u.id))
        attempts = [s.advance_token_state("tok_f", 4242, T0) for s in stores for _ in range(5)]
        results = await asyncio.gather(*attempts)
        assert results.count(True) == 1
        codes = await asyncio.gather(*(s.consume_backup_code(u.id, b"x", T0) for s in stores))
        assert codes.count(True) == 0
        await stores[0].replace_backup_codes(u.id, [b"x"], T0)
        codes = await asyncio.gather(*(s.consume_backup_code(u.id, b"x", T0) for s in stores))
        assert codes.count(True) == 1
    finally:
        for s in stores:
            await s.close()


async def test_backup_codes_are_single_use_and_replaced_whole(store: Store) -> None:
    u = await store.add_user("gina", T0)
    await store.replace_backup_codes(u.id, [b"a", b"b", b"c"], T0)
    assert await store.count_backup_codes(u.id) == 3
    assert await store.backup_code_status(u.id, b"b") == "unused"
    assert await store.consume_backup_code(u.id, b"b", T0 + 1)
    assert await store.backup_code_status(u.id, b"b") == "used"
    assert await store.backup_code_status(u.id, b"nope") is None
    assert not await store.consume_backup_code(u.id, b"b", T0 + 2)
    assert not await store.consume_backup_code(u.id, b"zzz", T0 + 2)
    assert await store.count_backup_codes(u.id) == 2
    await store.replace_backup_codes(u.id, [b"d"], T0 + 3)
    assert not await store.consume_backup_code(u.id, b"a", T0 + 4)  # the old sheet is gone
    assert await store.count_backup_codes(u.id) == 1


async def test_failure_counting_is_atomic(opener: Opener) -> None:
    stores = [await opener() for _ in range(3)]
    try:
        await asyncio.gather(
            *(s.record_failure("user", "henry", T0) for s in stores for _ in range(10))
        )
        rec = await stores[0].get_throttle("user", "henry")
        assert rec is not None and rec.failures == 30 and rec.last_failure_at == T0
    finally:
        for s in stores:
            await s.close()


async def test_throttle_lock_clear_and_forgetting(store: Store) -> None:
    assert await store.get_throttle("source", "192.0.2.1") is None
    r1 = await store.record_failure("source", "192.0.2.1", T0, forget_before=T0 - 3600)
    r2 = await store.record_failure("source", "192.0.2.1", T0 + 10, forget_before=T0 - 3590)
    assert (r1.failures, r2.failures) == (1, 2)
    # The last failure is older than the horizon: the count starts again.
    r3 = await store.record_failure("source", "192.0.2.1", T0 + 5000, forget_before=T0 + 1400)
    assert r3.failures == 1 and r3.last_failure_at == T0 + 5000
    await store.set_lock("source", "192.0.2.1", T0 + 6000, False)
    rec = await store.get_throttle("source", "192.0.2.1")
    assert rec is not None and rec.locked_until == T0 + 6000 and not rec.hard_locked
    await store.set_lock("user", "ivan", None, True)
    hard = await store.get_throttle("user", "ivan")
    assert hard is not None and hard.hard_locked and hard.failures == 0
    assert [(t.scope, t.key) for t in await store.list_throttles()] == [
        ("source", "192.0.2.1"),
        ("user", "ivan"),
    ]
    assert [t.key for t in await store.list_throttles("user")] == ["ivan"]
    assert await store.clear_throttle("user", "ivan")
    assert not await store.clear_throttle("user", "ivan")
    assert await store.get_throttle("user", "ivan") is None


async def test_callbacks(store: Store) -> None:
    u = await store.add_user("judy", T0)
    cb = await store.add_callback(u.id, "sms", "+81 90 1234 5678", T0)
    assert (cb.channel, cb.address, cb.verified_at) == ("sms", "+81 90 1234 5678", None)
    with pytest.raises(DuplicateError):
        await store.add_callback(u.id, "sms", "+81 90 1234 5678", T0)
    with pytest.raises(DuplicateError):
        await store.add_callback(999_999, "sms", "+1", T0)
    assert await store.mark_callback_verified(cb.id, T0 + 60)
    [got] = await store.list_callbacks(u.id)
    assert got.verified_at == T0 + 60
    assert await store.remove_callback(cb.id)
    assert not await store.remove_callback(cb.id)


async def test_callback_keys_policy_and_known_sources(store: Store) -> None:
    u = await store.add_user("jules", T0)
    cb = await store.add_callback(u.id, "dialback", "127.0.0.1:4000", T0)
    assert await store.get_callback_key(cb.id) is None
    assert await store.set_callback_key(cb.id, b"\x01sealed-key")
    assert await store.get_callback_key(cb.id) == b"\x01sealed-key"
    assert not await store.set_callback_key(999_999, b"x")
    assert await store.get_callback_policy(u.id) is None
    await store.set_callback_policy(u.id, "always", T0)
    await store.set_callback_policy(u.id, "new_source", T0 + 1)
    assert await store.get_callback_policy(u.id) == "new_source"
    keys = ["net:198.51.100.0/24", "device:cert:ab"]
    assert await store.unknown_sources(u.id, keys) == keys
    await store.note_known_sources(u.id, keys[:1], T0)
    await store.note_known_sources(u.id, keys[:1], T0 + 5)  # seen again: no duplicate
    assert await store.unknown_sources(u.id, keys) == keys[1:]
    other = await store.add_user("kim", T0)
    assert await store.unknown_sources(other.id, keys) == keys


def _pending(pid: str, user_id: int, at: float, token: bytes | None = None) -> PendingCallback:
    return PendingCallback(pid, user_id, "approve", "node-a", token, "pending", at, at + 120)


async def test_one_outstanding_callback_per_user(opener: Opener) -> None:
    stores = [await opener() for _ in range(4)]
    try:
        u = await stores[0].add_user("maud", T0)
        claims = await asyncio.gather(
            *(s.claim_pending_callback(_pending(f"cb_{i}", u.id, T0)) for i, s in enumerate(stores))
        )
        assert sorted(claims) == [False, False, False, True]
        winner = f"cb_{claims.index(True)}"
        store = stores[0]
        # Still outstanding a second before expiry; taken over once expired.
        assert not await store.claim_pending_callback(_pending("cb_late", u.id, T0 + 119))
        assert await store.claim_pending_callback(_pending("cb_next", u.id, T0 + 120))
        assert await store.get_pending_callback(winner) is None
        assert await store.finish_pending_callback("cb_next")
        assert not await store.finish_pending_callback("cb_next")
        assert await store.claim_pending_callback(_pending("cb_new", u.id, T0 + 121))
    finally:
        for s in stores:
            await s.close()


async def test_pending_callback_status_is_compare_and_set(store: Store) -> None:
    u = await store.add_user("nina", T0)
    assert await store.claim_pending_callback(_pending("cb_1", u.id, T0, b"h" * 32))
    got = await store.get_pending_callback("cb_1")
    assert got is not None and (got.status, got.token_hash, got.node) == (
        "pending",
        b"h" * 32,
        "node-a",
    )
    assert await store.update_pending_callback("cb_1", ["pending"], "delivered", T0 + 1)
    assert not await store.update_pending_callback("cb_1", ["pending"], "failed", T0 + 2)
    assert not await store.update_pending_callback("cb_1", [], "failed", T0 + 2)
    assert await store.answer_pending_callback(b"x" * 32, "approved", T0 + 3) is None
    answered = await store.answer_pending_callback(b"h" * 32, "approved", T0 + 3)
    assert answered is not None and answered.id == "cb_1" and answered.status == "approved"
    assert await store.answer_pending_callback(b"h" * 32, "denied", T0 + 4) is None  # once
    assert await store.claim_pending_callback(_pending("cb_2", u.id, T0 + 200, b"g" * 32))
    assert await store.answer_pending_callback(b"g" * 32, "approved", T0 + 400) is None  # late
    assert not await store.update_pending_callback("cb_2", ["pending"], "failed", T0 + 400)


async def test_ssh_keys(store: Store) -> None:
    u = await store.add_user("kent", T0)
    other = await store.add_user("lena", T0)
    k = await store.add_ssh_key(u.id, "SHA256:abc", "ssh-ed25519 AAAA kent@laptop", "laptop", T0)
    assert (k.user_id, k.fingerprint, k.comment) == (u.id, "SHA256:abc", "laptop")
    with pytest.raises(DuplicateError):
        await store.add_ssh_key(u.id, "SHA256:abc", "ssh-ed25519 AAAA", "", T0)
    with pytest.raises(DuplicateError):
        await store.add_ssh_key(999_999, "SHA256:zzz", "ssh-ed25519 AAAA", "", T0)
    # The same key may belong to two users; each has their own row.
    await store.add_ssh_key(other.id, "SHA256:abc", "ssh-ed25519 AAAA", "", T0)
    await store.add_ssh_key(u.id, "SHA256:def", "ssh-ed25519 BBBB", "", T0 + 1)
    assert [x.fingerprint for x in await store.list_ssh_keys(u.id)] == ["SHA256:abc", "SHA256:def"]
    assert await store.remove_ssh_key(u.id, "SHA256:abc")
    assert not await store.remove_ssh_key(u.id, "SHA256:abc")
    assert [x.fingerprint for x in await store.list_ssh_keys(other.id)] == ["SHA256:abc"]
    assert await store.remove_user("kent")
    assert await store.list_ssh_keys(u.id) == []


async def test_sessions(store: Store) -> None:
    s = SessionRecord(
        id="ses_1",
        user_name="kim",
        door="imaps",
        source="192.0.2.9",
        device=None,
        node="node-a",
        started_at=T0,
        last_seen_at=T0,
    )
    await store.open_session(s)
    with pytest.raises(DuplicateError):
        await store.open_session(s)
    await store.touch_session("ses_1", T0 + 10, 100, 2000)
    assert await store.request_session_end("ses_1", T0 + 11)
    assert not await store.request_session_end("ses_1", T0 + 12)
    [open_one] = await store.list_sessions()
    assert (open_one.bytes_in, open_one.bytes_out, open_one.end_requested_at) == (
        100,
        2000,
        T0 + 11,
    )
    assert await store.close_session("ses_1", T0 + 20, "logout", 150, 2500)
    assert not await store.close_session("ses_1", T0 + 21, "again", 0, 0)
    assert await store.list_sessions() == []
    [closed] = await store.list_sessions(open_only=False)
    assert (closed.ended_at, closed.end_reason, closed.bytes_out) == (T0 + 20, "logout", 2500)
    assert await store.get_session("ses_1") == closed
    assert await store.get_session("nope") is None


async def test_audit_query_filters_and_retention(store: Store) -> None:
    for i in range(6):
        await store.append_audit(
            AuditRecord(
                ts=T0 + i,
                kind="auth" if i % 2 else "lock",
                result="ok" if i < 3 else "fail",
                user_name="lee" if i < 4 else "max",
                source="192.0.2.1",
                detail={"n": i, "note": "ünïcode"},
            )
        )
    every = await store.query_audit()
    assert [r.ts for r in every] == [T0 + i for i in range(6)]  # oldest first
    assert every[0].id is not None and every[0].detail == {"n": 0, "note": "ünïcode"}
    assert [r.ts for r in await store.query_audit(user_name="max")] == [T0 + 4, T0 + 5]
    assert [r.ts for r in await store.query_audit(since=T0 + 2, until=T0 + 4)] == [T0 + 2, T0 + 3]
    assert [r.ts for r in await store.query_audit(kind="auth", result="fail")] == [T0 + 3, T0 + 5]
    assert [r.ts for r in await store.query_audit(limit=2)] == [T0 + 4, T0 + 5]  # the newest
    assert await store.delete_audit_before(T0 + 3) == 3
    assert len(await store.query_audit()) == 3


async def test_audit_pages_walk_every_event_once_in_order(store: Store) -> None:
    # Three events share one timestamp so a page boundary falls inside a tie.
    stamps = [T0, T0 + 1, T0 + 1, T0 + 1, T0 + 2, T0 + 3, T0 + 4]
    for i, ts in enumerate(stamps):
        await store.append_audit(
            AuditRecord(ts=ts, kind="auth", result="ok", user_name="lee" if i % 2 else "max")
        )
    seen: list[tuple[float, int]] = []
    after: tuple[float, int] | None = None
    while True:
        page = await store.audit_page(after=after, limit=2)
        if not page:
            break
        assert len(page) <= 2
        for r in page:
            assert r.id is not None
            seen.append((r.ts, r.id))
        after = seen[-1]
    assert [ts for ts, _ in seen] == stamps
    assert seen == sorted(seen) and len(set(seen)) == len(stamps)
    lee = await store.audit_page(user_name="lee", since=T0 + 1, until=T0 + 4)
    assert [(r.ts, r.user_name) for r in lee] == [(T0 + 1, "lee"), (T0 + 1, "lee"), (T0 + 3, "lee")]


async def test_travel_windows(store: Store) -> None:
    w = await store.open_travel_window("win_1", "lena", "addr:192.0.2.5", "imaps", T0, T0 + 100)
    assert (w.id, w.device, w.expires_at, w.revoked_at) == (
        "win_1",
        "addr:192.0.2.5",
        T0 + 100,
        None,
    )
    assert await store.find_travel_window("lena", "addr:192.0.2.5", T0 + 99) == w
    assert await store.find_travel_window("lena", "addr:192.0.2.5", T0 + 100) is None  # expired
    assert await store.find_travel_window("lena", "addr:192.0.2.6", T0) is None  # other device
    assert await store.find_travel_window("otto", "addr:192.0.2.5", T0) is None  # other user
    # A new password+code login restarts the device's window under a new id.
    again = await store.open_travel_window(
        "win_2", "lena", "addr:192.0.2.5", "imap", T0 + 50, T0 + 150
    )
    assert (again.id, again.expires_at) == ("win_2", T0 + 150)
    await store.open_travel_window("win_3", "lena", "cert:AB", "imaps", T0, T0 + 100)
    assert [x.id for x in await store.list_travel_windows(T0 + 120)] == ["win_2"]
    assert [x.id for x in await store.list_travel_windows(T0 + 120, include_ended=True)] == [
        "win_3",
        "win_2",
    ]
    assert await store.revoke_travel_window("win_2", T0 + 60)
    assert not await store.revoke_travel_window("win_2", T0 + 61)
    assert await store.find_travel_window("lena", "addr:192.0.2.5", T0 + 70) is None
    await store.open_travel_window("win_4", "lena", "addr:192.0.2.9", "imaps", T0, T0 + 500)
    assert await store.revoke_user_travel_windows("lena", T0 + 80) == 2
    assert await store.list_travel_windows(T0 + 81, user_name="lena") == []


def _invite(invite_id: str, token_hash: bytes, expires_at: float = T0 + 3600) -> InviteRecord:
    return InviteRecord(invite_id, "alice", token_hash, T0, expires_at, "cli:root")


async def test_invites_are_single_use_and_expire(store: Store) -> None:
    await store.add_invite(_invite("inv_1", b"h1"))
    await store.add_invite(_invite("inv_2", b"h2", expires_at=T0 + 10))
    await store.add_invite(_invite("inv_3", b"h3"))
    with pytest.raises(DuplicateError):
        await store.add_invite(_invite("inv_4", b"h1"))
    found = await store.find_invite(b"h1")
    assert found is not None and found.id == "inv_1" and found.usable(T0 + 1)
    assert await store.find_invite(b"nope") is None
    assert await store.consume_invite("inv_1", T0 + 1)
    assert not await store.consume_invite("inv_1", T0 + 2)
    used = await store.find_invite(b"h1")
    assert used is not None and used.used_at == T0 + 1 and not used.usable(T0 + 2)
    # Expired: neither consumed nor listed as open.
    assert not await store.consume_invite("inv_2", T0 + 10)
    assert await store.cancel_invite("inv_3", T0 + 3)
    assert not await store.cancel_invite("inv_3", T0 + 4)
    assert not await store.consume_invite("inv_3", T0 + 5)
    assert not await store.cancel_invite("inv_1", T0 + 5)
    assert await store.list_invites(T0 + 20) == []
    every = await store.list_invites(T0 + 20, include_ended=True)
    assert {i.id for i in every} == {"inv_1", "inv_2", "inv_3"}
    assert await store.list_invites(T0 + 20, user_name="bob", include_ended=True) == []


async def test_concurrent_use_of_one_invite_has_exactly_one_winner(opener: Opener) -> None:
    stores = [await opener() for _ in range(4)]
    try:
        await stores[0].add_invite(_invite("inv_race", b"race"))
        results = await asyncio.gather(*(s.consume_invite("inv_race", T0 + 1) for s in stores))
        assert sorted(results) == [False, False, False, True]
    finally:
        for s in stores:
            await s.close()


async def test_web_sessions(store: Store) -> None:
    rec = WebSessionRecord(b"sid", "admin", "alice", "csrf1", "{}", T0, T0, T0 + 600)
    await store.add_web_session(rec)
    with pytest.raises(DuplicateError):
        await store.add_web_session(rec)
    assert await store.get_web_session(b"sid", T0 + 1) == rec
    assert await store.get_web_session(b"sid", T0 + 600) is None
    assert await store.get_web_session(b"other", T0 + 1) is None
    assert await store.update_web_session(b"sid", T0 + 2, data='{"a": 1}', expires_at=T0 + 900)
    got = await store.get_web_session(b"sid", T0 + 700)
    assert got is not None and got.data == '{"a": 1}' and got.last_seen_at == T0 + 2
    # Compare-and-set on the data: the second taker loses.
    assert await store.update_web_session(b"sid", T0 + 3, data="{}", expect_data='{"a": 1}')
    assert not await store.update_web_session(b"sid", T0 + 4, data="{}", expect_data='{"a": 1}')
    assert not await store.update_web_session(b"sid", T0 + 901)
    await store.add_web_session(
        WebSessionRecord(b"sid2", "enroll", "bob", "c", "{}", T0, T0, T0 + 100)
    )
    await store.add_web_session(
        WebSessionRecord(b"sid3", "enroll", "bob", "c", "{}", T0, T0, T0 + 5000)
    )
    assert await store.delete_web_sessions(expired_before=T0 + 100) == 1
    assert await store.delete_web_sessions(user_name="bob") == 1
    assert await store.delete_web_sessions() == 0
    assert await store.delete_web_session(b"sid")
    assert not await store.delete_web_session(b"sid")


async def test_devices(store: Store) -> None:
    d1 = DeviceRecord("dev_1", "alice", "phone", "0a1b", "f" * 64, T0, T0 + 86400)
    d2 = DeviceRecord("dev_2", "alice", "laptop", "0a1c", "e" * 64, T0 + 1, T0 + 86400)
    d3 = DeviceRecord("dev_3", "bob", "phone", "0a1d", "d" * 64, T0 + 2, T0 + 86400)
    for d in (d1, d2, d3):
        await store.add_device(d)
    with pytest.raises(DuplicateError):
        await store.add_device(DeviceRecord("dev_4", "bob", "x", "0a1b", "c" * 64, T0, T0))
    assert await store.get_device("dev_1") == d1
    assert await store.find_device("e" * 64) == d2
    assert await store.find_device("0" * 64) is None
    assert [d.id for d in await store.list_devices(user_name="alice")] == ["dev_1", "dev_2"]
    assert await store.revoke_device("dev_1", T0 + 5)
    assert not await store.revoke_device("dev_1", T0 + 6)
    assert [d.id for d in await store.list_devices()] == ["dev_2", "dev_3"]
    assert await store.revoke_user_devices("alice", T0 + 7) == 1
    revoked = await store.find_device("f" * 64)
    assert revoked is not None and revoked.revoked_at == T0 + 5
    every = await store.list_devices(include_revoked=True)
    assert [(d.id, d.revoked_at) for d in every] == [
        ("dev_1", T0 + 5),
        ("dev_2", T0 + 7),
        ("dev_3", None),
    ]


async def test_login_throttles_are_read_together(store: Store) -> None:
    assert await store.get_login_throttles("judy", "192.0.2.9") == (None, None)
    await store.record_failure("user", "judy", T0)
    await store.record_failure("source", "192.0.2.9", T0 + 1)
    # A record of the other scope under the same key is not mistaken for the asked one.
    await store.record_failure("source", "judy", T0 + 2)
    await store.set_lock("user", "192.0.2.9", T0 + 60, False)
    by_user, by_source = await store.get_login_throttles("judy", "192.0.2.9")
    assert by_user == await store.get_throttle("user", "judy")
    assert by_source == await store.get_throttle("source", "192.0.2.9")
    assert by_user is not None and (by_user.scope, by_user.key, by_user.failures) == (
        "user",
        "judy",
        1,
    )
    assert by_source is not None and by_source.last_failure_at == T0 + 1
    assert await store.get_login_throttles(None, "192.0.2.9") == (None, by_source)
    assert await store.get_login_throttles("judy", None) == (by_user, None)
    assert await store.get_login_throttles("nobody", "192.0.2.10") == (None, None)
