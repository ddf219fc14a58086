"""Client commands from RFC 9051 and real clients, read as transcripts of events."""

from __future__ import annotations

import pytest

from roamgate.imap.command_parser import CommandParser
from roamgate.imap.errors import ErrorKind
from roamgate.imap.events import (
    LINE_END,
    LIST_END,
    LIST_START,
    LITERAL_END,
    NEED_DATA,
    NIL,
    PAUSED,
    Atom,
    CommandStart,
    ConnectionClosed,
    Event,
    LiteralChunk,
    LiteralStart,
    Number,
    ProtocolError,
    Quoted,
    RawLine,
    SectionEnd,
    SectionStart,
)
from tests.imap.support import commands, drain, merge_chunks

# RFC 3501 6.3.11 (310 bytes with CRLF line ends; RFC 9051 has the same message with .example).
APPEND_MESSAGE = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
    b"From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
    b"Subject: afternoon meeting\r\n"
    b"To: mooch@owatagu.siam.edu\r\n"
    b"Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
)


def bad(message: str, tag: bytes | None, kind: ErrorKind = ErrorKind.BAD_SYNTAX) -> ProtocolError:
    return ProtocolError(kind, message, fatal=False, tag=tag)


def test_simple_commands() -> None:
    assert commands(b"a001 CAPABILITY\r\nA2 noop\r\nA3 LOGOUT\r\n") == [
        CommandStart(b"a001", b"CAPABILITY"),
        LINE_END,
        CommandStart(b"A2", b"noop"),
        LINE_END,
        CommandStart(b"A3", b"LOGOUT"),
        LINE_END,
    ]
    assert CommandStart(b"A2", b"noop").verb == "NOOP"


def test_login_with_nonsync_literal_and_escaped_quoted_password() -> None:
    assert commands(b'A1 LOGIN {5+}\r\nalice "pa\\"ss"\r\n') == [
        CommandStart(b"A1", b"LOGIN"),
        LiteralStart(5, synchronizing=False),
        LiteralChunk(b"alice"),
        LITERAL_END,
        Quoted(b'pa"ss'),
        LINE_END,
    ]


def test_append_waits_for_the_literal_decision() -> None:
    assert len(APPEND_MESSAGE) == 310
    parser = CommandParser()
    parser.receive_data(b"A003 APPEND saved-messages (\\Seen) {310}\r\n")
    events = [parser.next_event() for _ in range(6)]
    assert events == [
        CommandStart(b"A003", b"APPEND"),
        Atom(b"saved-messages"),
        LIST_START,
        Atom(b"\\Seen"),
        LIST_END,
        LiteralStart(310, synchronizing=True),
    ]
    assert parser.next_event() is PAUSED
    assert parser.pending_literal == LiteralStart(310)
    parser.receive_data(APPEND_MESSAGE[:5])  # a client jumping the gun is buffered, not parsed
    assert parser.next_event() is PAUSED
    parser.accept_literal()  # the proxy now sends "+ Ready for literal data"
    parser.receive_data(APPEND_MESSAGE[5:] + b"\r\nA004 NOOP\r\n")
    rest: list[Event] = []
    drain(parser, rest)
    assert merge_chunks(rest) == [
        LiteralChunk(APPEND_MESSAGE),
        LITERAL_END,
        LINE_END,
        CommandStart(b"A004", b"NOOP"),
        LINE_END,
    ]


def test_rejected_literal_ends_the_command() -> None:
    parser = CommandParser()
    parser.receive_data(b"A1 LOGIN {400}\r\n")
    assert parser.next_event() == CommandStart(b"A1", b"LOGIN")
    assert parser.next_event() == LiteralStart(400)
    assert parser.next_event() is PAUSED
    parser.reject_literal()
    assert parser.next_event() == bad("Literal refused", b"A1", ErrorKind.LITERAL_REFUSED)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"A2 NOOP\r\n")  # the client gave up on A1 and goes on
    assert parser.next_event() == CommandStart(b"A2", b"NOOP")


def test_decisions_outside_a_pause_are_caller_bugs() -> None:
    parser = CommandParser()
    with pytest.raises(RuntimeError):
        parser.accept_literal()
    with pytest.raises(RuntimeError):
        parser.reject_literal()


