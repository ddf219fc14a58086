"""Lean renditions kept per user and message, so a slow link's next fetch needs no upstream read.

Beside the rendition an entry keeps the message's immutable FETCH items as the upstream wrote
them (ENVELOPE, BODYSTRUCTURE, INTERNALDATE), so a header fetch can be answered whole.

A key is (user, profile, mailbox, UIDVALIDITY, UID): an IMAP message never changes under its
UID while UIDVALIDITY holds, so an entry can only be stale by being unreachable (an expunged
message, a recreated mailbox), and those are dropped as the relay sees them or age out. Bounded
in bytes, least recently used out first; one cache per door, in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

CacheKey: TypeAlias = tuple[str, str, str, int, int]

MAX_ITEM = 256 * 1024  # a larger rendition (a signed message) is not worth a slot
# Items that never change for a UID: kept as the value bytes the upstream sent.
IMMUTABLE_ITEMS = frozenset({b"ENVELOPE", b"BODYSTRUCTURE", b"INTERNALDATE"})


@dataclass(frozen=True)
class CachedMessage:
    rendition: bytes
    items: Mapping[bytes, bytes] = field(default_factory=dict)  # upper-case name -> value

    @property
    def size(self) -> int:
        return len(self.rendition) + sum(len(v) for v in self.items.values())


class LeanCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[CacheKey, CachedMessage] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: CacheKey) -> CachedMessage | None:
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
        return entry

    def put(
        self, key: CacheKey, rendition: bytes, items: Mapping[bytes, bytes] | None = None
    ) -> None:
        """Keep a rendition; items join those the entry has (a later FETCH may bring fewer)."""
        old = self._items.get(key)
        merged = {**(old.items if old is not None else {}), **(items or {})}
        entry = CachedMessage(rendition, merged)
        if entry.size > MAX_ITEM:
            return
        self.drop(key)
        self._items[key] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.size

    def drop(self, key: CacheKey) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def drop_mailbox(self, user: str, mailbox: str, keep_uidvalidity: int | None = None) -> None:
        """Forget a mailbox's entries (its UIDVALIDITY changed: every UID means another message)."""
        for key in [k for k in self._items if k[0] == user and k[2] == mailbox]:
            if key[3] != keep_uidvalidity:
                self.drop(key)
