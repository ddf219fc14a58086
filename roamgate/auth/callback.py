"""The callback verification state machine: events in, actions out, no I/O.

One machine per login that the policy holds for a callback. The asyncio side (roamgate.callback)
places the call it asks for, feeds back what the provider, the device or the user did, and
carries out the actions it returns.

Rules (every transition below keeps them; tests/auth/test_callback_machine.py checks them
against random event sequences):

1. The only endpoint ever called is the one the machine was built with: the user's registered
   endpoint, read from the store. No event carries an endpoint, so a client cannot name one.
2. At most one call is placed per machine (the first Start); a second Start is ignored.
3. CONFIRMED is reached only by a Confirmation whose secret matches the expected one (compared
   in constant time) while AWAITING_CONFIRMATION, or, on the approve channel only, by a
   RemoteApproval (the approve link's token was checked by the HTTP handler against the store).
4. A secret is used at most once: any Confirmation ends the waiting if it matches; a wrong one
   counts, and after max_attempts wrong ones the machine is FAILED. No later event leaves a
   final state (CONFIRMED, DENIED, EXPIRED, FAILED).
5. Every event carries `now`; once now >= deadline (started_at + timeout) the machine is EXPIRED,
   whatever the event was: a late right answer does not confirm.
6. Every final state is announced once, with one audit action callback_result naming channel
   and outcome; no action ever carries the secret.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

DEFAULT_TIMEOUT_SECONDS = 120.0
DEFAULT_MAX_ATTEMPTS = 3
# A typed answer longer than this is wrong without being hashed: every buffer has a cap.
MAX_SECRET_BYTES = 512

CHANNELS = ("webhook", "dialback", "approve")


class State(enum.Enum):
    IDLE = "idle"
    CALLING = "calling"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    CONFIRMED = "confirmed"
    DENIED = "denied"
    EXPIRED = "expired"
    FAILED = "failed"


FINAL = frozenset({State.CONFIRMED, State.DENIED, State.EXPIRED, State.FAILED})


# -- events
@dataclass(frozen=True)
class Start:
    now: float


@dataclass(frozen=True)
class ProviderAccepted:
    """The channel took the call: the provider answered 2xx, the device answered, the link left."""

    now: float


@dataclass(frozen=True)
class ProviderStatus:
    """The provider's (verified) status callback: 'delivered' or 'failed'."""

    now: float
    status: str


@dataclass(frozen=True)
class Confirmation:
    """A code the user typed, or a dial-back device's proof."""

    now: float
    secret: bytes


@dataclass(frozen=True)
class RemoteApproval:
    """The approve link was used with its valid token (checked against the store)."""

    now: float


@dataclass(frozen=True)
class Deny:
    now: float
    reason: str = "denied"


@dataclass(frozen=True)
class Tick:
    now: float


Event = Start | ProviderAccepted | ProviderStatus | Confirmation | RemoteApproval | Deny | Tick


# -- actions
@dataclass(frozen=True)
class PlaceCall:
    channel: str
    endpoint: str


@dataclass(frozen=True)
class Notify:
    """Tell the waiting client something (SSH round text, IMAP untagged OK)."""

    text: str


@dataclass(frozen=True)
class Audit:
    kind: str
    result: str
    channel: str
    outcome: str | None = None
    reason: str | None = None


Action = PlaceCall | Notify | Audit


def secret_digest(secret: bytes) -> bytes:
    """What the machine keeps of a secret: equal lengths make compare_digest constant-time."""
    return hashlib.sha256(b"roamgate-callback-v1\0" + secret).digest()


class CallbackMachine:
    """One login's callback, from IDLE to a final state."""

    def __init__(
        self,
        channel: str,
        endpoint: str,
        expected_digest: bytes | None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"unknown callback channel {channel!r}")
        if channel != "approve" and expected_digest is None:
            raise ValueError(f"the {channel} channel needs an expected secret")
        if timeout <= 0 or max_attempts < 1:
            raise ValueError("timeout and max_attempts must be positive")
        self.channel = channel
        self.endpoint = endpoint
        self._expected = expected_digest
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.state = State.IDLE
        self.deadline: float | None = None
        self.attempts = 0
        self.reason: str | None = None

    @property
    def done(self) -> bool:
        return self.state in FINAL

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; return what the caller must do now (rules 1-6 above)."""
        if self.state in FINAL:
            return []
        if self.state is State.IDLE:
            if isinstance(event, Start):
                self.state = State.CALLING
                self.deadline = event.now + self.timeout
                return [
                    Audit("callback_start", "ok", self.channel),
                    PlaceCall(self.channel, self.endpoint),
                ]
            if isinstance(event, Deny):
                return self._finish(State.DENIED, event.reason)
            return []  # nothing to wait for before the call: ignored
        assert self.deadline is not None
        if event.now >= self.deadline:
            return self._finish(State.EXPIRED, "timeout")
        if isinstance(event, ProviderAccepted) and self.state is State.CALLING:
            self.state = State.AWAITING_CONFIRMATION
            return [Notify(_WAITING_TEXT[self.channel])]
        if isinstance(event, ProviderStatus):
            if event.status == "failed":
                return self._finish(State.FAILED, "provider_failed")
            return []  # 'delivered' (or unknown news): keep waiting
        if isinstance(event, Deny):
            return self._finish(State.DENIED, event.reason)
        if isinstance(event, RemoteApproval):
            if self.channel == "approve" and self.state is State.AWAITING_CONFIRMATION:
                return self._finish(State.CONFIRMED, None)
            return []
        if isinstance(event, Confirmation) and self.state is State.AWAITING_CONFIRMATION:
            return self._confirm(event.secret)
        return []

    def _confirm(self, secret: bytes) -> list[Action]:
        if self._expected is None:
            return []  # approve: only RemoteApproval confirms
        # Over the cap is wrong unhashed; otherwise digests of equal length are compared.
        if len(secret) <= MAX_SECRET_BYTES and hmac.compare_digest(
            secret_digest(secret), self._expected
        ):
            self._expected = None  # rule 4: spent
            return self._finish(State.CONFIRMED, None)
        self.attempts += 1
        if self.attempts >= self.max_attempts:
            return self._finish(State.FAILED, "wrong_secret")
        return [Notify("That was not right; try again.")]

    def _finish(self, state: State, reason: str | None) -> list[Action]:
        self.state = state
        self.reason = reason
        self._expected = None
        result = "ok" if state is State.CONFIRMED else "fail"
        return [Audit("callback_result", result, self.channel, state.value, reason)]


_WAITING_TEXT = {
    "webhook": "A confirmation code is on its way to your registered phone.",
    "dialback": "roamgate is calling your registered device back.",
    "approve": "An approval link is on its way to your registered device.",
}
