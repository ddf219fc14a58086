"""Writes events, commands and responses back to IMAP bytes; parse(serialize(x)) == x.

EventWriter works one event at a time so a relay can pass literal chunks straight through. For
value trees (Command, Response) the writer chooses each string's form: quoted when that is safe,
a literal when the string holds CR, LF or 8-bit bytes or is long, literal8 when it holds NUL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from roamgate.imap.errors import ErrorKind
from roamgate.imap.events import (
    CODE_END,
    LINE_END,
    LIST_END,
    LIST_START,
    LITERAL_END,
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
    ResponseKind,
    ResponseStart,
    SectionEnd,
    SectionStart,
    Text,
)
from roamgate.imap.tokenizer import SECTION_NAMES
from roamgate.imap.values import Code, Command, Response, Section, String, Value, ValueList

# Longer strings go as literals: servers (and our own parser) cap line length, not literals.
MAX_QUOTED = 1024
_NOT_QUOTABLE = re.compile(rb"[\x00\r\n\x80-\xff]")
_CRLF = b"\r\n"


def quote(value: bytes) -> bytes:
    """`"value"` with quoted-specials escaped; value must not hold NUL, CR or LF."""
    if b"\x00" in value or b"\r" in value or b"\n" in value:
        raise ValueError("NUL, CR and LF cannot be quoted; use a literal")
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class EventWriter:
    """Serializes a stream of events, tracking only where a separating space is due."""

    def __init__(self) -> None:
        self._space = False  # the next token needs a space before it

    def write(self, event: Event) -> bytes:
        sp = b" " if self._space else b""
        self._space = True
        match event:
            case Atom(value=value):
                return sp + value
            case Number(value=value):
                return sp + str(value).encode("ascii")
            case Nil():
                return sp + b"NIL"
            case Quoted(value=value):
                return sp + quote(value)
            case LiteralChunk(data=data):
                self._space = False
                return data
            case LiteralStart(size=size, synchronizing=sync, binary=binary):
                self._space = False
                return b"%s%s{%d%s}\r\n" % (
                    sp,
                    b"~" if binary else b"",
                    size,
                    b"" if sync else b"+",
                )
            case LiteralEnd():
                return b""
            case ListStart(adjacent=adjacent):
                self._space = False
                return b"(" if adjacent else sp + b"("
            case ListEnd():
                return b")"
            case SectionStart(name=name):
                if name.upper() not in SECTION_NAMES:
                    raise ValueError("not a section name")
                self._space = False
                return sp + name + b"["
            case SectionEnd(partial=partial):
                return b"]" if partial is None else b"]<" + partial + b">"
            case CodeStart(name=name):
                return sp + b"[" + name
            case CodeEnd():
                return b"]"
            case Text(value=value):
                return b" " + value
            case LineEnd():
                self._space = False
                return _CRLF
            case CommandStart(tag=tag, name=name):
                return tag + b" " + name
            case ResponseStart(kind=kind, tag=tag, number=number, name=name):
                if kind is ResponseKind.CONTINUATION:
                    return b"+"
                head = b"*" if tag is None else tag
                if number is not None:
                    head += b" %d" % number
                return head + b" " + name
            case RawLine(data=data):
                self._space = False
                return data + _CRLF
            case ProtocolError() | ConnectionClosed():
                raise ValueError("not a wire event; use error_reply() for errors")


def serialize_events(events: Iterable[Event]) -> bytes:
    writer = EventWriter()
    return b"".join(writer.write(event) for event in events)


def string_events(
    value: bytes, *, binary: bool = False, literal_plus: bool = True, utf8: bool = False
) -> list[Event]:
    """The events for one string argument, in the safest form that can carry it.

    utf8=True (after ENABLE UTF8=ACCEPT) lets valid UTF-8 travel quoted; literal_plus=False writes
    synchronising literals, which the sender must then pause on (see command_parts()).
    """
    binary = binary or b"\x00" in value
    if not binary and len(value) <= MAX_QUOTED:
        bad = _NOT_QUOTABLE.search(value)
        if bad is None or (utf8 and _quotable_utf8(value)):
            return [Quoted(value)]
    events: list[Event] = [LiteralStart(len(value), synchronizing=not literal_plus, binary=binary)]
    if value:
        events.append(LiteralChunk(value))
    events.append(LITERAL_END)
    return events


def _quotable_utf8(value: bytes) -> bool:
    if b"\x00" in value or b"\r" in value or b"\n" in value:
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def value_events(value: Value, *, literal_plus: bool = True) -> Iterator[Event]:
    match value:
        case String(value=data, binary=binary):
            yield from string_events(data, binary=binary, literal_plus=literal_plus)
        case ValueList(items=items):
            yield LIST_START
            for item in items:
                yield from value_events(item, literal_plus=literal_plus)
            yield LIST_END
        case Section(name=name, items=items, partial=partial):
            yield SectionStart(name)
            for item in items:
                yield from value_events(item, literal_plus=literal_plus)
            yield SectionEnd(partial)
        case _:
            yield value


def command_events(command: Command, *, literal_plus: bool = True) -> list[Event]:
    events: list[Event] = [CommandStart(command.tag, command.name)]
    for arg in command.args:
        events.extend(value_events(arg, literal_plus=literal_plus))
    events.append(LINE_END)
    return events


def response_events(response: Response) -> list[Event]:
    events: list[Event] = [
        ResponseStart(response.kind, response.tag, response.number, response.name)
    ]
    # Server literals never wait, and `{n+}` is client-only syntax (RFC 7888).
    for arg in response.args:
        events.extend(value_events(arg, literal_plus=False))
    if response.code is not None:
        events.extend(_code_events(response.code))
    if response.text is not None:
        events.append(Text(response.text))
    events.append(LINE_END)
    return events


def _code_events(code: Code) -> Iterator[Event]:
    yield CodeStart(code.name)
    for arg in code.args:
        yield from value_events(arg, literal_plus=False)
    yield CODE_END


def serialize_command(command: Command, *, literal_plus: bool = True) -> bytes:
    """The whole command; with literal_plus=False use command_parts() to pause at each `{n}`."""
    return serialize_events(command_events(command, literal_plus=literal_plus))


def command_parts(command: Command) -> list[bytes]:
    """The command with synchronising literals, split after each `{n}` CRLF.

    Send the first part, then each following part only after a `+` continuation request.
    """
    writer = EventWriter()
    parts: list[bytes] = []
    current: list[bytes] = []
    for event in command_events(command, literal_plus=False):
        current.append(writer.write(event))
        if isinstance(event, LiteralStart):
            parts.append(b"".join(current))
            current = []
    parts.append(b"".join(current))
    return parts


def serialize_response(response: Response) -> bytes:
    return serialize_events(response_events(response))


_TOOBIG = frozenset({ErrorKind.LINE_TOO_LONG, ErrorKind.LITERAL_TOO_LARGE})


def error_reply(error: ProtocolError) -> bytes:
    """The reply a server sends the client for a ProtocolError from CommandParser.

    Non-fatal: `tag BAD text` (`* BAD` without a tag); fatal: `* BYE text`, then close.
    The text is the error's fixed message, with TOOBIG (RFC 7888, RFC 9051) for size limits.
    """
    code = b"[TOOBIG] " if error.kind in _TOOBIG else b""
    message = error.message.encode("ascii")
    if error.fatal:
        return b"* BYE " + code + message + _CRLF
    tag = error.tag if error.tag is not None else b"*"
    return tag + b" BAD " + code + message + _CRLF
