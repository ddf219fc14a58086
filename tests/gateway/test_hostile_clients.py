"""Hostile clients against a real gateway: each attack is survived and a real user logs in meanwhile.

The attacks are bench/hostile_clients.py's (the bench prints the login times; these tests only
assert that the gateway survives and the legitimate session succeeds, with generous timeouts).
Attackers connect from 127.0.0.2, the legitimate user from 127.0.0.1, and the per-source lock is
at its default (20 failures), as in production.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from bench.hostile_clients import (
    Target,
    auth_flood,
    bad_bytes,
    deep_nesting,
    endless_literal,
    legitimate_session,
    oversized_id,
    pipelined,
    slowloris,
    under_attack,
)
from roamgate.demo.dovecot import PrivateDovecot
from tests.gateway.conftest import PASSWORDS, Gateway, running_gateway

GRACE = 10  # login_grace_seconds: the smallest the config allows


@pytest.fixture(scope="module")
def hostile(dovecot: PrivateDovecot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(
        dovecot,
        tmp_path_factory.mktemp("hostile") / "gw",
        users={"bob": PASSWORDS["bob"]},
        proxy_settings={"login_grace_seconds": GRACE},
        replace={"ip_threshold: 10000": "ip_threshold: 20", "level: debug": "level: info"},
    ) as gw:
        yield gw


def _survives(
    gw: Gateway, attack: Callable[[Target], None], warmup: float = 1.0, *, to_the_end: bool = False
) -> Target:
    target = Target(gw.imaps_port, gw.context())
    with under_attack(target, attack, warmup, to_the_end=to_the_end):
        secret = PASSWORDS["bob"] + gw.code("bob")
        assert legitimate_session(gw.imaps_port, gw.context(), "bob", secret) < 60
    assert gw.process.poll() is None, "the gateway died"
    assert "Traceback" not in gw.logs()
    return target


def test_slowloris_is_cut_at_the_login_grace_time(hostile: Gateway) -> None:
    target = _survives(hostile, lambda t: slowloris(t, interval=2.0), to_the_end=True)
    seen = target.notes["slowloris"]
    assert isinstance(seen, dict)
    # Bytes trickling in do not extend the grace time: the connection ends at it.
    assert seen["closed_by_gateway"], seen
    assert GRACE - 1 <= float(seen["seconds"]) <= GRACE + 15, seen
    assert b"* BYE Login grace time exceeded." in bytes(seen["last"]), seen


def test_a_never_ending_literal_is_refused_and_the_connection_closed(hostile: Gateway) -> None:
    target = _survives(hostile, endless_literal, warmup=2.0, to_the_end=True)
    seen = target.notes["endless_literal"]
    assert isinstance(seen, dict)
    assert float(seen["seconds"]) <= GRACE + 20, seen
    assert b"* BYE" in bytes(seen["reply"]), seen
    # Far from the 2 GB announced: the gateway stopped reading.
    assert int(seen["bytes_sent"]) < 200_000_000, seen


def test_ten_thousand_pipelined_commands_are_all_answered(hostile: Gateway) -> None:
    target = _survives(hostile, pipelined)
    assert target.notes["pipelined"] == {"answered": 10_000, "sent": 10_000}


def test_deep_nesting_gets_bad_and_the_connection_goes_on(hostile: Gateway) -> None:
    target = _survives(hostile, deep_nesting)
    replies = target.notes["deep_nesting"]
    assert isinstance(replies, list)
    first, second = replies
    assert first.startswith(b"N1 BAD") or first.startswith(b"* BAD"), first
    assert second == b"N2 OK NOOP completed.\r\n"


def test_invalid_utf8_and_nul_bytes_get_bad_and_the_connection_goes_on(hostile: Gateway) -> None:
    target = _survives(hostile, bad_bytes)
    replies = target.notes["bad_bytes"]
    assert isinstance(replies, list)
    assert all(b"BAD" in r for r in replies[:-1]), replies
    assert replies[-1] == b"U5 OK NOOP completed.\r\n"


def test_an_oversized_id_is_refused_and_the_connection_goes_on(hostile: Gateway) -> None:
    target = _survives(hostile, oversized_id)
    replies = target.notes["oversized_id"]
    assert isinstance(replies, list)
    first, second, third = replies
    assert first == b"I1 BAD Invalid ID parameters.\r\n", first
    assert second == b"I2 BAD Invalid ID parameters.\r\n", second
    assert third == b"I3 OK NOOP completed.\r\n"


def test_an_authentication_flood_from_many_ports_spares_the_legitimate_user(
    hostile: Gateway,
) -> None:
    target = _survives(hostile, auth_flood, warmup=3.0)
    replies = target.notes["auth_flood"]
    assert isinstance(replies, list) and replies
    assert not any(b"OK" in r.split(b" ", 2)[1:2][0] for r in replies if r.count(b" ") >= 2)
    # The flood's source was locked or capped; the legitimate source was not.
    audit = hostile.audit()
    assert any(
        e["kind"] == "connection_refused" or str(e.get("reason", "")).startswith("source_locked")
        for e in audit
        if e.get("source") == "127.0.0.2"
    )
    assert any(e["kind"] == "auth" and e["result"] == "ok" and e["user"] == "bob" for e in audit)
