"""The login decision shared by every front door: locks, password, code, travel window, audit.

Order matters: locks are checked before anything is verified (a locked account reveals
nothing and burns no code), the password before the code is used up (a wrong password leaves a
good code usable), and each attempt ends in exactly one audit event with the reason, which the
peer never sees: every failure looks the same from outside.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from roamgate.audit import Auditor, AuditUnavailable
from roamgate.auth.credentials import split_candidates
from roamgate.login.password_cache import last_lookup, reset_lookup
from roamgate.login.second_factor import FactorResult, SecondFactor
from roamgate.login.throttle import Throttle
from roamgate.login.verifiers import Outcome, PasswordVerifier, refusal_reason
from roamgate.store.base import JsonValue, Store, TokenRecord, TravelWindow, UserRecord

log = logging.getLogger("roamgate.login")


@dataclass(frozen=True)
class LoginResult:
    """ok, or the internal reason (for audit and logs, never for the peer)."""

    ok: bool
    reason: str
    user: UserRecord | None = None
    factor: str | None = None
    temporary: bool = False  # the gateway could not decide (upstream down): try again later
    window: TravelWindow | None = None
    # Admission only: the user had failures on record, which a success must clear.
    user_failures: bool = True


class LoginHold(Protocol):
    """A last step that may hold or refuse a login whose factors were good (e.g. a callback).

    Returns None to let the login through, or a reason to refuse it.
    """

    async def __call__(self, user: UserRecord, source: str, door: str) -> str | None: ...


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
        *,
        travel_window_seconds: int = 0,
        holds: Sequence[LoginHold] = (),
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.second = second
        self.throttle = throttle
        self.auditor = auditor
        self.clock = clock
        self.travel_window_seconds = travel_window_seconds
        self.holds = list(holds)

    async def login(
        self,
        username: str,
        password: str,
        code: str,
        *,
        source: str,
        door: str,
        verifier: PasswordVerifier | None = None,
        device: str | None = None,
    ) -> LoginResult:
        """Password and code given apart (SSH asks for each; the CLI and tests too).

        With a device, a success opens (or renews) its travel window.
        """
        user, admission = await self._admit(username, source, door)
        if user is None:
            return admission
        outcome = await (verifier or self.verifier).verify(user, password)
        if outcome is not Outcome.ACCEPTED:
            return await self._password_failed(user, source, door, outcome)
        return await self._second_factor(
            user, code, source, door, device=device, clear=admission.user_failures
        )

    async def login_with_key(
        self, username: str, fingerprint: str, code: str, *, source: str, door: str
    ) -> LoginResult:
        """An SSH key the user registered stands in for the password; the code is still needed.

        The caller has verified that the client holds the key (its signature); this checks
        that the key is the user's. No travel window is opened or used: a key never replaces
        the second factor.
        """
        user, admission = await self._admit(username, source, door)
        if user is None:
            return admission
        keys = {k.fingerprint for k in await self.store.list_ssh_keys(user.id)}
        if fingerprint not in keys:
            return await self._refuse(user.name, source, door, "key_not_authorized", factor="key")
        return await self._second_factor(
            user,
            code,
            source,
            door,
            device=None,
            first="key",
            extra={"key": fingerprint},
            clear=admission.user_failures,
        )

    async def find_window(self, username: str, devices: Sequence[str]) -> TravelWindow | None:
        """The travel window in force for one of these devices of the user, if any."""
        if self.travel_window_seconds <= 0:
            return None
        now = self.clock()
        for device in devices:
            window = await self.store.find_travel_window(username, device, now)
            if window is not None:
                return window
        return None

    async def login_in_window(
        self,
        username: str,
        password: str,
        window: TravelWindow,
        *,
        source: str,
        door: str,
        verifier: PasswordVerifier | None = None,
    ) -> LoginResult:
        """The password alone, from a device whose travel window (found by the caller) holds."""
        user, admission = await self._admit(username, source, door)
        if user is None:
            return admission
        current = await self.store.find_travel_window(user.name, window.device, self.clock())
        if current is None or current.id != window.id:
            # Revoked or expired between the prompt and the answer.
            return await self._refuse(user.name, source, door, "window_ended", factor="window")
        outcome = await (verifier or self.verifier).verify(user, password)
        if outcome is not Outcome.ACCEPTED:
            return await self._password_failed(user, source, door, outcome)
        return await self._admitted(
            user,
            source,
            door,
            "window",
            window=current,
            detail={"window_id": current.id},
            clear=admission.user_failures,
        )

    async def login_tunnelled(
        self,
        username: str,
        password: str,
        *,
        tunnel_user: str,
        source: str,
        door: str,
        verifier: PasswordVerifier | None = None,
    ) -> LoginResult:
        """A login inside an SSH tunnel whose own login proved both factors for tunnel_user.

        Only tunnel_user may log in, with the password alone; a client that still sends
        password+code out of habit is let in too.
        """
        if username != tunnel_user:
            return await self._refuse(
                username, source, door, "tunnel_user_mismatch", factor=None, count=False
            )
        user, admission = await self._admit(username, source, door)
        if user is None:
            return admission
        check = verifier or self.verifier
        tries = [password]
        tries += [p for p, _c in split_candidates(password, await self.second.code_lengths(user))]
        outcome = Outcome.REJECTED
        for candidate in dict.fromkeys(tries):
            outcome = await check.verify(user, candidate)
            if outcome is not Outcome.REJECTED:
                break
        if outcome is not Outcome.ACCEPTED:
            return await self._password_failed(user, source, door, outcome)
        return await self._admitted(
            user, source, door, "ssh", None, {}, clear=admission.user_failures
        )

    async def login_combined(
        self,
        username: str,
        combined: str,
        *,
        source: str,
        door: str,
        device: str,
        verifier: PasswordVerifier | None = None,
    ) -> LoginResult:
        """One field carrying the password followed by the code, as mail clients send it.

        Within a travel window for this device the password alone is enough, and a client
        re-sending the password with the code it saved earlier is let in too.
        """
        user, admission = await self._admit(username, source, door)
        if user is None:
            return admission
        check = verifier or self.verifier
        window = None
        if self.travel_window_seconds > 0:
            window = await self.store.find_travel_window(user.name, device, self.clock())
        # Read once for the split, the peek and the check (one store read, not three).
        tokens = await self.second.tokens(user)
        candidates = split_candidates(combined, await self.second.code_lengths(user, tokens))
        # Prefer the split whose suffix is a code the user can use right now.
        chosen: tuple[str, str] | None = None
        for password, code in candidates:
            if (await self.second.peek(user, code, tokens)).ok:
                chosen = (password, code)
                break
        if window is not None and chosen is None:
            # The stale-code form first: that is what a client that saved its password sends.
            tries = [p for p, _c in candidates[-1:]] + [combined]
            outcome = Outcome.REJECTED
            for password in dict.fromkeys(tries):
                outcome = await check.verify(user, password)
                if outcome is not Outcome.REJECTED:
                    break
            if outcome is not Outcome.ACCEPTED:
                return await self._password_failed(user, source, door, outcome)
            return await self._admitted(
                user,
                source,
                door,
                "window",
                window=window,
                detail={"window_id": window.id},
                clear=admission.user_failures,
            )
        if chosen is None:
            # No usable code in sight; still check the password, so that the time taken and
            # the audit trail do not depend on which factor was wrong.
            chosen = candidates[-1] if candidates else (combined, "")
        password, code = chosen
        outcome = await check.verify(user, password)
        if outcome is not Outcome.ACCEPTED:
            return await self._password_failed(user, source, door, outcome)
        return await self._second_factor(
            user,
            code,
            source,
            door,
            device=device,
            tokens=tokens,
            clear=admission.user_failures,
        )

    # -- steps
    async def _admit(
        self, username: str, source: str, door: str
    ) -> tuple[UserRecord | None, LoginResult]:
        reset_lookup()
        lock, user_failures = await self.throttle.admit(username, source)
        if lock is not None:
            refused = await self._refuse(
                username, source, door, f"{lock.scope}_locked", count=False, factor=None
            )
            return None, refused
        user = await self.store.get_user(username)
        if user is None:
            return None, await self._refuse(
                username, source, door, "unknown_user", factor="password"
            )
        if not user.enabled:
            return None, await self._refuse(username, source, door, "disabled", factor=None)
        return user, LoginResult(True, "admitted", user, user_failures=user_failures)

    async def _password_failed(
        self, user: UserRecord, source: str, door: str, outcome: Outcome
    ) -> LoginResult:
        why = refusal_reason.get()
        refusal_reason.set(None)
        if outcome is Outcome.UNAVAILABLE:
            # Not the user's fault: nothing is counted, the client is told to retry later.
            await self.auditor.record(
                "auth",
                "error",
                user=user.name,
                source=source,
                door=door,
                factor="password",
                reason="verifier_unavailable",
                detail={"verifier": self.verifier.name, **({"cause": why} if why else {})},
            )
            return LoginResult(False, "verifier_unavailable", user, "password", temporary=True)
        return await self._refuse(user.name, source, door, why or "bad_password", factor="password")

    async def _second_factor(
        self,
        user: UserRecord,
        code: str,
        source: str,
        door: str,
        *,
        device: str | None,
        first: str = "password",
        extra: dict[str, JsonValue] | None = None,
        tokens: list[TokenRecord] | None = None,
        clear: bool = True,
    ) -> LoginResult:
        checked: FactorResult = await self.second.verify(user, code, tokens)
        if not checked.ok:
            detail: dict[str, JsonValue] = {"token_id": checked.token_id}
            if checked.drift_steps is not None:
                detail["drift_steps"] = checked.drift_steps
            return await self._refuse(
                user.name,
                source,
                door,
                f"bad_code:{checked.reason}",
                factor=checked.factor or "otp",
                detail={**detail, **(extra or {})},
            )
        window = None
        detail = {"token_id": checked.token_id, **(extra or {})}
        if device is not None and self.travel_window_seconds > 0:
            now = self.clock()
            window = await self.store.open_travel_window(
                "win_" + secrets.token_hex(6),
                user.name,
                device,
                door,
                now,
                now + self.travel_window_seconds,
            )
            detail["window_id"] = window.id
        return await self._admitted(
            user, source, door, checked.factor or "otp", window, detail, first=first, clear=clear
        )

    async def _admitted(
        self,
        user: UserRecord,
        source: str,
        door: str,
        factor: str,
        window: TravelWindow | None,
        detail: dict[str, JsonValue],
        *,
        first: str = "password",
        clear: bool = True,
    ) -> LoginResult:
        # A login inside an SSH tunnel ("ssh") was held, if at all, when the tunnel logged in.
        for hold in self.holds if factor != "ssh" else ():
            reason = await hold(user, source, door)
            if reason is not None:
                return await self._refuse(
                    user.name, source, door, reason, factor="hold", count=False
                )
        if clear:
            # Rule 5 of roamgate.auth.lockout. With no failure on record when this login was
            # admitted there is nothing to clear: a store write saved. A failure made meanwhile
            # (another node) then stays counted, which is the stricter order of the two.
            await self.throttle.success(user.name)
        detail["verifier"] = self.verifier.name
        cached = last_lookup()
        if cached is not None:
            # Whether this login paid scrypt or was accepted from the verified-password cache.
            detail["password_cache"] = cached
        try:
            await self.auditor.record(
                "auth",
                "ok",
                user=user.name,
                source=source,
                door=door,
                factor=f"{first}+{factor}",
                detail=detail,
                required=True,
            )
        except AuditUnavailable:
            # Fail closed: nobody gets in while the trail cannot say so. Not the user's
            # fault, so nothing is counted; the client is told to try again later.
            log.error("login of %s refused: the audit trail cannot be written", user.name)
            await self.auditor.record(
                "auth",
                "error",
                user=user.name,
                source=source,
                door=door,
                factor=f"{first}+{factor}",
                reason="audit_unavailable",
            )
            return LoginResult(False, "audit_unavailable", user, factor, temporary=True)
        return LoginResult(True, "ok", user, factor, window=window)

    async def _refuse(
        self,
        username: str,
        source: str,
        door: str,
        reason: str,
        *,
        factor: str | None,
        count: bool = True,
        detail: dict[str, JsonValue] | None = None,
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
