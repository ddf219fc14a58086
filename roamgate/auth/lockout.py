"""Throttling policy: escalating locks per user and per source address, and a hard lock.

Pure code: the store keeps the counters (incremented atomically), this module decides what a
count means. NIST SP 800-63B 5.2.2 asks for no more than 100 consecutive failed attempts per
account; the user lock escalates well before that so guessing is slow long before it is
stopped, and a hard lock (cleared only by `roamgate user unlock`) comes before the 100th.

Rules:
1. Below `threshold` consecutive failures there is no lock.
2. At failure n >= threshold the lock lasts base * 2**(n - threshold) seconds, capped at max.
3. At `hard_after` consecutive failures (users only) the lock does not expire.
4. Attempts during a lock are refused without checking credentials and do not count, so an
   attacker cannot push a victim into the hard lock faster by hammering a locked account.
5. A user's count resets on a successful login; a source address's count is forgotten after
   `forget_after` seconds without failures (addresses are shared: hotels, carrier NAT).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class LockPolicy:
    """How failures on one key (a user, or a source network) turn into locks."""

    threshold: int
    base_seconds: float
    max_seconds: float
    hard_after: int | None = None
    forget_after: float | None = None


@dataclass(frozen=True)
class LockDecision:
    """What the failure count means now: no lock, a lock until a time, or a hard lock."""

    locked_until: float | None = None
    hard: bool = False

    @property
    def locked(self) -> bool:
        return self.hard or self.locked_until is not None


def after_failure(failures: int, now: float, policy: LockPolicy) -> LockDecision:
    """The lock to set after the failures-th consecutive failure (rules 1-3)."""
    if policy.hard_after is not None and failures >= policy.hard_after:
        return LockDecision(hard=True)
    if failures < policy.threshold:
        return LockDecision()
    exponent = min(failures - policy.threshold, 40)  # 2**40 s is past any cap; avoids huge ints
    duration = min(policy.base_seconds * (2**exponent), policy.max_seconds)
    return LockDecision(locked_until=now + duration)


def is_locked(locked_until: float | None, hard: bool, now: float) -> bool:
    return hard or (locked_until is not None and now < locked_until)


def source_key(address: str) -> str:
    """The throttling key of a client address: an IPv4 host, or an IPv6 /64.

    One IPv6 client usually owns a whole /64, so per-address counting would let it rotate
    through 2**64 addresses. IPv4-mapped IPv6 addresses count as the IPv4 address.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
