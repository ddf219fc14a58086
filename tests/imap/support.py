"""Drivers shared by the IMAP codec tests: feed bytes, answer literal decisions, collect events."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from roamgate.imap.command_parser import CommandParser
from roamgate.imap.engine import ParserEngine
from roamgate.imap.events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Event,
    LiteralChunk,
    LiteralStart,
    ProtocolError,
)
from roamgate.imap.limits import Limits
from roamgate.imap.response_parser import ResponseParser

Decide = Callable[[LiteralStart], bool]


def accept_all(literal: LiteralStart) -> bool:
    return True


def drain(parser: ParserEngine, events: list[Event], decide: Decide = accept_all) -> bool:
    """Collect events until NEED_DATA; True when the parser has stopped (fatal error or EOF)."""
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            return False
        if event is PAUSED:
            literal = parser.pending_literal
            assert literal is not None
            if decide(literal):
                parser.accept_literal()
            else:
                parser.reject_literal()
            continue
        events.append(event)
        if isinstance(event, ConnectionClosed) or (
            isinstance(event, ProtocolError) and event.fatal
        ):
            return True


def feed(
    parser: ParserEngine,
    pieces: Iterable[bytes],
    *,
    decide: Decide = accept_all,
    eof: bool = False,
    check: Callable[[ParserEngine], None] | None = None,
) -> list[Event]:
    """Feed the pieces one receive_data call each, draining after each; optionally then EOF."""
    events: list[Event] = []
    for piece in pieces:
        parser.receive_data(piece)
        if drain(parser, events, decide):
            return events
        if check is not None:
            check(parser)
    if eof:
        parser.receive_data(b"")
        drain(parser, events, decide)
    return events


def merge_chunks(events: Iterable[Event]) -> list[Event]:
    """Join adjacent LiteralChunk events: how a body is chunked depends on how it was fed."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, LiteralChunk) and out and isinstance(out[-1], LiteralChunk):
            out[-1] = LiteralChunk(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def commands(
    data: bytes, limits: Limits | None = None, decide: Decide = accept_all, eof: bool = False
) -> list[Event]:
    return merge_chunks(feed(CommandParser(limits), [data], decide=decide, eof=eof))


def responses(data: bytes, limits: Limits | None = None, eof: bool = False) -> list[Event]:
    return merge_chunks(feed(ResponseParser(limits), [data], eof=eof))


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """Cut data into pieces of the given sizes (cycled); the last piece takes the rest."""
    pieces: list[bytes] = []
    pos = 0
    sizes = list(sizes) or [len(data) or 1]
    i = 0
    while pos < len(data):
        size = max(1, sizes[i % len(sizes)])
        pieces.append(data[pos : pos + size])
        pos += size
        i += 1
    return pieces
