"""Which stream a carrier serves: a fresh nonce from the gateway, then OPEN or RESUME with a proof.

The gateway speaks first on every carrier: CHALLENGE with a nonce it has never used. The
connector answers OPEN (sent without waiting for the challenge, which it does not need: a new stream: the gateway answers OPENED with the stream's id and its
resume secret) or RESUME (id, the nonce answered, HMAC-SHA256 keyed by the secret over the id and
that nonce, and the bytes the connector has received). One answer per carrier: the nonce is used
up by it, so a recorded RESUME replayed on a later carrier names a stale nonce and is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from roamgate.resume.endpoint import Endpoint, StreamError
from roamgate.resume.frames import (
    NONCE_BYTES,
    SECRET_BYTES,
    STREAM_ID_BYTES,
    Ack,
    Challenge,
    Close,
    Data,
    Frame,
    FrameDecoder,
    FrameError,
    Open,
    Opened,
    Refused,
    Resume,
    Resumed,
    encode,
)

_PROOF_LABEL = b"roamgate-resume-v1\x00"
# The connector is told only this; the audit trail has the exact reason.
REFUSED = "refused"


def proof(secret: bytes, stream_id: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, _PROOF_LABEL + stream_id + nonce, hashlib.sha256).digest()


# -- what a carrier reports to its shell
@dataclass(frozen=True)
class OpenRequested:
    pass


@dataclass(frozen=True)
class ResumeRequested:
    request: Resume


@dataclass(frozen=True)
class StreamOpened:
    stream_id: bytes


@dataclass(frozen=True)
class StreamResumed:
    resent: int  # bytes this end sends again


@dataclass(frozen=True)
class StreamRefused:
    reason: str


CarrierEvent = OpenRequested | ResumeRequested | StreamOpened | StreamResumed | StreamRefused


def _frames(decoder: FrameDecoder, data: bytes) -> list[Frame]:
    try:
        return decoder.feed(data)
    except FrameError as exc:
        raise StreamError(str(exc)) from None


class ServerCarrier:
    """The gateway's side of one carrier: its challenge, one answer, then the stream bound to it."""

    def __init__(self, nonce: bytes) -> None:
        assert len(nonce) == NONCE_BYTES
        self.nonce = nonce
        self.endpoint: Endpoint | None = None
        self._decoder = FrameDecoder()
        self._out = bytearray(encode(Challenge(nonce)))
        self._answered = False  # the nonce is used up
        self.refused = False

    def receive_data(self, data: bytes) -> list[CarrierEvent]:
        events: list[CarrierEvent] = []
        for frame in _frames(self._decoder, data):
            if self.refused:
                continue  # the shell drops the carrier; nothing more counts
            if self.endpoint is not None:
                self.endpoint.receive_frame(frame)
                continue
            if self._answered:
                # A second answer on one carrier (or data before the stream was bound).
                raise StreamError("a second answer to one challenge")
            self._answered = True
            if isinstance(frame, Open):
                events.append(OpenRequested())
            elif isinstance(frame, Resume):
                events.append(ResumeRequested(frame))
            else:
                raise StreamError(f"{type(frame).__name__} before OPEN or RESUME")
        return events

    def accept_open(self, endpoint: Endpoint, stream_id: bytes, secret: bytes) -> None:
        self._out += encode(Opened(stream_id, secret))
        endpoint.attach(0)
        self.endpoint = endpoint

    def accept_resume(self, endpoint: Endpoint, peer_received: int) -> int:
        """Binds the stream; returns the bytes sent again. StreamError: an impossible offset."""
        received = endpoint.received
        resent = endpoint.attach(peer_received)
        self._out += encode(Resumed(received))
        self.endpoint = endpoint
        return resent

    def refuse(self, reason: str = REFUSED) -> None:
        self._out += encode(Refused(reason))
        self.refused = True

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        if self.endpoint is not None and not self.refused:
            out += self.endpoint.data_to_send()
        return out


class _State(Enum):
    DOWN = "down"
    CHALLENGE = "challenge"
    OPENING = "opening"
    RESUMING = "resuming"
    UP = "up"
    REFUSED = "refused"


