"""One FETCH response on a slow link: the stored message in, its lean items out, spooled.

The rendition is written to a spool that stays in memory up to SPOOL_MEMORY and goes to a
temporary file beyond it (a signed message passes whole), so a large message never sits in
memory; its items are then read back in chunks as the client takes them. A rendition may also
come from the cache (`cached`, by UID) when the plan asked the upstream for no body at all.

A prefetch (`silent`) asks for renditions for the cache only: its responses reach the client
not at all, while an unsolicited FETCH that happens to arrive meanwhile (flags changed by
another client) is held back and then passed on whole.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from typing import IO

from roamgate.imap.events import (
    LIST_END,
    LITERAL_END,
    NIL,
    Atom,
    Event,
    ListStart,
    LiteralChunk,
    LiteralStart,
    Number,
    ResponseStart,
)
from roamgate.imap.fetch_plan import LeanItem, header_length, item_range
from roamgate.imap.fetch_response import Action, BodyChunk, BodyEnd, FetchSplitter, ListClosed
from roamgate.imap.serialize import serialize_events
from roamgate.mime.lean import HEADER_CAP, LeanRenderer, LeanReport
from roamgate.profiles import LinkProfile

SPOOL_MEMORY = 1024 * 1024
CHUNK = 64 * 1024


class LeanFetch:
    """Rewrites the items of one `* n FETCH` response."""

    def __init__(
        self,
        start: ResponseStart,
        items: tuple[LeanItem, ...],
        profile: LinkProfile,
        *,
        profile_name: str,
        original_login: str | None,
        keep_uid: bool = True,
        cached: Mapping[int, bytes] | None = None,
        silent: bool = False,
        probe: bool = False,
        record: frozenset[bytes] = frozenset(),
    ) -> None:
        self.start = start
        self.seq = start.number
        self.items = items
        self.silent = silent
        self.probe = probe  # silent, and the proxy asked for UIDs only
        self.splitter = FetchSplitter(keep_uid=keep_uid, record=record)
        self._cached = cached or {}
        self._renderer = LeanRenderer(
            profile, profile_name=profile_name, original_login=original_login
        )
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        self.size = 0
        self.closed = False  # the item list has ended: write tail_events(), then the line end
        self.tail_written = False
        self.from_cache = False
        self.report: LeanReport | None = None  # set once a stored message has been rendered
        self._held: list[Event] = []  # silent: what goes to the client if this is not ours

    @property
    def uid(self) -> int | None:
        return self.splitter.uid

    @property
    def ours(self) -> bool:
        """Silent: the response answers the proxy's own FETCH (not an unsolicited one)."""
        if self.splitter.captured:
            return True
        # A UID and nothing else (the UID itself is not passed on, so nothing is held).
        only_uid = all(isinstance(e, ListStart) for e in self._held)
        return self.probe and self.splitter.uid is not None and only_uid

    @property
    def has_rendition(self) -> bool:
        return self.splitter.captured and not self.splitter.nil

    def push(self, event: Event) -> list[Event]:
        """Events for the client now (the stored message's bytes are kept back)."""
        out: list[Event] = []
        for action in self.splitter.push(event):
            out.extend(self._act(action))
        if self.silent:
            self._held.extend(out)
            return []
        return out

    def _act(self, action: Action) -> list[Event]:
        if isinstance(action, BodyChunk):
            self._write(self._renderer.feed(action.data))
        elif isinstance(action, BodyEnd):
            if not action.nil:
                self._write(self._renderer.close())
            self.report = self._renderer.report
        elif isinstance(action, ListClosed):
            self.closed = True
        else:
            return [action]
        return []

    def _write(self, data: bytes) -> None:
        if data:
            self._spool.write(data)
            self.size += len(data)

    def tail_events(self) -> Iterator[Event]:
        """What completes the response for the client: the lean items and the `)`.

        Silent: nothing if the response was the prefetch's own, else the whole of it as held.
        """
        if self.silent:
            if not self.ours:
                yield self.start
                yield from self._held
                yield LIST_END
            return
        uid = self.splitter.uid
        if not self.splitter.captured and uid is not None and uid in self._cached:
            self._write(self._cached[uid])
            self.splitter.captured = True
            self.from_cache = True
        if self.splitter.captured:
            yield from self._lean_items()
        yield LIST_END

    def _lean_items(self) -> Iterator[Event]:
        header_len = self.size
        if self.size:
            self._spool.seek(0)
            header_len = header_length(self._spool.read(min(self.size, 2 * HEADER_CAP)))
        for item in self.items:
            yield Atom(item.key)
            if item.part == "size":
                yield Number(self.size)
                continue
            if self.splitter.nil:
                yield NIL
                continue
            start, length = item_range(item, self.size, header_len)
            yield LiteralStart(length, synchronizing=True)
            self._spool.seek(start)
            left = length
            while left:
                chunk = self._spool.read(min(CHUNK, left))
                if not chunk:
                    raise RuntimeError("lean spool shorter than its recorded size")
                left -= len(chunk)
                yield LiteralChunk(chunk)
            yield LITERAL_END

    def items_from(self, rendition: bytes) -> Iterator[Event]:
        """The lean items of a rendition from the cache (the response is the proxy's own)."""
        self._write(rendition)
        self.splitter.captured = True
        self.from_cache = True
        return self._lean_items()

    def recorded_items(self) -> dict[bytes, bytes]:
        """The recorded items' values as the upstream wrote them (for the cache)."""
        return {name: serialize_events(events) for name, events in self.splitter.recorded.items()}

    def rendition(self) -> bytes:
        """The whole rendition (for the cache; callers check `size` first)."""
        self._spool.seek(0)
        return self._spool.read(self.size)

    def close(self) -> None:
        self._spool.close()
