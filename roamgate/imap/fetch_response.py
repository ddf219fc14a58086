"""Splits one untagged FETCH response: the stored message out, every other item through.

Fed the events of a `* n FETCH (...)` response after its ResponseStart, FetchSplitter passes
each item the client asked for on unchanged and takes out what the proxy asked for in the
client's stead (see fetch_plan): the `BODY[]` item, whose bytes it hands on as BodyChunk so a
lean rendition can be made of them; the UID, which it notes (and drops if the client did not ask
for it); and the tiny header item that sets \\Seen when a rendition comes from the cache. At the
list's closing parenthesis it reports ListClosed and passes nothing: the caller adds the lean
items, then the `)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from roamgate.imap.events import (
    Atom,
    Event,
    ListEnd,
    ListStart,
    LiteralChunk,
    LiteralEnd,
    LiteralStart,
    Nil,
    Number,
    Quoted,
    SectionEnd,
    SectionStart,
)
from roamgate.imap.fetch_plan import SEEN_FIELD


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """Bytes of the stored message, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BodyEnd:
    """The stored message is complete; nil: the server had none to give (NIL)."""

    nil: bool = False


@dataclass(frozen=True, slots=True)
class ListClosed:
    """The response's item list ended; the caller writes the lean items and the `)`."""


Action: TypeAlias = Event | BodyChunk | BodyEnd | ListClosed


def _is_seen_item(held: list[Event]) -> bool:
    """`BODY[HEADER.FIELDS (X-ROAMGATE-SEEN)]` as held (its SectionStart first)."""
    if len(held) != 5:
        return False
    _, fields, opened, name, closed = held
    return (
        isinstance(fields, Atom)
        and fields.value.upper() == b"HEADER.FIELDS"
        and isinstance(opened, ListStart)
        and isinstance(name, Atom | Quoted)
        and name.value.upper() == SEEN_FIELD
        and isinstance(closed, ListEnd)
    )


class FetchSplitter:
    """One response's item list: item names and values alternate at depth 1."""

    def __init__(self, *, keep_uid: bool = True, record: frozenset[bytes] = frozenset()) -> None:
        self.keep_uid = keep_uid
        # The values of these items (upper-case names) are also kept, as events, for the cache.
        self.record = record
        self.recorded: dict[bytes, list[Event]] = {}
        self._recording: bytes | None = None
        self.depth = 0
        self.expect_name = True
        self.uid: int | None = None
        self._held: list[Event] | None = None  # a `BODY[...` section name, until its `]`
        self._section_lists = 0
        self._uid_next = False  # the value that follows is the UID
        self._skip = 0  # >0: the current value is dropped (list depth inside it, plus one)
        self.capturing = False  # the current value is the stored message
        self.captured = False  # this response carried the stored message
        self.nil = False

    def push(self, event: Event) -> list[Action]:
        if self._held is not None:
            return self._section(event)
        if self.depth == 0:
            if isinstance(event, ListStart):
                self.depth = 1
            return [event]  # the list's `(`, or not a FETCH item list: pass it as it is
        if self.depth == 1 and self.expect_name:
            return self._name(event)
        if self.capturing:
            return self._capture(event)
        if self._skip:
            self._skip_value(event)
            return []
        if self._uid_next:
            self._uid_next = False
            if isinstance(event, Number):
                self.uid = event.value
        out = self._value(event)
        if self._recording is not None:
            self.recorded[self._recording].append(event)
            if self.expect_name:
                self._recording = None
        return out

    def _name(self, event: Event) -> list[Action]:
        if isinstance(event, SectionStart):
            self._held = [event]  # the section's name is known at its `]`
            return []
        if isinstance(event, ListEnd):
            self.depth = 0
            return [ListClosed()]
        self.expect_name = not isinstance(event, Atom)
        if isinstance(event, Atom) and event.value.upper() in self.record:
            self._recording = event.value.upper()
            self.recorded[self._recording] = []
        if isinstance(event, Atom) and event.value.upper() == b"UID":
            if not self.keep_uid:
                self._skip = 1
                self._uid_next = True
                return []
            self._uid_next = True
        return [event]

    def _section(self, event: Event) -> list[Action]:
        held = self._held
        assert held is not None
        if isinstance(event, ListStart):
            self._section_lists += 1
        elif isinstance(event, ListEnd):
            self._section_lists -= 1
        elif isinstance(event, SectionEnd) and self._section_lists == 0:
            self._held = None
            self.expect_name = False
            first = held[0]
            if not isinstance(first, SectionStart) or first.name.upper() != b"BODY":
                return [*held, event]
            if len(held) == 1 and event.partial is None:
                # `BODY[]` with no range: the whole stored message the proxy asked for.
                self.capturing = True
                self.captured = True
                return []
            if event.partial is None and _is_seen_item(held):
                self._skip = 1  # the \Seen setter's value: nobody asked for it
                return []
            return [*held, event]
        held.append(event)
        return []

    def _capture(self, event: Event) -> list[Action]:
        if isinstance(event, LiteralStart):
            return []
        if isinstance(event, LiteralChunk):
            return [BodyChunk(event.data)]
        if isinstance(event, LiteralEnd):
            return self._captured(nil=False)
        if isinstance(event, Quoted):
            return [BodyChunk(event.value), *self._captured(nil=False)]
        # NIL (the message is gone) or anything else that is not a message: no rendition.
        return self._captured(nil=True)

    def _captured(self, *, nil: bool) -> list[Action]:
        self.capturing = False
        self.expect_name = True
        self.nil = nil
        return [BodyEnd(nil)]

    def _skip_value(self, event: Event) -> None:
        if self._uid_next:
            self._uid_next = False
            if isinstance(event, Number):
                self.uid = event.value
        if isinstance(event, ListStart):
            self._skip += 1
        elif isinstance(event, ListEnd):
            self._skip -= 1
        elif isinstance(event, LiteralStart | LiteralChunk):
            return  # the value goes on to its LiteralEnd
        if self._skip == 1:
            self._skip = 0
            self.expect_name = True

    def _value(self, event: Event) -> list[Action]:
        if isinstance(event, ListStart):
            self.depth += 1
        elif isinstance(event, ListEnd):
            self.depth -= 1
            if self.depth == 1:
                self.expect_name = True
        elif self.depth == 1 and isinstance(event, Atom | Number | Nil | Quoted | LiteralEnd):
            self.expect_name = True
        return [event]