def test_fetch_with_header_fields_section_and_partial() -> None:
    assert commands(b"A5 FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From Subject)]<0.512>)\r\n") == [
        CommandStart(b"A5", b"FETCH"),
        Atom(b"1:*"),
        LIST_START,
        SectionStart(b"BODY.PEEK"),
        Atom(b"HEADER.FIELDS"),
        LIST_START,
        Atom(b"From"),
        Atom(b"Subject"),
        LIST_END,
        SectionEnd(b"0.512"),
        LIST_END,
        LINE_END,
    ]


def test_uid_fetch_binary_sections() -> None:
    assert commands(b"A6 UID FETCH 1 (BINARY[1.2] BINARY.SIZE[1] body[])\r\n") == [
        CommandStart(b"A6", b"UID FETCH"),
        Number(1),
        LIST_START,
        SectionStart(b"BINARY"),
        Atom(b"1.2"),
        SectionEnd(),
        SectionStart(b"BINARY.SIZE"),
        Number(1),
        SectionEnd(),
        SectionStart(b"body"),
        SectionEnd(),
        LIST_END,
        LINE_END,
    ]


def test_brackets_in_mailbox_atoms_are_not_sections() -> None:
    assert commands(b"A7 SELECT [Gmail]/Drafts\r\nA8 RENAME foo] x[y\r\n") == [
        CommandStart(b"A7", b"SELECT"),
        Atom(b"[Gmail]/Drafts"),
        LINE_END,
        CommandStart(b"A8", b"RENAME"),
        Atom(b"foo]"),
        Atom(b"x[y"),
        LINE_END,
    ]


def test_list_patterns_flags_and_nil() -> None:
    assert commands(b'A9 LIST "" %\r\nB1 STORE 2:4 +FLAGS.SILENT (\\Deleted)\r\nB2 ID NIL\r\n') == [
        CommandStart(b"A9", b"LIST"),
        Quoted(b""),
        Atom(b"%"),
        LINE_END,
        CommandStart(b"B1", b"STORE"),
        Atom(b"2:4"),
        Atom(b"+FLAGS.SILENT"),
        LIST_START,
        Atom(b"\\Deleted"),
        LIST_END,
        LINE_END,
        CommandStart(b"B2", b"ID"),
        NIL,
        LINE_END,
    ]


def test_only_canonical_spellings_become_number_and_nil() -> None:
    assert commands(b"C1 X 0 007 nil NIL 99999999999999999999\r\n")[1:-1] == [
        Number(0),
        Atom(b"007"),
        Atom(b"nil"),
        NIL,
        Atom(b"99999999999999999999"),
    ]


def test_id_with_utf8_quoted_strings() -> None:
    line = 'C2 ID ("name" "Thunderbird" "os" "日本語")\r\n'.encode()
    assert commands(line) == [
        CommandStart(b"C2", b"ID"),
        LIST_START,
        Quoted(b"name"),
        Quoted(b"Thunderbird"),
        Quoted(b"os"),
        Quoted("日本語".encode()),
        LIST_END,
        LINE_END,
    ]


def test_literal8_in_append_carries_nul() -> None:
    assert commands(b"D1 APPEND INBOX ~{3}\r\na\x00b\r\n") == [
        CommandStart(b"D1", b"APPEND"),
        Atom(b"INBOX"),
        LiteralStart(3, synchronizing=True, binary=True),
        LiteralChunk(b"a\x00b"),
        LITERAL_END,
        LINE_END,
    ]


def test_authenticate_plain_with_sasl_ir_and_with_a_continuation_line() -> None:
    assert commands(b"E1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n") == [
        CommandStart(b"E1", b"AUTHENTICATE"),
        Atom(b"PLAIN"),
        Atom(b"AGFsaWNlAHNlY3JldA=="),
        LINE_END,
    ]
    parser = CommandParser()
    parser.receive_data(b"E2 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n")
    assert parser.next_event() == CommandStart(b"E2", b"AUTHENTICATE")
    assert parser.next_event() == Atom(b"PLAIN")
    assert parser.next_event() == LINE_END
    parser.expect_raw_line()  # the proxy sent "+ "
    assert parser.next_event() == RawLine(b"AGFsaWNlAHNlY3JldA==")


