"""Server responses from Dovecot and RFC 9051, read as transcripts of events."""

from __future__ import annotations

import pytest

from roamgate.imap.errors import ErrorKind
from roamgate.imap.events import (
    CODE_END,
    LINE_END,
    LIST_END,
    LIST_START,
    LITERAL_END,
    NEED_DATA,
    NIL,
    Atom,
    CodeStart,
    ListStart,
    LiteralChunk,
    LiteralStart,
    Number,
    ProtocolError,
    Quoted,
    ResponseKind,
    ResponseStart,
    SectionEnd,
    SectionStart,
    Text,
)
from roamgate.imap.response_parser import ResponseParser
from roamgate.imap.serialize import serialize_events
from tests.imap.support import responses

UNTAGGED = ResponseKind.UNTAGGED


def untagged(name: bytes, number: int | None = None) -> ResponseStart:
    return ResponseStart(UNTAGGED, None, number, name)


def tagged(tag: bytes, name: bytes) -> ResponseStart:
    return ResponseStart(ResponseKind.TAGGED, tag, None, name)


CONTINUATION = ResponseStart(ResponseKind.CONTINUATION, None, None, b"")


def test_dovecot_greeting() -> None:
    line = (
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS"
        b" AUTH=PLAIN] Dovecot ready.\r\n"
    )
    caps = b"IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN"
    assert responses(line) == [
        untagged(b"OK"),
        CodeStart(b"CAPABILITY"),
        *[Atom(cap) for cap in caps.split()],
        CODE_END,
        Text(b"Dovecot ready."),
        LINE_END,
    ]


def test_fetch_with_bodystructure_and_envelope() -> None:
    line = (
        b'* 1 FETCH (UID 4 RFC822.SIZE 1234 FLAGS (\\Seen) BODYSTRUCTURE (("text" "plain"'
        b' ("charset" "utf-8") NIL NIL "7bit" 12 1 NIL NIL NIL NIL) "mixed" ("boundary" "x")'
        b' NIL NIL NIL) ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "subject" (("Terry Gray"'
        b' NIL "gray" "cac.washington.edu")) NIL NIL NIL NIL NIL NIL'
        b' "<B27397-0100000@cac.washington.edu>"))\r\n'
    )
    q = Quoted
    assert responses(line) == [
        untagged(b"FETCH", 1),
        LIST_START,
        Atom(b"UID"), Number(4),
        Atom(b"RFC822.SIZE"), Number(1234),
        Atom(b"FLAGS"), LIST_START, Atom(b"\\Seen"), LIST_END,
        Atom(b"BODYSTRUCTURE"), LIST_START,
        LIST_START, q(b"text"), q(b"plain"), LIST_START, q(b"charset"), q(b"utf-8"), LIST_END,
        NIL, NIL, q(b"7bit"), Number(12), Number(1), NIL, NIL, NIL, NIL, LIST_END,
        q(b"mixed"), LIST_START, q(b"boundary"), q(b"x"), LIST_END, NIL, NIL, NIL,
        LIST_END,
        Atom(b"ENVELOPE"), LIST_START,
        q(b"Mon, 7 Feb 1994 21:52:25 -0800"), q(b"subject"),
        LIST_START, LIST_START, q(b"Terry Gray"), NIL, q(b"gray"), q(b"cac.washington.edu"),
        LIST_END, LIST_END,
        NIL, NIL, NIL, NIL, NIL, NIL, q(b"<B27397-0100000@cac.washington.edu>"),
        LIST_END,
        LIST_END,
        LINE_END,
    ]  # fmt: skip


def test_fetch_structure_is_visible_before_the_literal_body() -> None:
    parser = ResponseParser()
    parser.receive_data(b"* 12 FETCH (UID 7 BODY[1] {11}\r\nhello")
    head = [parser.next_event() for _ in range(8)]
    assert head == [
        untagged(b"FETCH", 12),
        LIST_START,
        Atom(b"UID"),
        Number(7),
        SectionStart(b"BODY"),
        Number(1),
        SectionEnd(),
        LiteralStart(11),
    ]
    assert parser.next_event() == LiteralChunk(b"hello")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b" world)\r\n")
    assert parser.next_event() == LiteralChunk(b" world")
    assert parser.next_event() == LITERAL_END
    assert parser.next_event() == LIST_END
    assert parser.next_event() == LINE_END


def test_binary_literal8_and_header_fields_section() -> None:
    data = (
        b"* 3 FETCH (BINARY[1] ~{4}\r\n\x00\x01\x02\x03"
        b' BODY[HEADER.FIELDS ("From")]<0> {6}\r\nFrom:\n)\r\n'
    )
    assert responses(data) == [
        untagged(b"FETCH", 3),
        LIST_START,
        SectionStart(b"BINARY"),
        Number(1),
        SectionEnd(),
        LiteralStart(4, binary=True),
        LiteralChunk(b"\x00\x01\x02\x03"),
        LITERAL_END,
        SectionStart(b"BODY"),
        Atom(b"HEADER.FIELDS"),
        LIST_START,
        Quoted(b"From"),
        LIST_END,
        SectionEnd(b"0"),
        LiteralStart(6),
        LiteralChunk(b"From:\n"),
        LITERAL_END,
        LIST_END,
        LINE_END,
    ]


