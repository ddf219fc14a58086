"""Local password hashes with scrypt (for the `local` verifier; `upstream` stores none)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# n=2**15, r=8: about 32 MiB and tens of milliseconds per check on this class of machine.
_LOG2_N = 15
_R = 8
_P = 1
_MAXMEM = 64 * 1024 * 1024
_PREFIX = "$scrypt$"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _LOG2_N, _R, _P)
    return f"{_PREFIX}ln={_LOG2_N},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check; a malformed stored hash never matches."""
    try:
        params, salt_text, digest_text = encoded.removeprefix(_PREFIX).split("$")
        fields = dict(item.split("=", 1) for item in params.split(","))
        log2_n, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
        salt, expected = _unb64(salt_text), _unb64(digest_text)
    except (ValueError, KeyError):
        return False
    if not encoded.startswith(_PREFIX) or not (10 <= log2_n <= 20 and 1 <= r <= 16 and p == 1):
        return False
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p), expected)


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=2**log2_n, r=r, p=p, maxmem=_MAXMEM, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
