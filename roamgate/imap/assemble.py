"""Collects the events of one line into a Command or Response value tree, literals capped.

For the states where the proxy must understand whole commands (before login: LOGIN, ID,
AUTHENTICATE) and whole responses (greeting, CAPABILITY). Literals are collected only up to
`max_literal_total` bytes per line; a larger line is reported as LITERAL_TOO_LARGE instead of
being held in memory. Relayed traffic (APPEND, FETCH bodies) should use the events directly.
"""

from __future__ import annotations

from typing import TypeAlias

from roamgate.imap import errors
from roamgate.imap.errors import ErrorKind
from roamgate.imap.events import (
    Atom,
    CodeEnd,
    CodeStart,
    CommandStart,
    ConnectionClosed,
    Event,
    LineEnd,
    ListEnd,
    ListStart,
    LiteralChunk,
    LiteralEnd,
    LiteralStart,
    Nil,
    Number,
    ProtocolError,
    Quoted,
    RawLine,
    ResponseStart,
    SectionEnd,
    SectionStart,
    Text,
)
from roamgate.imap.limits import KIB
from roamgate.imap.values import Code, Command, Response, Section, String, Value, ValueList

Assembled: TypeAlias = Command | Response | RawLine | ProtocolError | ConnectionClosed
_Opener: TypeAlias = ListStart | SectionStart | CodeStart


class Assembler:
    """Feed it every event from one parser; it returns a value when a line is complete.

    push() returns None while a line is in progress, the Command or Response at its LineEnd, and
    passes RawLine, ProtocolError and ConnectionClosed through (forgetting any partial line).
    """

    def __init__(self, max_literal_total: int = 64 * KIB) -> None:
        self.max_literal_total = max_literal_total
        self._reset()

    def _reset(self) -> None:
        self._start: CommandStart | ResponseStart | None = None
        self._frames: list[tuple[_Opener, list[Value]]] = []
        self._items: list[Value] = []
        self._code: Code | None = None
        self._text: bytes | None = None
        self._literal: LiteralStart | None = None
        self._chunks: list[bytes] = []
        self._total = 0
        self._overflow = False

    @property
    def room(self) -> int:
        """Literal bytes this line may still bring; refuse a synchronising literal above it."""
        return max(0, self.max_literal_total - self._total)

    @property
    def overflowed(self) -> bool:
        """The line's literals exceed the cap; refuse a pending synchronising literal."""
        return self._overflow

    def push(self, event: Event) -> Assembled | None:
        match event:
            case CommandStart() | ResponseStart():
                self._reset()
                self._start = event
            case Atom() | Number() | Nil():
                self._items.append(event)
            case Quoted(value=value):
                self._items.append(String(value))
            case ListStart() | SectionStart() | CodeStart():
                self._frames.append((event, self._items))
                self._items = []
            case ListEnd() | SectionEnd() | CodeEnd():
                self._close(event)
            case Text(value=value):
                self._text = value
            case LiteralStart(size=size):
                self._literal = event
                self._chunks = []
                self._total += size
                self._overflow = self._overflow or self._total > self.max_literal_total
            case LiteralChunk(data=data):
                if not self._overflow:
                    self._chunks.append(data)
            case LiteralEnd():
                if not self._overflow and self._literal is not None:
                    self._items.append(String(b"".join(self._chunks), self._literal.binary))
                self._chunks = []
            case LineEnd():
                result = self._finish()
                self._reset()
                return result
            case RawLine() | ProtocolError() | ConnectionClosed():
                self._reset()
                return event
        return None

    def _close(self, event: ListEnd | SectionEnd | CodeEnd) -> None:
        opener, outer = self._frames.pop()
        items = tuple(self._items)
        self._items = outer
        if isinstance(opener, SectionStart) and isinstance(event, SectionEnd):
            self._items.append(Section(opener.name, items, event.partial))
        elif isinstance(opener, CodeStart):
            self._code = Code(opener.name, items)
        else:
            self._items.append(ValueList(items))

    def _finish(self) -> Command | Response | ProtocolError | None:
        start = self._start
        if start is None:
            return None
        if self._overflow:
            return ProtocolError(
                ErrorKind.LITERAL_TOO_LARGE, errors.LITERAL_TOO_LARGE, fatal=False, tag=start.tag
            )
        args = tuple(self._items)
        if isinstance(start, CommandStart):
            return Command(start.tag, start.name, args)
        return Response(
            start.kind, start.tag, start.number, start.name, args, self._code, self._text
        )


def assemble(events: list[Event], max_literal_total: int = 64 * KIB) -> list[Assembled]:
    """Assemble a complete list of events (tests, small transcripts)."""
    assembler = Assembler(max_literal_total)
    out: list[Assembled] = []
    for event in events:
        result = assembler.push(event)
        if result is not None:
            out.append(result)
    return out
