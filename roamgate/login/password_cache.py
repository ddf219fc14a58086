"""A verified-password cache in front of the local scrypt verifier, like Dovecot's auth cache.

scrypt at the shipped cost is ~100 ms of CPU per check, which is the point of it: an offline
guesser pays it too. A mail client that logs in again and again (several connections, a poll
every few minutes, a mass reconnect after a line drop) pays it at every login as well. After a
successful check this keeps, per user, only HMAC-SHA256(key, user id, stored hash, record
version, password) under a random key made when the process starts and never written anywhere;
the password itself is not kept. Rules:

1. Only an ACCEPTED answer is remembered: a wrong password, or a verifier that could not decide,
   never is, so a wrong password always pays the full scrypt check.
2. An entry counts only while its TTL runs and only if the HMAC of this attempt matches it
   (constant-time compare). The stored hash and the user record's `updated_at` are HMAC inputs,
   so a password change, a disable/enable or a re-created user on any node misses at once.
3. A failure counted against the user on this node (wrong password, wrong code, and so every
   lock this node sets) drops the user's entry (`forget`). Locks and disables are checked in the
   store before any password is, on every login, so an entry never lets a locked or disabled
   user in; and disable/enable changes `updated_at` (rule 2).
4. Bounded: at most `size` users, least recently used first out.
5. The second factor is never cached: this wraps the password check only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from roamgate.login.verifiers import Outcome, PasswordVerifier
from roamgate.store.base import UserRecord

# What the last password check of this task (one connection's login) did: "hit", "miss", or
# None (no cache involved). The authenticator puts it in the login's audit event.
_LAST_LOOKUP: ContextVar[str | None] = ContextVar("password_cache_lookup", default=None)


def last_lookup() -> str | None:
    """ "hit" or "miss" for the latest cached password check in this task, else None."""
    return _LAST_LOOKUP.get()


def reset_lookup() -> None:
    _LAST_LOOKUP.set(None)


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    verified_at: float  # monotonic; the TTL is applied at lookup, so a reload that shortens it
    # shortens every entry's life at once


class PasswordCache:
    """Wraps a PasswordVerifier; answers ACCEPTED from memory for a recently verified password."""

    def __init__(
        self,
        inner: PasswordVerifier,
        *,
        seconds: float,
        size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = seconds
        self.size = size
        self.clock = clock
        # Per process: a restart forgets everything, and no other process can compute a digest.
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def apply(self, seconds: float, size: int) -> None:
        """New settings (SIGHUP); entries beyond the new size go now, a shorter TTL at once."""
        self.seconds, self.size = seconds, size
        if seconds <= 0:
            self._entries.clear()
        while len(self._entries) > max(size, 0):
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    async def verify(self, user: UserRecord, password: str) -> Outcome:
        if self.seconds <= 0 or not password or user.password_hash is None:
            return await self.inner.verify(user, password)
        digest = self._digest(user, password)
        now = self.clock()
        entry = self._entries.get(user.name)
        if entry is not None and now < entry.verified_at + self.seconds:
            if hmac.compare_digest(entry.digest, digest):
                self._entries.move_to_end(user.name)
                self.hits += 1
                _LAST_LOOKUP.set("hit")
                return Outcome.ACCEPTED
        elif entry is not None:
            del self._entries[user.name]  # expired
        self.misses += 1
        _LAST_LOOKUP.set("miss")
        outcome = await self.inner.verify(user, password)
        if outcome is Outcome.ACCEPTED:
            self._entries[user.name] = _Entry(digest, self.clock())
            self._entries.move_to_end(user.name)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return outcome

    def forget(self, user_name: str) -> None:
        """Drop the user's entry: a failure, a lock or a disable on this node."""
        self._entries.pop(user_name, None)

    def clear(self) -> None:
        self._entries.clear()

    def _digest(self, user: UserRecord, password: str) -> bytes:
        assert user.password_hash is not None
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        # Length-prefixed fields: no two different inputs share an encoding.
        for field in (
            struct.pack(">q", user.id),
            user.password_hash.encode(),
            repr(user.updated_at).encode(),
            password.encode("utf-8", "surrogatepass"),
        ):
            mac.update(struct.pack(">I", len(field)))
            mac.update(field)
        return mac.digest()


def cache_passwords(
    verifier: PasswordVerifier, *, seconds: int, size: int
) -> PasswordVerifier | PasswordCache:
    """The local verifier behind a cache (which `auth.password_cache_seconds: 0` turns off).

    Only `local`: its stored hash tells when the password changed. A verifier that asks a
    directory or the upstream (whose password may change there at any moment) is left as it is.
    The wrapper stays even at 0 seconds, so a reload can turn the cache on.
    """
    if verifier.name != "local":
        return verifier
    return PasswordCache(verifier, seconds=seconds, size=size)
