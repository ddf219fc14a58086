"""The lockout policy: escalation, cap, hard lock, source keys."""

from __future__ import annotations

import pytest

from roamgate.auth.lockout import LockPolicy, after_failure, is_locked, source_key

USER = LockPolicy(threshold=10, base_seconds=60, max_seconds=3600, hard_after=99)


def test_no_lock_below_threshold() -> None:
    for n in range(1, 10):
        assert not after_failure(n, 0.0, USER).locked


def test_escalation_doubles_to_the_cap() -> None:
    durations = [after_failure(n, 1000.0, USER).locked_until for n in range(10, 18)]
    assert [d - 1000.0 for d in durations if d is not None] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]


def test_hard_lock_before_one_hundred_failures() -> None:
    assert not after_failure(98, 0.0, USER).hard
    decision = after_failure(99, 0.0, USER)
    assert decision.hard and decision.locked and decision.locked_until is None
    assert is_locked(None, True, 10**12)


def test_is_locked_expires() -> None:
    assert is_locked(100.0, False, 99.9)
    assert not is_locked(100.0, False, 100.0)
    assert not is_locked(None, False, 0.0)


def test_huge_failure_counts_do_not_overflow() -> None:
    policy = LockPolicy(threshold=1, base_seconds=60, max_seconds=600)
    assert after_failure(10**6, 0.0, policy).locked_until == 600


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_source_keys(address: str, key: str) -> None:
    assert source_key(address) == key
