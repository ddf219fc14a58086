"""Each limit gives the right error, fatal or not, and bounded buffers hold under big literals."""

from __future__ import annotations

import pytest

from roamgate.imap.command_parser import CommandParser
from roamgate.imap.engine import ParserEngine
from roamgate.imap.errors import ErrorKind
from roamgate.imap.events import (
    LINE_END,
    LIST_END,
    LITERAL_END,
    PAUSED,
    Atom,
    CommandStart,
    Event,
    LiteralChunk,
    LiteralStart,
    ProtocolError,
    ResponseKind,
    ResponseStart,
    SectionEnd,
    Text,
)
from roamgate.imap.limits import KIB, MIB, Limits
from roamgate.imap.response_parser import ResponseParser
from tests.imap.support import commands, feed, responses, split_at

NOOP = [CommandStart(b"Z9", b"NOOP"), LINE_END]


def error(kind: ErrorKind, message: str, *, fatal: bool, tag: bytes | None) -> ProtocolError:
    return ProtocolError(kind, message, fatal=fatal, tag=tag)


def test_limits_validate_themselves() -> None:
    with pytest.raises(ValueError, match="max_chunk"):
        Limits(max_chunk=0)
    assert Limits(max_literal=10, max_nonsync_literal=4096).nonsync_literal_cap == 10
    assert Limits.upstream().max_literal > 2**40


def test_overlong_line_is_fatal_as_soon_as_the_cap_is_passed() -> None:
    parser = CommandParser(Limits(max_line=100))
    events = feed(parser, split_at(b"A1 LOGIN " + b"x" * 200, [7]))
    assert events == [error(ErrorKind.LINE_TOO_LONG, "Line too long", fatal=True, tag=None)]
    assert parser.buffered <= 100 + 7


def test_line_exactly_at_the_cap_is_fine() -> None:
    line = b"A1 X " + b"y" * 93 + b"\r\n"
    assert len(line) == 100
    assert commands(line, Limits(max_line=100)) == [
        CommandStart(b"A1", b"X"),
        Atom(b"y" * 93),
        LINE_END,
    ]
    events = commands(b"A1 X " + b"y" * 94 + b"\r\n", Limits(max_line=100))
    assert events == [error(ErrorKind.LINE_TOO_LONG, "Line too long", fatal=True, tag=None)]


def test_line_length_counts_every_segment_of_a_command() -> None:
    # 3 segments of ~40 bytes each: the literals themselves do not count, the segments do.
    data = (
        b"A1 X " + b"a" * 30 + b" {3+}\r\nabc " + b"b" * 30 + b" {3+}\r\nabc " + b"c" * 30 + b"\r\n"
    )
    assert commands(data, Limits(max_line=200))[-1] == LINE_END
    assert commands(data, Limits(max_line=100))[-1] == error(
        ErrorKind.LINE_TOO_LONG, "Line too long", fatal=True, tag=b"A1"
    )


def test_sync_literal_over_the_cap_is_refused_without_a_pause() -> None:
    parser = CommandParser(Limits(max_literal=1000))
    parser.receive_data(b"A1 APPEND INBOX {1001}\r\n")
    assert parser.next_event() == error(
        ErrorKind.LITERAL_TOO_LARGE, "Literal too large", fatal=False, tag=b"A1"
    )
    parser.receive_data(b"Z9 NOOP\r\n")  # the client got BAD and did not send the literal
    assert parser.next_event() == NOOP[0]


def test_nonsync_literal_over_the_cap_is_skipped_then_reported() -> None:
    limits = Limits(max_literal=1000, max_line=200)
    body = b"A9 LOGOUT\r\n" * 500  # must not be read as commands
    data = b"A1 APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\nZ9 NOOP\r\n"
    parser = CommandParser(limits)

    def bounded(p: ParserEngine) -> None:
        assert p.buffered <= limits.max_line

    events = feed(parser, split_at(data, [333]), check=bounded)
    assert events == [
        error(ErrorKind.LITERAL_TOO_LARGE, "Literal too large", fatal=False, tag=b"A1"),
        *NOOP,
    ]


def test_an_oversized_nonsync_literal_can_be_fatal_instead_of_skipped() -> None:
    # Found by bench/hostile_clients.py: before login the gateway read and discarded a 2 GB
    # `{2000000000+}` literal (7 s of CPU) before it answered.
    limits = Limits(max_literal=1000, skip_oversized_nonsync=False)
    parser = CommandParser(limits)
    parser.receive_data(b"A1 LOGIN bob {2000000000+}\r\n" + b"x" * 5000)
    assert parser.next_event() == error(
        ErrorKind.LITERAL_TOO_LARGE, "Literal too large", fatal=True, tag=b"A1"
    )
    # Within the cap, or a failed line whose small literal must be counted out: as before.
    assert (
        commands(b"A1 LOGIN {3+}\r\nbob x\r\nA2 X (\x00 {2+}\r\nab\r\nZ9 NOOP\r\n", limits)[
            -len(NOOP) :
        ]
        == NOOP
    )


def test_literal_minus_caps_nonsync_literals_only() -> None:
    limits = Limits(max_nonsync_literal=4096)
    big = b"x" * 4097
    assert commands(b"A1 APPEND INBOX {4097+}\r\n" + big + b"\r\nZ9 NOOP\r\n", limits) == [
        error(ErrorKind.LITERAL_TOO_LARGE, "Literal too large", fatal=False, tag=b"A1"),
        *NOOP,
    ]
    assert commands(b"A1 APPEND INBOX {4097}\r\n" + big + b"\r\n", limits)[-3:] == [
        LiteralChunk(big),
        LITERAL_END,
        LINE_END,
    ]


