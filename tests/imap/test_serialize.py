"""The serializer: string forms, streamed literals, error replies."""

from __future__ import annotations

import pytest

from roamgate.imap.errors import ErrorKind
from roamgate.imap.events import (
    LINE_END,
    LITERAL_END,
    CommandStart,
    ConnectionClosed,
    Event,
    LiteralChunk,
    LiteralStart,
    ProtocolError,
    Quoted,
    SectionStart,
)
from roamgate.imap.serialize import (
    MAX_QUOTED,
    EventWriter,
    command_parts,
    error_reply,
    quote,
    serialize_command,
    string_events,
)
from roamgate.imap.values import Command, String, ValueList
from tests.imap.support import commands


def test_quoted_specials_are_escaped() -> None:
    assert quote(b'pa"ss\\word') == b'"pa\\"ss\\\\word"'
    with pytest.raises(ValueError, match="literal"):
        quote(b"a\r\nb")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"alice", [Quoted(b"alice")]),
        (b"", [Quoted(b"")]),
        (b'say "hi"', [Quoted(b'say "hi"')]),
        (b"two\r\nlines", [LiteralStart(10, synchronizing=False), LiteralChunk(b"two\r\nlines"), LITERAL_END]),
        ("é".encode(), [LiteralStart(2, synchronizing=False), LiteralChunk("é".encode()), LITERAL_END]),
        (b"a\x00b", [LiteralStart(3, synchronizing=False, binary=True), LiteralChunk(b"a\x00b"), LITERAL_END]),
        (b"x" * (MAX_QUOTED + 1), [LiteralStart(MAX_QUOTED + 1, synchronizing=False), LiteralChunk(b"x" * (MAX_QUOTED + 1)), LITERAL_END]),
    ],
)  # fmt: skip
def test_string_form_is_chosen_from_the_content(value: bytes, expected: list[Event]) -> None:
    assert string_events(value) == expected


def test_utf8_may_travel_quoted_after_utf8_accept() -> None:
    assert string_events("日本".encode(), utf8=True) == [Quoted("日本".encode())]
    assert string_events(b"\xff", utf8=True)[0] == LiteralStart(1, synchronizing=False)


def test_login_for_upstream_with_awkward_password() -> None:
    login = Command(b"R1", b"LOGIN", (String(b"alice"), String('pässword"'.encode())))
    assert serialize_command(login) == b'R1 LOGIN "alice" {10+}\r\np\xc3\xa4ssword"\r\n'
    assert command_parts(login) == [b'R1 LOGIN "alice" {10}\r\n', b'p\xc3\xa4ssword"\r\n']


def test_command_with_list_and_empty_list() -> None:
    command = Command(b"A1", b"STORE", (String(b"1"), ValueList(()), ValueList((String(b"x"),))))
    assert serialize_command(command) == b'A1 STORE "1" () ("x")\r\n'


def test_event_writer_streams_literal_chunks_unchanged() -> None:
    writer = EventWriter()
    events: list[Event] = [
        CommandStart(b"A1", b"APPEND"),
        LiteralStart(6, synchronizing=False),
        LiteralChunk(b"abc"),
        LiteralChunk(b"def"),
        LITERAL_END,
        LINE_END,
    ]
    out = [writer.write(event) for event in events]
    assert out == [b"A1 APPEND", b" {6+}\r\n", b"abc", b"def", b"", b"\r\n"]


def test_event_writer_refuses_events_that_would_not_round_trip() -> None:
    writer = EventWriter()
    with pytest.raises(ValueError, match="section"):
        writer.write(SectionStart(b"FOO"))
    with pytest.raises(ValueError, match="literal"):
        writer.write(Quoted(b"a\nb"))
    with pytest.raises(ValueError, match="error_reply"):
        writer.write(ConnectionClosed())


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"A1 X (\r\n", b"A1 BAD Missing ')'\r\n"),
        (b"\r\n", b"* BAD Empty line\r\n"),
        (b"A1 APPEND INBOX {99999999999}\r\n", b"A1 BAD [TOOBIG] Literal too large\r\n"),
    ],
)
def test_error_replies_use_the_fixed_texts(line: bytes, reply: bytes) -> None:
    [error] = commands(line)
    assert isinstance(error, ProtocolError)
    assert error_reply(error) == reply


def test_fatal_error_reply_is_bye() -> None:
    error = ProtocolError(ErrorKind.LINE_TOO_LONG, "Line too long", fatal=True, tag=b"A1")
    assert error_reply(error) == b"* BYE [TOOBIG] Line too long\r\n"
