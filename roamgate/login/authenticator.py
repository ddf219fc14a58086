"""The login decision shared by every front door: locks, password, code, throttling, audit.

Order matters: locks are checked before anything is verified (a locked account reveals
nothing and burns no code), the password before the code (a wrong password leaves a good code
unused), and each attempt ends in exactly one audit event with the reason, which the peer
never sees: every failure looks the same from outside.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from roamgate.audit import Auditor
from roamgate.login.second_factor import SecondFactor
from roamgate.login.throttle import Throttle
from roamgate.login.verifiers import Outcome, PasswordVerifier
from roamgate.store.base import Store, UserRecord


@dataclass(frozen=True)
class LoginResult:
    """ok, or the internal reason (for audit and logs, never for the peer)."""

    ok: bool
    reason: str
    user: UserRecord | None = None
    factor: str | None = None
    temporary: bool = False  # the gateway could not decide (upstream down): try again later


class Authenticator:
    """Checks password + one-time code for a front door."""

    def __init__(
        self,
        store: Store,
        verifier: PasswordVerifier,
        second: SecondFactor,
        throttle: Throttle,
        auditor: Auditor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.second = second
        self.throttle = throttle
        self.auditor = auditor
        self.clock = clock

    async def login(
        self, username: str, password: str, code: str, *, source: str, door: str
    ) -> LoginResult:
        lock = await self.throttle.check(username, source)
        if lock is not None:
            return await self._refuse(
                username, source, door, f"{lock.scope}_locked", count=False, factor=None
            )
        user = await self.store.get_user(username)
        if user is None:
            return await self._refuse(username, source, door, "unknown_user", factor="password")
        if not user.enabled:
            return await self._refuse(username, source, door, "disabled", factor=None)
        outcome = await self.verifier.verify(user, password)
        if outcome is Outcome.UNAVAILABLE:
            # Not the user's fault: nothing is counted, the client is told to retry later.
            await self.auditor.record(
                "auth",
                "error",
                user=username,
                source=source,
                door=door,
                factor="password",
                reason="verifier_unavailable",
                detail={"verifier": self.verifier.name},
            )
            return LoginResult(False, "verifier_unavailable", user, "password", temporary=True)
        if outcome is Outcome.REJECTED:
            return await self._refuse(username, source, door, "bad_password", factor="password")
        checked = await self.second.verify(user, code)
        if not checked.ok:
            detail: dict[str, str | int | None] = {"token_id": checked.token_id}
            if checked.drift_steps is not None:
                detail["drift_steps"] = checked.drift_steps
            return await self._refuse(
                username,
                source,
                door,
                f"bad_code:{checked.reason}",
                factor=checked.factor or "otp",
                detail=detail,
            )
        await self.throttle.success(user.name)
        await self.auditor.record(
            "auth",
            "ok",
            user=username,
            source=source,
            door=door,
            factor=f"password+{checked.factor}",
            detail={"token_id": checked.token_id, "verifier": self.verifier.name},
        )
        return LoginResult(True, "ok", user, checked.factor)

    async def _refuse(
        self,
        username: str,
        source: str,
        door: str,
        reason: str,
        *,
        factor: str | None,
        count: bool = True,
        detail: dict[str, str | int | None] | None = None,
    ) -> LoginResult:
        await self.auditor.record(
            "auth",
            "fail",
            user=username,
            source=source,
            door=door,
            factor=factor,
            reason=reason,
            detail=detail,
        )
        if count:
            known = reason != "unknown_user"
            # Unknown names are counted only against the source, so an attacker cannot
            # fill the store with counters for made-up names.
            await self.throttle.failure(username if known else None, source, door)
        return LoginResult(False, reason, factor=factor)
