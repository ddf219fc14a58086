"""One FETCH response on a slow link: the stored message in, its lean items out, spooled.

The rendition is written to a spool that stays in memory up to SPOOL_MEMORY and goes to a
temporary file beyond it (a signed message passes whole), so a large message never sits in
memory; its items are then read back in chunks as the client takes them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO

from roamgate.imap.events import LITERAL_END, NIL, Atom, Event, LiteralChunk, LiteralStart, Number
from roamgate.imap.fetch_plan import FetchPlan, header_length, item_range
from roamgate.imap.fetch_response import Action, BodyChunk, BodyEnd, FetchSplitter, ListClosed
from roamgate.mime.lean import HEADER_CAP, LeanRenderer, LeanReport
from roamgate.profiles import LinkProfile

SPOOL_MEMORY = 1024 * 1024
CHUNK = 64 * 1024


class LeanFetch:
    """Rewrites the items of one `* n FETCH` response according to a FetchPlan."""

    def __init__(
        self,
        plan: FetchPlan,
        profile: LinkProfile,
        *,
        profile_name: str,
        original_login: str | None,
    ) -> None:
        self.plan = plan
        self.splitter = FetchSplitter()
        self._renderer = LeanRenderer(
            profile, profile_name=profile_name, original_login=original_login
        )
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        self.size = 0
        self.closed = False  # the item list has ended: write tail_events(), then the line end
        self.tail_written = False
        self.report: LeanReport | None = None  # set once the stored message has been rendered

    def push(self, event: Event) -> list[Event]:
        """Events for the client now (the stored message's bytes are kept back)."""
        out: list[Event] = []
        for action in self.splitter.push(event):
            out.extend(self._act(action))
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
        """The lean items the client asked for, then nothing: the caller writes `)`."""
        if not self.splitter.captured:
            return  # an unsolicited FETCH (flags) between the plan's responses
        header_len = self.size
        if self.size:
            self._spool.seek(0)
            header_len = header_length(self._spool.read(min(self.size, 2 * HEADER_CAP)))
        for item in self.plan.lean:
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

    def close(self) -> None:
        self._spool.close()
