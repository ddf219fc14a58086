"""The dial-back line protocol (v1), sans-IO: the lines both sides send and the proof they check.

The gateway connects to the device's registered endpoint and sends one line:
    ROAMGATE-DIALBACK 1 <gateway-host> <user> <nonce: 64 hex digits>
The device answers one line, `PROOF <64 hex digits>` (HMAC-SHA256 under the device key made at
registration, over the context and the nonce) or `DENY`, and the gateway ends with `BYE` (the verdict is its own: the device is not told).
Lines are ASCII, end with LF and are at most MAX_LINE bytes; anything else ends the call.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

MAGIC = "ROAMGATE-DIALBACK"
VERSION = "1"
MAX_LINE = 512
NONCE_BYTES = 32
KEY_BYTES = 32
_WORD = re.compile(r"[!-~]{1,255}")  # printable ASCII, no space
_HEX64 = re.compile(r"[0-9a-f]{64}")


class DialbackError(ValueError):
    """A line that is not the protocol; the message is fit for a log line."""


@dataclass(frozen=True)
class Call:
    gateway: str
    user: str
    nonce: bytes


def proof(key: bytes, gateway: str, user: str, nonce: bytes) -> bytes:
    """What the device sends: it binds the nonce to this gateway and user."""
    msg = b"roamgate-dialback-v1\0" + gateway.encode() + b"\0" + user.encode() + b"\0" + nonce
    return hmac.new(key, msg, hashlib.sha256).digest()


def call_line(call: Call) -> bytes:
    for word in (call.gateway, call.user):
        if not _WORD.fullmatch(word):
            raise DialbackError("gateway and user names must be printable ASCII without spaces")
    if len(call.nonce) != NONCE_BYTES:
        raise DialbackError("the nonce must be 32 bytes")
    return f"{MAGIC} {VERSION} {call.gateway} {call.user} {call.nonce.hex()}\n".encode()


def parse_call(line: bytes) -> Call:
    parts = _split(line)
    if len(parts) != 5 or parts[0] != MAGIC or parts[1] != VERSION:
        raise DialbackError("not a roamgate dial-back call")
    gateway, user, nonce = parts[2], parts[3], parts[4]
    if not (_WORD.fullmatch(gateway) and _WORD.fullmatch(user) and _HEX64.fullmatch(nonce)):
        raise DialbackError("malformed dial-back call")
    return Call(gateway, user, bytes.fromhex(nonce))


def answer_line(key: bytes | None, call: Call) -> bytes:
    """PROOF with a key, DENY without one."""
    if key is None:
        return b"DENY\n"
    return b"PROOF " + proof(key, call.gateway, call.user, call.nonce).hex().encode() + b"\n"


def parse_answer(line: bytes) -> bytes | None:
    """The proof bytes, or None for DENY; DialbackError for anything else."""
    parts = _split(line)
    if parts == ["DENY"]:
        return None
    if len(parts) == 2 and parts[0] == "PROOF" and _HEX64.fullmatch(parts[1]):
        return bytes.fromhex(parts[1])
    raise DialbackError("malformed dial-back answer")


def _split(line: bytes) -> list[str]:
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise DialbackError("line too long or not ended")
    try:
        text = line[:-1].rstrip(b"\r").decode("ascii")
    except UnicodeDecodeError:
        raise DialbackError("not ASCII") from None
    return text.split(" ")
