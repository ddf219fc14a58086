"""PostgreSQL across nodes: two pools on one database behave like two gateway nodes."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

import pytest

from roamgate.config import OtpSettings
from roamgate.demo.postgres import PrivatePostgres
from roamgate.login.second_factor import SecondFactor
from roamgate.secretbox import SecretBox, new_key_text
from roamgate.store import Store, StoreError, open_store
from roamgate.store.base import AuditRecord
from roamgate.store.sqlite import load_migrations
from tests.conftest import FakeClock, require_program

T0 = 1_750_000_000.0


@pytest.fixture
async def two_nodes(pg_database: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores, each with its own connection pool, on one database: node A and node B."""
    a = await open_store(pg_database, pool_size=4)
    b = await open_store(pg_database, pool_size=4)
    yield a, b
    await a.close()
    await b.close()


def _hotp(secret: str, counter: int) -> str:
    out = subprocess.run(
        [require_program("oathtool"), "--hotp", "-b", "-c", str(counter), secret],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return out.stdout.strip()


async def test_a_code_accepted_on_one_node_is_refused_on_the_other(
    two_nodes: tuple[Store, Store], clock: FakeClock
) -> None:
    a, b = two_nodes
    box = SecretBox.from_text(new_key_text())
    node_a, node_b = (SecondFactor(s, box, OtpSettings(), clock) for s in (a, b))
    user = await a.add_user("alice", T0)
    enrolled = await node_a.enroll(user, "hotp")
    code = _hotp(enrolled.secret, 0)
    assert (await node_a.verify(user, code)).ok
    again = await node_b.verify(user, code)
    assert (again.ok, again.reason) == (False, "replay")
    # The next code works on B, and is then spent for A.
    following = _hotp(enrolled.secret, 1)
    assert (await node_b.verify(user, following)).ok
    assert (await node_a.verify(user, following)).reason == "replay"
    # Backup codes: the same.
    [first, *_rest] = await node_a.issue_backup_codes(user)
    assert (await node_b.verify(user, first)).ok
    assert (await node_a.verify(user, first)).reason == "replay"


async def test_concurrent_submissions_of_one_code_over_two_pools_have_one_winner(
    two_nodes: tuple[Store, Store], clock: FakeClock
) -> None:
    a, b = two_nodes
    box = SecretBox.from_text(new_key_text())
    nodes = [SecondFactor(s, box, OtpSettings(), clock) for s in (a, b)]
    user = await a.add_user("bob", T0)
    enrolled = await nodes[0].enroll(user, "hotp")
    codes = await nodes[0].issue_backup_codes(user)
    for round_no, code in enumerate(
        [_hotp(enrolled.secret, 3), codes[0], _hotp(enrolled.secret, 7)]
    ):
        # 16 attempts, spread over both nodes, all in flight at once.
        results = await asyncio.gather(*(nodes[i % 2].verify(user, code) for i in range(16)))
        assert [r.ok for r in results].count(True) == 1, round_no
        assert {r.reason for r in results if not r.ok} == {"replay"}


async def test_failures_counted_on_both_nodes_add_up_and_a_lock_is_seen_by_both(
    two_nodes: tuple[Store, Store],
) -> None:
    a, b = two_nodes
    await asyncio.gather(
        *(s.record_failure("user", "carol", T0 + i) for i in range(10) for s in (a, b))
    )
    rec = await b.get_throttle("user", "carol")
    assert rec is not None and rec.failures == 20
    await a.set_lock("user", "carol", T0 + 600, False)
    seen = await b.get_throttle("user", "carol")
    assert seen is not None and seen.locked_until == T0 + 600


async def test_nodes_starting_together_migrate_once(postgres: PrivatePostgres) -> None:
    name = postgres.create_database()
    url = postgres.url(name)
    try:
        stores = [await open_store(url, migrate=False) for _ in range(4)]
        try:
            applied = await asyncio.gather(*(s.migrate() for s in stores))
            assert sorted(applied) == [0, 0, 0, len(load_migrations("postgres"))]
            versions = {await s.schema_version() for s in stores}
            assert versions == {max(v for v, _n, _s in load_migrations("postgres"))}
        finally:
            for s in stores:
                await s.close()
    finally:
        postgres.sql(f"DROP DATABASE {name} WITH (FORCE)")


def test_postgres_migrations_mirror_the_sqlite_ones() -> None:
    pg = [(v, n) for v, n, _s in load_migrations("postgres")]
    lite = [(v, n) for v, n, _s in load_migrations("sqlite")]
    assert pg == lite


async def test_a_nul_in_a_client_supplied_name_is_stored_not_fatal(pg_database: str) -> None:
    """PostgreSQL text cannot hold NUL; a name a client sent with one must not break a login."""
    store = await open_store(pg_database)
    try:
        assert await store.get_user("al\x00ice") is None
        rec = await store.record_failure("user", "al\x00ice", T0)
        assert rec.failures == 1
        await store.append_audit(
            AuditRecord(
                ts=T0, kind="auth", result="fail", user_name="al\x00ice", detail={"x": "\x00"}
            )
        )
        [event] = await store.query_audit()
        assert event.user_name == "al\ufffdice" and event.detail == {"x": "\x00"}
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://roamgate:PASSWORD@127.0.0.1:PORT/nosuchdb", 'database "nosuchdb" does'),
        ("postgresql://roamgate:hunter2-pw@127.0.0.1:PORT/postgres", "password authentication"),
        (
            "postgresql://roamgate:hunter2-pw@127.0.0.1:1/postgres",
            "cannot reach the database at postgresql://roamgate:***@127.0.0.1:1/postgres",
        ),
        ("postgresql://roamgate:hunter2-pw@127.0.0.1:99999/x", "the port must be a number"),
        ("postgresql://roamgate:hunter2-pw@127.0.0.1:5432", "names no database"),
        ("mysql://roamgate:hunter2-pw@127.0.0.1/x", "unsupported scheme 'mysql'"),
    ],
)
async def test_store_errors_say_what_is_wrong_and_never_show_the_password(
    postgres: PrivatePostgres, url: str, expected: str
) -> None:
    url = url.replace("PORT", str(postgres.port)).replace("PASSWORD", postgres.password)
    with pytest.raises(StoreError) as info:
        await open_store(url)
    assert expected in str(info.value)
    assert "hunter2" not in str(info.value) and postgres.password not in str(info.value)


async def test_an_operation_while_the_database_is_down_is_a_store_error() -> None:
    """The database stops under a running node: each operation fails closed, in our words."""
    server = PrivatePostgres().start()
    try:
        store = await open_store(server.url(server.create_database()))
        await store.add_user("dora", T0)
        server.stop()
        for _ in range(2):  # the pooled connection is dead, then no new one can be made
            with pytest.raises(StoreError) as info:
                await store.get_user("dora")
            assert server.password not in str(info.value)
            assert "127.0.0.1" in str(info.value)
        await store.close()
    finally:
        server.stop()
