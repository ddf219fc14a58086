"""Applies the lockout policy (roamgate.auth.lockout) to the counters kept in the store."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from roamgate.audit import Auditor
from roamgate.auth.lockout import LockPolicy, after_failure, is_locked, source_key
from roamgate.config import Lockout
from roamgate.store.base import Store, ThrottleRecord, ThrottleScope


@dataclass(frozen=True)
class LockState:
    """Why an attempt is refused before any credential is checked."""

    scope: ThrottleScope
    key: str
    until: float | None
    hard: bool
    failures: int


class Throttle:
    """Per-user and per-source failure counting with escalating locks; every lock is audited."""

    def __init__(
        self,
        store: Store,
        auditor: Auditor,
        settings: Lockout,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.auditor = auditor
        self.clock = clock
        # Told the user's name at each failure counted against them (the password cache
        # forgets them); must not block or raise.
        self.user_failure_listeners: list[Callable[[str], None]] = []
        self.apply(settings)

    def apply(self, settings: Lockout) -> None:
        """Take (new) thresholds and lock times; counts already in the store stay."""
        self.user_policy = LockPolicy(
            threshold=settings.user_threshold,
            base_seconds=settings.user_lock_seconds,
            max_seconds=settings.user_lock_max_seconds,
            hard_after=settings.hard_lock_after,
        )
        self.source_policy = LockPolicy(
            threshold=settings.ip_threshold,
            base_seconds=settings.ip_lock_seconds,
            max_seconds=settings.ip_lock_max_seconds,
            forget_after=settings.ip_forget_seconds,
        )

    async def check(self, user: str | None, source: str | None) -> LockState | None:
        """The lock that refuses this attempt, if any (source first: it covers every user)."""
        return (await self.admit(user, source))[0]

    async def admit(self, user: str | None, source: str | None) -> tuple[LockState | None, bool]:
        """check(), and whether the user has failures on record (a success must clear them)."""
        now = self.clock()
        # One store read for both (a login's first question, asked at every login).
        by_user, by_source = await self.store.get_login_throttles(
            user, source_key(source) if source is not None else None
        )
        on_record = by_user is not None
        for rec in (by_source, by_user):
            if rec is not None and is_locked(rec.locked_until, rec.hard_locked, now):
                return _state(rec), on_record
        return None, on_record

    async def failure(self, user: str | None, source: str | None, door: str | None) -> None:
        """Count a failed attempt against the user (if they exist) and the source network."""
        now = self.clock()
        if user is not None:
            for listener in self.user_failure_listeners:
                listener(user)
            rec = await self.store.record_failure("user", user, now)
            await self._maybe_lock(rec, self.user_policy, now, user, source, door)
        if source is not None:
            policy = self.source_policy
            forget = now - policy.forget_after if policy.forget_after is not None else None
            rec = await self.store.record_failure(
                "source", source_key(source), now, forget_before=forget
            )
            await self._maybe_lock(rec, policy, now, user, source, door)

    async def success(self, user: str) -> None:
        """A good login ends the user's run of failures (rule 5); the source keeps its count."""
        await self.store.clear_throttle("user", user)

    async def unlock(self, scope: ThrottleScope, key: str, actor: str) -> bool:
        cleared = await self.store.clear_throttle(
            scope, key if scope == "user" else source_key(key)
        )
        await self.auditor.record(
            "unlock",
            "ok" if cleared else "noop",
            user=key if scope == "user" else None,
            source=key if scope == "source" else None,
            actor=actor,
            reason=None if cleared else "not locked",
        )
        return cleared

    async def _maybe_lock(
        self,
        rec: ThrottleRecord,
        policy: LockPolicy,
        now: float,
        user: str | None,
        source: str | None,
        door: str | None,
    ) -> None:
        decision = after_failure(rec.failures, now, policy)
        if not decision.locked:
            return
        await self.store.set_lock(rec.scope, rec.key, decision.locked_until, decision.hard)
        seconds = None if decision.locked_until is None else round(decision.locked_until - now)
        await self.auditor.record(
            "lock",
            "hard" if decision.hard else "timed",
            user=user if rec.scope == "user" else None,
            source=source,
            door=door,
            reason=f"{rec.failures} consecutive failures",
            detail={"scope": rec.scope, "key": rec.key, "seconds": seconds},
        )


def _state(rec: ThrottleRecord) -> LockState:
    return LockState(rec.scope, rec.key, rec.locked_until, rec.hard_locked, rec.failures)
