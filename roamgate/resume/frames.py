"""The resumable stream's frames: a kind byte, a 4-byte body length, the body; decoded with a cap.

A carrier (one SSH channel) carries frames; when it drops, a frame cut in the middle is lost
whole with it: the decoder's partial frame is thrown away with the carrier, never delivered.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

NONCE_BYTES = 32
STREAM_ID_BYTES = 16
SECRET_BYTES = 32
PROOF_BYTES = 32
MAX_DATA = 8 * 1024  # payload per DATA frame: what a cut can cost, at most, in one direction
MAX_REASON = 64
_HEADER = struct.Struct("!BI")
_OFFSET = struct.Struct("!Q")
_DATA = struct.Struct("!QQ")
MAX_BODY = _DATA.size + MAX_DATA


class Kind(IntEnum):
    CHALLENGE = 1  # gateway -> connector: a fresh nonce, first on every carrier
    OPEN = 2  # connector -> gateway: a new stream
    OPENED = 3  # gateway -> connector: its id and resume secret
    RESUME = 4  # connector -> gateway: id, the nonce answered, the proof, bytes received
    RESUMED = 5  # gateway -> connector: bytes the gateway received
    REFUSED = 6  # gateway -> connector: no stream on this carrier
    DATA = 16
    ACK = 17
    CLOSE = 18


class FrameError(Exception):
    """The carrier sent something that is no frame of this protocol: drop the carrier."""


@dataclass(frozen=True)
class Challenge:
    nonce: bytes


@dataclass(frozen=True)
class Open:
    pass


@dataclass(frozen=True)
class Opened:
    stream_id: bytes
    secret: bytes


@dataclass(frozen=True)
class Resume:
    stream_id: bytes
    nonce: bytes
    proof: bytes
    received: int


@dataclass(frozen=True)
class Resumed:
    received: int


@dataclass(frozen=True)
class Refused:
    reason: str


@dataclass(frozen=True)
class Data:
    offset: int  # of the payload's first byte in the sender's stream
    ack: int  # the sender's acknowledgement of the other direction, piggybacked
    payload: bytes


@dataclass(frozen=True)
class Ack:
    offset: int


@dataclass(frozen=True)
class Close:
    offset: int  # the sender's stream ends here


Frame = Challenge | Open | Opened | Resume | Resumed | Refused | Data | Ack | Close


def encode(frame: Frame) -> bytes:
    match frame:
        case Challenge(nonce=nonce):
            kind, body = Kind.CHALLENGE, nonce
        case Open():
            kind, body = Kind.OPEN, b""
        case Opened(stream_id=sid, secret=secret):
            kind, body = Kind.OPENED, sid + secret
        case Resume(stream_id=sid, nonce=nonce, proof=proof, received=received):
            kind, body = Kind.RESUME, sid + nonce + proof + _OFFSET.pack(received)
        case Resumed(received=received):
            kind, body = Kind.RESUMED, _OFFSET.pack(received)
        case Refused(reason=reason):
            kind, body = Kind.REFUSED, reason.encode("ascii", "replace")[:MAX_REASON]
        case Data(offset=offset, ack=ack, payload=payload):
            assert len(payload) <= MAX_DATA
            kind, body = Kind.DATA, _DATA.pack(offset, ack) + payload
        case Ack(offset=offset):
            kind, body = Kind.ACK, _OFFSET.pack(offset)
        case Close(offset=offset):
            kind, body = Kind.CLOSE, _OFFSET.pack(offset)
    return _HEADER.pack(kind, len(body)) + body


def _exact(body: bytes, size: int, kind: Kind) -> None:
    if len(body) != size:
        raise FrameError(f"{kind.name} frame of {len(body)} bytes, expected {size}")


def decode_body(kind_byte: int, body: bytes) -> Frame:
    try:
        kind = Kind(kind_byte)
    except ValueError:
        raise FrameError(f"unknown frame kind {kind_byte}") from None
    match kind:
        case Kind.CHALLENGE:
            _exact(body, NONCE_BYTES, kind)
            return Challenge(body)
        case Kind.OPEN:
            _exact(body, 0, kind)
            return Open()
        case Kind.OPENED:
            _exact(body, STREAM_ID_BYTES + SECRET_BYTES, kind)
            return Opened(body[:STREAM_ID_BYTES], body[STREAM_ID_BYTES:])
        case Kind.RESUME:
            _exact(body, STREAM_ID_BYTES + NONCE_BYTES + PROOF_BYTES + _OFFSET.size, kind)
            a, b, c = STREAM_ID_BYTES, STREAM_ID_BYTES + NONCE_BYTES, -_OFFSET.size
            return Resume(body[:a], body[a:b], body[b:c], _OFFSET.unpack(body[c:])[0])
        case Kind.RESUMED:
            _exact(body, _OFFSET.size, kind)
            return Resumed(_OFFSET.unpack(body)[0])
        case Kind.REFUSED:
            if len(body) > MAX_REASON:
                raise FrameError("REFUSED reason too long")
            return Refused(body.decode("ascii", "replace"))
        case Kind.DATA:
            if len(body) < _DATA.size:
                raise FrameError("DATA frame shorter than its header")
            offset, ack = _DATA.unpack(body[: _DATA.size])
            return Data(offset, ack, body[_DATA.size :])
        case Kind.ACK:
            _exact(body, _OFFSET.size, kind)
            return Ack(_OFFSET.unpack(body)[0])
        case Kind.CLOSE:
            _exact(body, _OFFSET.size, kind)
            return Close(_OFFSET.unpack(body)[0])


class FrameDecoder:
    """Bytes of one carrier in, whole frames out; between calls it holds at most one partial frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= _HEADER.size:
            kind, length = _HEADER.unpack_from(buf, pos)
            if length > MAX_BODY:
                raise FrameError(f"frame body of {length} bytes exceeds {MAX_BODY}")
            end = pos + _HEADER.size + length
            if len(buf) < end:
                break
            frames.append(decode_body(kind, bytes(buf[pos + _HEADER.size : end])))
            pos = end
        del buf[:pos]
        return frames