def test_list_and_status_data() -> None:
    data = (
        b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
        b'* LIST (\\Noselect) NIL ""\r\n'
        b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n"
        b"* SEARCH\r\n"
        b"* 172 EXISTS\r\n"
    )
    assert responses(data) == [
        untagged(b"LIST"), LIST_START, Atom(b"\\HasNoChildren"), LIST_END, Quoted(b"/"),
        Quoted(b"INBOX"), LINE_END,
        untagged(b"LIST"), LIST_START, Atom(b"\\Noselect"), LIST_END, NIL, Quoted(b""), LINE_END,
        untagged(b"STATUS"), Atom(b"blurdybloop"), LIST_START, Atom(b"MESSAGES"), Number(231),
        Atom(b"UIDNEXT"), Number(44292), LIST_END, LINE_END,
        untagged(b"SEARCH"), LINE_END,
        untagged(b"EXISTS", 172), LINE_END,
    ]  # fmt: skip


def test_status_responses_with_codes_and_free_text() -> None:
    data = (
        b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"
        b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
        b"A142 OK [READ-WRITE] SELECT completed (0.001 + 0.000 secs).\r\n"
        b'A1 NO [AUTHENTICATIONFAILED] Authentication failed: "{weird} text\r\n'
        b"A2 OK [READ-ONLY]\r\n"
        b"* BYE\r\n"
        b"* OK \r\n"
    )
    assert responses(data) == [
        untagged(b"OK"), CodeStart(b"PERMANENTFLAGS"), LIST_START, Atom(b"\\Deleted"),
        Atom(b"\\Seen"), Atom(b"\\*"), LIST_END, CODE_END, Text(b"Limited"), LINE_END,
        untagged(b"OK"), CodeStart(b"UIDVALIDITY"), Number(3857529045), CODE_END,
        Text(b"UIDs valid"), LINE_END,
        tagged(b"A142", b"OK"), CodeStart(b"READ-WRITE"), CODE_END,
        Text(b"SELECT completed (0.001 + 0.000 secs)."), LINE_END,
        tagged(b"A1", b"NO"), CodeStart(b"AUTHENTICATIONFAILED"), CODE_END,
        Text(b'Authentication failed: "{weird} text'), LINE_END,
        tagged(b"A2", b"OK"), CodeStart(b"READ-ONLY"), CODE_END, LINE_END,
        untagged(b"BYE"), LINE_END,
        untagged(b"OK"), Text(b""), LINE_END,
    ]  # fmt: skip


def test_text_of_a_status_response_is_never_a_literal() -> None:
    # "{5}" at the end of human text must not make the parser swallow the next line.
    assert responses(b"* OK see {5}\r\n* 2 EXPUNGE\r\n") == [
        untagged(b"OK"),
        Text(b"see {5}"),
        LINE_END,
        untagged(b"EXPUNGE", 2),
        LINE_END,
    ]


def test_continuation_requests() -> None:
    assert responses(b"+ idling\r\n+ \r\n+\r\n+ OK\r\n") == [
        CONTINUATION, Text(b"idling"), LINE_END,
        CONTINUATION, Text(b""), LINE_END,
        CONTINUATION, LINE_END,
        CONTINUATION, Text(b"OK"), LINE_END,
    ]  # fmt: skip


def test_utf8_text_is_relayed() -> None:
    line = "* OK Привет\r\n".encode()
    assert responses(line)[1] == Text("Привет".encode())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"*OK\r\n", "Missing space"),
        (b"* 01 EXISTS\r\n", "Invalid message number"),
        (b"* 1\r\n", "Missing response name"),
        (b"* (x)\r\n", "Missing response name"),
        (b"+x\r\n", "Missing space"),
        (b"* OK [] x\r\n", "Invalid response code"),
        (b"* OK [ALERT x\r\n", "Missing ']'"),
        (b"* OK [ALERT]x\r\n", "Missing space"),
        (b"* OK nul\x00\r\n", "NUL byte not allowed"),
        (b"A1\r\n", "Invalid tag"),
    ],
)
def test_bad_responses_are_non_fatal(line: bytes, message: str) -> None:
    events = responses(line + b"* 1 RECENT\r\n")
    assert len(events) == 3
    error = events[0]
    assert isinstance(error, ProtocolError)
    assert (error.message, error.fatal) == (message, False)
    assert events[1:] == [untagged(b"RECENT", 1), LINE_END]


def test_bad_fetch_line_still_counts_out_its_literal() -> None:
    events = responses(b"* 1 FETCH (BODY[] ) {9}\r\n* 2 BYE\r\n)\r\n* 3 EXISTS\r\n")
    assert events == [
        ProtocolError(ErrorKind.BAD_SYNTAX, "Unexpected closing bracket", fatal=False),
        untagged(b"EXISTS", 3),
        LINE_END,
    ]


def test_multipart_bodystructure_lists_follow_each_other_without_a_space() -> None:
    # Dovecot's answer for a text with a PDF attached: `1*body` has no SP between bodies.
    line = (
        b'* 23 FETCH (BODYSTRUCTURE (("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 54 5'
        b' NIL NIL NIL NIL)("application" "pdf" NIL NIL NIL "base64" 273686 NIL ("attachment"'
        b' ("filename" "supply-agreement.pdf")) NIL NIL) "mixed" ("boundary" "=_k") NIL NIL NIL))'
        b"\r\n"
    )
    events = responses(line)
    assert not any(isinstance(e, ProtocolError) for e in events)
    adjacent = [e for e in events if isinstance(e, ListStart) and e.adjacent]
    assert len(adjacent) == 1
    assert serialize_events(events) == line
    # A list after a space stays a list after a space (ENVELOPE's address lists).
    spaced = b'* 1 FETCH (ENVELOPE (NIL "s" (("a" NIL "b" "c")) (("d" NIL "e" "f")) NIL NIL NIL NIL NIL NIL))\r\n'
    assert serialize_events(responses(spaced)) == spaced
