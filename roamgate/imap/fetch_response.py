"""Splits one untagged FETCH response: the stored message out, every other item through.

Fed the events of a `* n FETCH (...)` response after its ResponseStart, FetchSplitter passes
each item the client asked for on unchanged and takes out the `BODY[]` item that the proxy
asked for in the client's stead (see fetch_plan), handing its bytes on as BodyChunk so a lean
rendition can be made of them. At the list's closing parenthesis it reports ListClosed and
passes nothing: the caller adds the lean items, then the `)`.
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


class FetchSplitter:
    """One response's item list: item names and values alternate at depth 1."""

    def __init__(self) -> None:
        self.depth = 0
        self.expect_name = True
        self.in_section = False
        self.section_list_depth = 0
        self._held: SectionStart | None = None  # `BODY[` that may be the stored message
        self.capturing = False  # the current value is the stored message
        self.captured = False  # this response carried the stored message
        self.nil = False

    def push(self, event: Event) -> list[Action]:
        if self.in_section:
            return self._section(event)
        if self.depth == 0:
            if isinstance(event, ListStart):
                self.depth = 1
                return [event]
            return [event]  # not a FETCH item list; pass it as it is
        if self.depth == 1 and self.expect_name:
            if isinstance(event, SectionStart):
                self.in_section = True
                if event.name.upper() == b"BODY":
                    self._held = event
                    return []
                return [event]
            if isinstance(event, ListEnd):
                self.depth = 0
                return [ListClosed()]
            self.expect_name = not isinstance(event, Atom)
            return [event]
        if self.capturing:
            return self._capture(event)
        return self._value(event)

    def _section(self, event: Event) -> list[Action]:
        out: list[Action] = []
        if self._held is not None and not isinstance(event, SectionEnd):
            out.append(self._held)
            self._held = None
        if isinstance(event, ListStart):
            self.section_list_depth += 1
        elif isinstance(event, ListEnd):
            self.section_list_depth -= 1
        elif isinstance(event, SectionEnd) and self.section_list_depth == 0:
            self.in_section = False
            self.expect_name = False
            if self._held is not None:
                self._held = None
                if event.partial is None:
                    # `BODY[]` with no range: the whole stored message the proxy asked for.
                    self.capturing = True
                    self.captured = True
                    return out
                out.append(SectionStart(b"BODY"))
        out.append(event)
        return out

    def _capture(self, event: Event) -> list[Action]:
        if isinstance(event, LiteralStart):
            return []
        if isinstance(event, LiteralChunk):
            return [BodyChunk(event.data)]
        if isinstance(event, LiteralEnd):
            return self._captured(nil=False)
        if isinstance(event, Quoted):
            return [BodyChunk(event.value), *self._captured(nil=False)]
        if isinstance(event, Nil) or (isinstance(event, Atom) and event.value.upper() == b"NIL"):
            return self._captured(nil=True)
        # Anything else is not a message; give the lean items nothing rather than garbage.
        return self._captured(nil=True)

    def _captured(self, *, nil: bool) -> list[Action]:
        self.capturing = False
        self.expect_name = True
        self.nil = nil
        return [BodyEnd(nil)]

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