def test_nesting_depth_is_a_bad_not_a_bye() -> None:
    limits = Limits(max_depth=4)
    assert commands(b"A1 X ((((a))))\r\n", limits)[-1] == LINE_END
    assert commands(b"A1 X (((((a)))))\r\nZ9 NOOP\r\n", limits) == [
        error(ErrorKind.NESTING_TOO_DEEP, "Too deeply nested", fatal=False, tag=b"A1"),
        *NOOP,
    ]
    # Section brackets count too.
    assert commands(b"A1 FETCH 1 ((((BODY[1]))))\r\n", limits)[0] == error(
        ErrorKind.NESTING_TOO_DEEP, "Too deeply nested", fatal=False, tag=b"A1"
    )


def test_deep_nesting_from_a_hostile_client_costs_nothing() -> None:
    line = b"A1 X " + b"(" * 50_000 + b"\r\n"
    assert commands(line)[0] == error(
        ErrorKind.NESTING_TOO_DEEP, "Too deeply nested", fatal=False, tag=b"A1"
    )


def test_upstream_literal_over_the_cap_is_skipped_then_reported() -> None:
    limits = Limits(max_literal=10)
    data = b"* 1 FETCH (BODY[] {24}\r\n" + b"* 9 EXISTS\r\n" * 2 + b"foo)\r\n* 2 EXISTS\r\n"
    assert data.count(b"EXISTS") == 3
    assert responses(data, limits) == [
        error(ErrorKind.LITERAL_TOO_LARGE, "Literal too large", fatal=False, tag=None),
        ResponseStart(ResponseKind.UNTAGGED, None, 2, b"EXISTS"),
        LINE_END,
    ]


def test_data_before_continuation_is_bounded() -> None:
    limits = Limits(max_line=100, max_chunk=50)
    parser = CommandParser(limits)
    parser.receive_data(b"A1 APPEND INBOX {5000}\r\n")
    while parser.next_event() is not PAUSED:
        pass
    parser.receive_data(b"x" * 150)
    assert parser.next_event() is PAUSED  # a little is tolerated
    parser.receive_data(b"x")
    assert parser.next_event() == error(
        ErrorKind.DATA_BEFORE_CONTINUATION, "Data sent before continuation", fatal=True, tag=b"A1"
    )


def _stream(parser: ParserEngine, head: bytes, size: int, tail: bytes, piece: int) -> list[Event]:
    """Feed head, a size-byte body and tail in piece-sized receive_data calls, checking bounds."""
    limits = parser.limits
    events: list[Event] = []
    pattern = bytes(range(1, 256)) * (4 * KIB // 255 + 1)

    def pieces() -> list[bytes]:
        out = split_at(head, [piece])
        left = size
        while left:
            n = min(piece, left)
            out.append(pattern[:n])
            left -= n
        out.extend(split_at(tail, [piece]))
        return out

    def bounded(p: ParserEngine) -> None:
        assert p.buffered <= limits.max_line + limits.max_chunk

    events = feed(parser, pieces(), check=bounded)
    chunks = [e for e in events if isinstance(e, LiteralChunk)]
    assert chunks
    assert max(len(c.data) for c in chunks) <= limits.max_chunk
    assert sum(len(c.data) for c in chunks) == size
    return [e for e in events if not isinstance(e, LiteralChunk)]


def test_ten_megabyte_append_streams_in_bounded_chunks() -> None:
    size = 10 * MIB
    parser = CommandParser(Limits(max_chunk=16 * KIB))
    head = b"A1 APPEND INBOX (\\Seen) {%d+}\r\n" % size
    rest = _stream(parser, head, size, b"\r\nA2 NOOP\r\n", 4 * KIB)
    assert rest == [
        CommandStart(b"A1", b"APPEND"),
        Atom(b"INBOX"),
        *rest[2:5],
        LiteralStart(size, synchronizing=False),
        LITERAL_END,
        LINE_END,
        CommandStart(b"A2", b"NOOP"),
        LINE_END,
    ]


def test_ten_megabyte_fetch_body_streams_in_bounded_chunks() -> None:
    size = 10 * MIB
    parser = ResponseParser(Limits.upstream())
    head = b"* 7 FETCH (UID 9 BODY[] {%d}\r\n" % size
    rest = _stream(parser, head, size, b")\r\nA1 OK done\r\n", 4 * KIB)
    assert rest[-8:] == [
        SectionEnd(),
        LiteralStart(size),
        LITERAL_END,
        LIST_END,
        LINE_END,
        ResponseStart(ResponseKind.TAGGED, b"A1", None, b"OK"),
        Text(b"done"),
        LINE_END,
    ]


def test_big_feeds_are_cut_into_max_chunk_pieces() -> None:
    limits = Limits(max_chunk=1000)
    body = b"z" * 10_000
    events = CommandParser(limits)
    got = feed(events, [b"A1 APPEND INBOX {10000+}\r\n" + body + b"\r\n"])
    sizes = [len(e.data) for e in got if isinstance(e, LiteralChunk)]
    assert sizes == [1000] * 10