class ClientStream:
    """The connector's side of one stream: opened on its first carrier, resumed on the next ones."""

    def __init__(self, cap: int) -> None:
        self.endpoint = Endpoint(cap)
        self.stream_id: bytes | None = None
        self._secret: bytes | None = None
        self._decoder: FrameDecoder | None = None
        self._out = bytearray()
        self._state = _State.DOWN
        self._challenged = False

    @property
    def up(self) -> bool:
        return self._state is _State.UP

    @property
    def refused(self) -> bool:
        return self._state is _State.REFUSED

    def carrier_up(self) -> None:
        assert self._state is not _State.REFUSED
        self._decoder = FrameDecoder()
        self._out.clear()
        self._challenged = False
        self._state = _State.CHALLENGE
        if self.stream_id is None:
            # OPEN needs no nonce: sent at once, it saves the slow line a round trip.
            self._out += encode(Open())
            self._state = _State.OPENING

    def carrier_down(self) -> None:
        self.endpoint.detach()
        self._decoder = None
        self._out.clear()
        if self._state is not _State.REFUSED:
            self._state = _State.DOWN

    def receive_data(self, data: bytes) -> list[CarrierEvent]:
        assert self._decoder is not None, "no carrier"
        events: list[CarrierEvent] = []
        for frame in _frames(self._decoder, data):
            if self._state is _State.UP and isinstance(frame, Data | Ack | Close):
                self.endpoint.receive_frame(frame)
            elif isinstance(frame, Refused) and self._state in (_State.OPENING, _State.RESUMING):
                self._state = _State.REFUSED
                events.append(StreamRefused(frame.reason))
            elif isinstance(frame, Challenge) and not self._challenged:
                self._challenged = True
                if self._state is _State.CHALLENGE:
                    self._answer(frame.nonce)
                elif self._state is not _State.OPENING:
                    raise StreamError(f"a CHALLENGE while {self._state.value}")
            elif isinstance(frame, Opened) and self._state is _State.OPENING:
                self.stream_id, self._secret = frame.stream_id, frame.secret
                self.endpoint.attach(0)
                self._state = _State.UP
                events.append(StreamOpened(frame.stream_id))
            elif isinstance(frame, Resumed) and self._state is _State.RESUMING:
                resent = self.endpoint.attach(frame.received)
                self._state = _State.UP
                events.append(StreamResumed(resent))
            else:
                raise StreamError(f"unexpected {type(frame).__name__} ({self._state.value})")
        return events

    def _answer(self, nonce: bytes) -> None:
        if self.stream_id is None or self._secret is None:
            self._out += encode(Open())
            self._state = _State.OPENING
            return
        self._out += encode(
            Resume(
                self.stream_id,
                nonce,
                proof(self._secret, self.stream_id, nonce),
                self.endpoint.received,
            )
        )
        self._state = _State.RESUMING

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        if self._state is _State.UP:
            out += self.endpoint.data_to_send()
        return out


# -- the gateway's table of streams
T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    stream_id: bytes
    user: str
    secret: bytes
    endpoint: Endpoint
    state: T
    expires_at: float | None = None  # set while no carrier is bound


@dataclass(frozen=True)
class Refusal:
    reason: str  # unknown_stream, expired, other_user, wrong_proof, replayed_nonce, bad_offset, too_many_streams


class StreamTable(Generic[T]):
    """Streams by id, with their owner, secret and grace deadline; the clock is the caller's."""

    _REMEMBER_EXPIRED = 4096

    def __init__(
        self, *, grace: float, max_per_user: int, token_bytes: Callable[[int], bytes]
    ) -> None:
        self.grace = grace
        self.max_per_user = max_per_user
        self._token_bytes = token_bytes
        self._entries: dict[bytes, Entry[T]] = {}
        self._expired: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def of_user(self, user: str) -> list[Entry[T]]:
        return [e for e in self._entries.values() if e.user == user]

    def open(self, user: str, endpoint: Endpoint, state: T) -> Entry[T] | Refusal:
        if len(self.of_user(user)) >= self.max_per_user:
            return Refusal("too_many_streams")
        stream_id = self._token_bytes(STREAM_ID_BYTES)
        entry = Entry(stream_id, user, self._token_bytes(SECRET_BYTES), endpoint, state)
        self._entries[stream_id] = entry
        return entry

    def resume(self, user: str, request: Resume, *, nonce: bytes, now: float) -> Entry[T] | Refusal:
        """The stream a RESUME may take over, or why not. The carrier's nonce is the fresh one."""
        if not hmac.compare_digest(request.nonce, nonce):
            return Refusal("replayed_nonce")
        entry = self._entries.get(request.stream_id)
        if entry is None:
            return Refusal("expired" if request.stream_id in self._expired else "unknown_stream")
        if entry.expires_at is not None and now >= entry.expires_at:
            self.remove(entry, expired=True)
            return Refusal("expired")
        if entry.user != user:
            return Refusal("other_user")
        if not hmac.compare_digest(request.proof, proof(entry.secret, entry.stream_id, nonce)):
            return Refusal("wrong_proof")
        entry.expires_at = None
        return entry

    def detached(self, entry: Entry[T], now: float) -> None:
        entry.expires_at = now + self.grace

    def expired(self, now: float) -> list[Entry[T]]:
        """Streams whose grace period has passed; they are removed."""
        gone = [
            e for e in self._entries.values() if e.expires_at is not None and now >= e.expires_at
        ]
        for entry in gone:
            self.remove(entry, expired=True)
        return gone

    def remove(self, entry: Entry[T], *, expired: bool = False) -> None:
        if self._entries.get(entry.stream_id) is entry:
            del self._entries[entry.stream_id]
        if expired:
            self._expired[entry.stream_id] = None
            while len(self._expired) > self._REMEMBER_EXPIRED:
                self._expired.popitem(last=False)
