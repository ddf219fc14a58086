"""Encryption of secrets at rest (AES-256-GCM) and keyed hashes, all from one 32-byte key."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_VERSION = b"\x01"
_NONCE_BYTES = 12


class SecretBoxError(Exception):
    """A key that cannot be used, or a ciphertext that does not open with it."""


class SecretBox:
    """Seals small secrets (token seeds) so a copy of the database alone reveals nothing.

    Each ciphertext is bound to its row through the associated data (e.g. the token id), so a
    sealed secret copied onto another row does not open there.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretBoxError(f"the secret key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(_derive(key, b"roamgate aead v1"))
        self._mac_key = _derive(key, b"roamgate mac v1")

    @classmethod
    def from_text(cls, text: bytes) -> SecretBox:
        """Build from the key file's contents: base64 of 32 random bytes."""
        try:
            key = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SecretBoxError("the secret key is not valid base64") from None
        return cls(key)

    def seal(self, plaintext: bytes, bound_to: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, bound_to.encode())

    def open(self, blob: bytes, bound_to: str) -> bytes:
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
            raise SecretBoxError("sealed secret has an unknown format")
        nonce, body = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, bound_to.encode())
        except InvalidTag:
            raise SecretBoxError(
                "sealed secret does not open with this key (wrong key file, or the row was tampered with)"
            ) from None

    def keyed_hash(self, purpose: str, value: str) -> bytes:
        """HMAC-SHA256 for values we only compare (backup codes): useless without the key."""
        return hmac.new(self._mac_key, f"{purpose}\0{value}".encode(), sha256).digest()


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def new_key_text() -> bytes:
    """A fresh key in the key file's format."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"


def write_key_file(path: Path) -> None:
    """Create the key file with mode 0600 from the start (never world-readable, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, new_key_text())
    finally:
        os.close(fd)