def test_idle_done_is_a_raw_line() -> None:
    parser = CommandParser()
    parser.receive_data(b"F1 IDLE\r\nDONE\r\nF2 NOOP\r\n")
    assert parser.next_event() == CommandStart(b"F1", b"IDLE")
    assert parser.next_event() == LINE_END
    parser.expect_raw_line()
    assert parser.next_event() == RawLine(b"DONE")
    assert parser.next_event() == CommandStart(b"F2", b"NOOP")


def test_raw_line_mode_is_refused_mid_line() -> None:
    parser = CommandParser()
    parser.receive_data(b"G1 LOGIN {3}\r\n")
    parser.next_event()
    with pytest.raises(RuntimeError):
        parser.expect_raw_line()


def test_literal_inside_a_list_continues_the_line() -> None:
    assert commands(b"H1 SETMETADATA INBOX (/private/comment {3+}\r\nabc)\r\n") == [
        CommandStart(b"H1", b"SETMETADATA"),
        Atom(b"INBOX"),
        LIST_START,
        Atom(b"/private/comment"),
        LiteralStart(3, synchronizing=False),
        LiteralChunk(b"abc"),
        LITERAL_END,
        LIST_END,
        LINE_END,
    ]


def test_empty_literal() -> None:
    assert commands(b"H2 LOGIN {0+}\r\n {0+}\r\n\r\n") == [
        CommandStart(b"H2", b"LOGIN"),
        LiteralStart(0, synchronizing=False),
        LITERAL_END,
        LiteralStart(0, synchronizing=False),
        LITERAL_END,
        LINE_END,
    ]


@pytest.mark.parametrize(
    ("line", "message", "tag", "kind"),
    [
        (b"\r\n", "Empty line", None, ErrorKind.BAD_SYNTAX),
        (b"* NOOP\r\n", "Invalid tag", None, ErrorKind.BAD_SYNTAX),
        (b"A+1 NOOP\r\n", "Invalid tag", None, ErrorKind.BAD_SYNTAX),
        (b"A1\r\n", "Missing command name", b"A1", ErrorKind.BAD_SYNTAX),
        (b"A1 5\r\n", "Invalid command name", b"A1", ErrorKind.BAD_SYNTAX),
        (b"A1  NOOP\r\n", "Unexpected space", b"A1", ErrorKind.BAD_SYNTAX),
        (b"A1 NOOP \r\n", "Unexpected end of line", b"A1", ErrorKind.BAD_SYNTAX),
        (b"A1 NOOP\n", "Line must end with CRLF", None, ErrorKind.BAD_SYNTAX),
        (b"A1 X a  b\r\n", "Unexpected space", b"A1", ErrorKind.BAD_SYNTAX),
        (b'A1 X "a"b\r\n', "Missing space", b"A1", ErrorKind.BAD_SYNTAX),
        (b"A1 X (a\r\n", "Missing ')'", b"A1", ErrorKind.BAD_SYNTAX),
        (b"A1 X a)\r\n", "Unexpected closing bracket", b"A1", ErrorKind.BAD_SYNTAX),
        (b"A1 X BODY[1\r\n", "Missing ']'", b"A1", ErrorKind.BAD_SYNTAX),
        (b"A1 X BODY[1]<x>\r\n", "Invalid partial range", b"A1", ErrorKind.BAD_SYNTAX),
        (b'A1 X "abc\r\n', "Unterminated quoted string", b"A1", ErrorKind.BAD_SYNTAX),
        (b'A1 X "a\\b"\r\n', "Invalid escape in quoted string", b"A1", ErrorKind.BAD_SYNTAX),
        (b'A1 X "\xc3\x28"\r\n', "Invalid UTF-8 in quoted string", b"A1", ErrorKind.BAD_UTF8),
        (b'A1 X "a\x00"\r\n', "NUL byte not allowed", b"A1", ErrorKind.BAD_CHARACTER),
        (b"A1 X a\x00\r\n", "NUL byte not allowed", b"A1", ErrorKind.BAD_CHARACTER),
        (b"A1 X caf\xc3\xa9\r\n", "8-bit character outside a quoted string or literal", b"A1",
         ErrorKind.BAD_CHARACTER),
        (b"A1 X a\rb\r\n", "Control character not allowed", b"A1", ErrorKind.BAD_CHARACTER),
        (b"A1 X {3} a\r\n", "Invalid literal", b"A1", ErrorKind.BAD_SYNTAX),
        (b"A1 X {1x}\r\n", "Invalid literal", b"A1", ErrorKind.BAD_SYNTAX),
        (b"A1 X {99999999999999999999}\r\n", "Invalid literal size", b"A1",
         ErrorKind.BAD_LITERAL),
        (b"\x00\x01\x02garbage\r\n", "Invalid tag", None, ErrorKind.BAD_SYNTAX),
    ],
)  # fmt: skip
def test_bad_lines_are_non_fatal_and_the_next_line_parses(
    line: bytes, message: str, tag: bytes | None, kind: ErrorKind
) -> None:
    assert commands(line + b"Z9 NOOP\r\n") == [
        bad(message, tag, kind),
        CommandStart(b"Z9", b"NOOP"),
        LINE_END,
    ]


