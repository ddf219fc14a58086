"""One-time passwords: TOTP (RFC 6238) and HOTP (RFC 4226) checks with windows and replay state.

Pure code: the caller passes the current time and the token's stored state, and gets back a
verdict plus the new state to store with a compare-and-set. pyotp computes the codes; this
module owns the policy pyotp leaves out (replay protection, HOTP look-ahead, resynchronisation,
clock-drift diagnosis).

Rules:
1. A TOTP code is accepted for a time step s only if s > last_step (the last accepted step), so
   a code works once and a code older than an accepted one never works.
2. The acceptance window is now_step - window .. now_step + window.
3. An HOTP code is accepted for counter c only if next_counter <= c <= next_counter + look_ahead;
   the new next_counter is c + 1.
4. Outside the window nothing is accepted; a wider search only explains the failure (drift).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import pyotp

Algorithm = Literal["sha1", "sha256", "sha512"]
_DIGESTS: dict[str, Callable[..., Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}


class Verdict(Enum):
    """Why a code was or was not accepted."""

    OK = "ok"
    WRONG = "wrong"
    REPLAY = "replay"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class TotpParams:
    """A TOTP token's fixed parameters."""

    secret: str  # base32
    digits: int = 6
    period: int = 30
    algorithm: Algorithm = "sha1"


@dataclass(frozen=True)
class HotpParams:
    """An HOTP token's fixed parameters."""

    secret: str  # base32
    digits: int = 6
    algorithm: Algorithm = "sha1"


@dataclass(frozen=True)
class OtpCheck:
    """The outcome of checking one code against one token.

    new_state is what to compare-and-set into the store when verdict is OK: the accepted TOTP
    step, or the next HOTP counter. drift_steps is set when a wider search found the code at
    another time step (TOTP) or counter distance (HOTP): a hint for the help desk, never an
    acceptance.
    """

    verdict: Verdict
    new_state: int | None = None
    matched: int | None = None
    drift_steps: int | None = None


def normalize_code(code: str) -> str | None:
    """Strip the spaces and dashes people type; None if what remains is not all digits."""
    cleaned = code.replace(" ", "").replace("-", "")
    if not cleaned.isascii() or not cleaned.isdigit():
        return None
    return cleaned


def totp_code(p: TotpParams, step: int) -> str:
    """The code for one time step (RFC 6238: T = floor(unix_time / period))."""
    return _hotp(p.secret, p.digits, p.algorithm).at(step)


def hotp_code(p: HotpParams, counter: int) -> str:
    return _hotp(p.secret, p.digits, p.algorithm).at(counter)


def time_step(now: float, period: int) -> int:
    return int(now // period)


def check_totp(
    p: TotpParams,
    code: str,
    now: float,
    last_step: int | None,
    *,
    window: int = 1,
    drift_search: int = 0,
) -> OtpCheck:
    """Check a TOTP code at time now, given the last step accepted for this token (rule 1, 2)."""
    cleaned = normalize_code(code)
    if cleaned is None or len(cleaned) != p.digits:
        return OtpCheck(Verdict.MALFORMED)
    now_step = time_step(now, p.period)
    # Nearest steps first, so a code valid at now_step wins over one valid at now_step - 1.
    for offset in sorted(range(-window, window + 1), key=abs):
        step = now_step + offset
        if step < 0 or not _equal(totp_code(p, step), cleaned):
            continue
        if last_step is not None and step <= last_step:
            return OtpCheck(Verdict.REPLAY, matched=step, drift_steps=offset)
        return OtpCheck(Verdict.OK, new_state=step, matched=step, drift_steps=offset)
    for distance in range(window + 1, drift_search + 1):
        for offset in (distance, -distance):
            step = now_step + offset
            if step >= 0 and _equal(totp_code(p, step), cleaned):
                if last_step is not None and step <= last_step:
                    return OtpCheck(Verdict.REPLAY, matched=step, drift_steps=offset)
                return OtpCheck(Verdict.WRONG, matched=step, drift_steps=offset)
    return OtpCheck(Verdict.WRONG)


def check_hotp(
    p: HotpParams,
    code: str,
    next_counter: int,
    *,
    look_ahead: int = 10,
    replay_search: int = 20,
) -> OtpCheck:
    """Check an HOTP code against counters next_counter .. next_counter + look_ahead (rule 3).

    A code matching one of the replay_search counters just below next_counter was used before.
    """
    cleaned = normalize_code(code)
    if cleaned is None or len(cleaned) != p.digits:
        return OtpCheck(Verdict.MALFORMED)
    for counter in range(next_counter, next_counter + look_ahead + 1):
        if _equal(hotp_code(p, counter), cleaned):
            return OtpCheck(
                Verdict.OK,
                new_state=counter + 1,
                matched=counter,
                drift_steps=counter - next_counter,
            )
    for counter in range(next_counter - 1, max(-1, next_counter - 1 - replay_search), -1):
        if _equal(hotp_code(p, counter), cleaned):
            return OtpCheck(Verdict.REPLAY, matched=counter, drift_steps=counter - next_counter)
    return OtpCheck(Verdict.WRONG)


def resync_hotp(
    p: HotpParams, first: str, second: str, next_counter: int, *, search: int = 200
) -> OtpCheck:
    """Find two consecutive codes within next_counter .. next_counter + search (RFC 4226 E.4).

    A token pressed many times away from the gateway drifts beyond the look-ahead; two
    consecutive codes prove possession, where one in a wide window would be guessable.
    """
    a, b = normalize_code(first), normalize_code(second)
    if a is None or b is None or len(a) != p.digits or len(b) != p.digits:
        return OtpCheck(Verdict.MALFORMED)
    for counter in range(next_counter, next_counter + search + 1):
        if _equal(hotp_code(p, counter), a) and _equal(hotp_code(p, counter + 1), b):
            return OtpCheck(
                Verdict.OK,
                new_state=counter + 2,
                matched=counter + 1,
                drift_steps=counter - next_counter,
            )
    return OtpCheck(Verdict.WRONG)


def new_secret() -> str:
    """A fresh 160-bit base32 secret (RFC 4226 recommends at least 128, 160 is the norm)."""
    return pyotp.random_base32(32)


def totp_uri(p: TotpParams, account: str, issuer: str) -> str:
    return str(
        pyotp.TOTP(
            p.secret, digits=p.digits, interval=p.period, digest=_DIGESTS[p.algorithm]
        ).provisioning_uri(name=account, issuer_name=issuer)
    )


def hotp_uri(p: HotpParams, account: str, issuer: str, counter: int) -> str:
    return str(
        pyotp.HOTP(p.secret, digits=p.digits, digest=_DIGESTS[p.algorithm]).provisioning_uri(
            name=account, issuer_name=issuer, initial_count=counter
        )
    )


def _hotp(secret: str, digits: int, algorithm: Algorithm) -> pyotp.HOTP:
    return pyotp.HOTP(secret, digits=digits, digest=_DIGESTS[algorithm])


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
