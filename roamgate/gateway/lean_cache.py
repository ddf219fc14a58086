"""Lean renditions kept per user and message, so a slow link's next fetch needs no upstream read.

A key is (user, profile, mailbox, UIDVALIDITY, UID): an IMAP message never changes under its
UID while UIDVALIDITY holds, so an entry can only be stale by being unreachable (an expunged
message, a recreated mailbox), and those are dropped as the relay sees them or age out. Bounded
in bytes, least recently used out first; one cache per door, in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeAlias

CacheKey: TypeAlias = tuple[str, str, str, int, int]

MAX_ITEM = 256 * 1024  # a larger rendition (a signed message) is not worth a slot


class LeanCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[CacheKey, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: CacheKey) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: CacheKey, data: bytes) -> None:
        if len(data) > MAX_ITEM:
            return
        self.drop(key)
        self._items[key] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= len(old)

    def drop(self, key: CacheKey) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old)

    def drop_mailbox(self, user: str, mailbox: str, keep_uidvalidity: int | None = None) -> None:
        """Forget a mailbox's entries (its UIDVALIDITY changed: every UID means another message)."""
        for key in [k for k in self._items if k[0] == user and k[2] == mailbox]:
            if key[3] != keep_uidvalidity:
                self.drop(key)
