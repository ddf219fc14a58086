"""The assemble layer: whole pre-login commands and responses as value trees."""

from __future__ import annotations

from roamgate.imap.assemble import Assembler, assemble
from roamgate.imap.command_parser import CommandParser
from roamgate.imap.errors import ErrorKind
from roamgate.imap.events import (
    NEED_DATA,
    NIL,
    PAUSED,
    Atom,
    Number,
    ProtocolError,
    RawLine,
    ResponseKind,
)
from roamgate.imap.values import (
    Code,
    Command,
    Response,
    Section,
    String,
    ValueList,
    astring,
    nstring,
)
from tests.imap.support import commands, responses


def test_login_with_literal_user_and_quoted_password() -> None:
    [login] = assemble(commands(b'A1 LOGIN {5+}\r\nalice "pa\\"ss"\r\n'))
    assert login == Command(b"A1", b"LOGIN", (String(b"alice"), String(b'pa"ss')))
    assert isinstance(login, Command)
    assert [astring(arg) for arg in login.args] == [b"alice", b'pa"ss']


def test_astring_accepts_atoms_numbers_and_nil_spelled_as_atom() -> None:
    [login] = assemble(commands(b"A1 login NIL 1234\r\n"))
    assert isinstance(login, Command)
    assert login.verb == "LOGIN"
    assert [astring(arg) for arg in login.args] == [b"NIL", b"1234"]
    assert astring(ValueList(())) is None


def test_id_parameter_list() -> None:
    [command] = assemble(commands(b'A2 ID ("name" "Mutt" "version" NIL "os" nil)\r\n'))
    assert isinstance(command, Command)
    [params] = command.args
    assert isinstance(params, ValueList)
    assert [nstring(item) for item in params.items] == [
        (True, b"name"),
        (True, b"Mutt"),
        (True, b"version"),
        (True, None),
        (True, b"os"),
        (True, None),
    ]
    assert nstring(Number(3)) == (False, None)


def test_fetch_sections_assemble_with_partial() -> None:
    [command] = assemble(commands(b"A5 FETCH 1 (BODY.PEEK[HEADER.FIELDS (From)]<0.512>)\r\n"))
    assert command == Command(
        b"A5",
        b"FETCH",
        (
            Number(1),
            ValueList(
                (
                    Section(
                        b"BODY.PEEK",
                        (Atom(b"HEADER.FIELDS"), ValueList((Atom(b"From"),))),
                        b"0.512",
                    ),
                )
            ),
        ),
    )


def test_greeting_and_tagged_responses() -> None:
    data = (
        b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n"
        b"A1 OK [READ-WRITE] done\r\n"
        b"* 3 FETCH (FLAGS () BODY[] {3}\r\nabc)\r\n"
        b"+ \r\n"
    )
    assert assemble(responses(data)) == [
        Response(
            ResponseKind.UNTAGGED,
            None,
            None,
            b"OK",
            code=Code(b"CAPABILITY", (Atom(b"IMAP4rev1"), Atom(b"LITERAL+"), Atom(b"AUTH=PLAIN"))),
            text=b"Dovecot ready.",
        ),
        Response(ResponseKind.TAGGED, b"A1", None, b"OK", code=Code(b"READ-WRITE"), text=b"done"),
        Response(
            ResponseKind.UNTAGGED,
            None,
            3,
            b"FETCH",
            (ValueList((Atom(b"FLAGS"), ValueList(()), Section(b"BODY"), String(b"abc"))),),
        ),
        Response(ResponseKind.CONTINUATION, None, None, b"", text=b""),
    ]


def test_binary_literal_assembles_as_binary_string() -> None:
    [command] = assemble(commands(b"A1 APPEND INBOX ~{2}\r\n\x00\x01\r\n"))
    assert isinstance(command, Command)
    assert command.args[-1] == String(b"\x00\x01", binary=True)


def test_literals_over_the_assembly_cap_are_an_error_not_a_buffer() -> None:
    data = b"A1 LOGIN {70000+}\r\n" + b"u" * 70000 + b" x\r\nA2 NOOP\r\n"
    assert assemble(commands(data), max_literal_total=64 * 1024) == [
        ProtocolError(ErrorKind.LITERAL_TOO_LARGE, "Literal too large", fatal=False, tag=b"A1"),
        Command(b"A2", b"NOOP"),
    ]


def test_prelogin_loop_refuses_a_sync_literal_the_assembler_cannot_hold() -> None:
    """How the pre-login state machine drives parser and assembler together."""
    parser = CommandParser()
    assembler = Assembler(max_literal_total=100)
    sent: list[bytes] = []
    results: list[object] = []

    def pump() -> None:
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                return
            if event is PAUSED:
                if assembler.overflowed:
                    parser.reject_literal()
                else:
                    sent.append(b"+ OK\r\n")
                    parser.accept_literal()
                continue
            result = assembler.push(event)
            if result is not None:
                results.append(result)

    parser.receive_data(b"A1 LOGIN {5}\r\n")
    pump()
    parser.receive_data(b"alice {500}\r\n")
    pump()
    parser.receive_data(b"A2 LOGIN bob secret\r\n")
    pump()
    assert sent == [b"+ OK\r\n"]
    assert results == [
        ProtocolError(ErrorKind.LITERAL_REFUSED, "Literal refused", fatal=False, tag=b"A1"),
        Command(b"A2", b"LOGIN", (Atom(b"bob"), Atom(b"secret"))),
    ]


def test_raw_lines_and_errors_pass_through() -> None:
    assembler = Assembler()
    assert assembler.push(RawLine(b"DONE")) == RawLine(b"DONE")
    error = ProtocolError(ErrorKind.BAD_SYNTAX, "Invalid tag", fatal=False)
    assert assembler.push(error) == error
    assert assembler.push(NIL) is None