def test_bad_line_with_nonsync_literal_skips_the_literal() -> None:
    # The literal body "A2 X\r\n" must not be read as a command.
    assert commands(b"A1 X ) {6+}\r\nA2 X\r\n more\r\nA3 NOOP\r\n") == [
        bad("Unexpected closing bracket", b"A1"),
        CommandStart(b"A3", b"NOOP"),
        LINE_END,
    ]


def test_bad_line_ending_in_sync_literal_ends_there() -> None:
    # The client waits for a "+" it will not get, so the next bytes are a new command.
    assert commands(b"A1 X ) {6}\r\nA3 NOOP\r\n") == [
        bad("Unexpected closing bracket", b"A1"),
        CommandStart(b"A3", b"NOOP"),
        LINE_END,
    ]


def test_uncountable_nonsync_literal_is_fatal() -> None:
    # Its body cannot be skipped, so the next line cannot be found.
    assert commands(b"A1 APPEND INBOX {99999999999999999999+}\r\nZ9 NOOP\r\n") == [
        ProtocolError(ErrorKind.BAD_LITERAL, "Invalid literal size", fatal=True, tag=b"A1")
    ]


def test_error_after_a_delivered_literal_ends_the_command() -> None:
    assert commands(b"A1 LOGIN {3+}\r\nabc )\r\nA2 NOOP\r\n") == [
        CommandStart(b"A1", b"LOGIN"),
        LiteralStart(3, synchronizing=False),
        LiteralChunk(b"abc"),
        LITERAL_END,
        bad("Unexpected closing bracket", b"A1"),
        CommandStart(b"A2", b"NOOP"),
        LINE_END,
    ]


def test_nul_in_a_plain_literal_is_refused_after_counting_it_out() -> None:
    assert commands(b"A1 APPEND INBOX {5+}\r\nab\x00cd\r\nA2 NOOP\r\n") == [
        CommandStart(b"A1", b"APPEND"),
        Atom(b"INBOX"),
        LiteralStart(5, synchronizing=False),
        LiteralChunk(b"ab"),
        bad("NUL byte in literal (use literal8)", b"A1", ErrorKind.BAD_CHARACTER),
        CommandStart(b"A2", b"NOOP"),
        LINE_END,
    ]


def test_clean_eof_between_commands() -> None:
    assert commands(b"A1 NOOP\r\n", eof=True) == [
        CommandStart(b"A1", b"NOOP"),
        LINE_END,
        ConnectionClosed(),
    ]


@pytest.mark.parametrize("data", [b"A1 NO", b"A1 LOGIN {5+}\r\nab", b"A1 LOGIN {2+}\r\nab"])
def test_eof_inside_a_command_is_fatal(data: bytes) -> None:
    events = commands(data, eof=True)
    assert events[-1] == ProtocolError(
        ErrorKind.TRUNCATED,
        "Connection closed in the middle of a line",
        fatal=True,
        tag=None if data == b"A1 NO" else b"A1",
    )


def test_parser_stops_after_a_fatal_error() -> None:
    parser = CommandParser()
    parser.receive_data(b"A1 NO")
    parser.receive_data(b"")
    event = parser.next_event()
    assert isinstance(event, ProtocolError)
    assert event.fatal
    parser.receive_data(b"ignored")  # late bytes from the socket are dropped
    with pytest.raises(RuntimeError):
        parser.next_event()


def test_receive_after_eof_is_a_caller_bug() -> None:
    parser = CommandParser()
    parser.receive_data(b"")
    with pytest.raises(RuntimeError):
        parser.receive_data(b"x")
    assert parser.next_event() == ConnectionClosed()
    assert parser.next_event() == ConnectionClosed()
