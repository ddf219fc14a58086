"""Events the IMAP parsers emit and the serializer writes back, as frozen dataclasses.

One command or response line becomes a start event (CommandStart / ResponseStart), the tokens of
its arguments, and LineEnd. A literal is LiteralStart, any number of LiteralChunk and LiteralEnd, so
its body is never held whole. A token type other than Atom is only used for its canonical
spelling (`NIL`, `12`, never `nil` or `012`), which keeps serialize(parse(b)) == b byte for byte.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from roamgate.imap.errors import ErrorKind


class Signal(enum.Enum):
    """What next_event returns when it has no event (h11 calls these sentinels)."""

    NEED_DATA = "need-data"  # feed more bytes with receive_data
    PAUSED = "paused"  # a synchronising literal waits for accept_literal() / reject_literal()


NEED_DATA: Final = Signal.NEED_DATA
PAUSED: Final = Signal.PAUSED


class ResponseKind(enum.Enum):
    TAGGED = "tagged"  # A1 OK ...
    UNTAGGED = "untagged"  # * ...
    CONTINUATION = "continuation"  # + ...


# -- line structure ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandStart:
    """`tag SP name`; name is `UID FETCH` (one space) for UID commands, case as received."""

    tag: bytes
    name: bytes

    @property
    def verb(self) -> str:
        """The command name upper-cased, for dispatch (`UID FETCH`, `LOGIN`)."""
        return self.name.decode("ascii").upper()


@dataclass(frozen=True, slots=True)
class ResponseStart:
    """`tag name`, `* [number] name` or `+`; name is b"" for a continuation request."""

    kind: ResponseKind
    tag: bytes | None
    number: int | None
    name: bytes

    @property
    def verb(self) -> str:
        """The response name upper-cased (`OK`, `FETCH`, `CAPABILITY`)."""
        return self.name.decode("ascii").upper()


@dataclass(frozen=True, slots=True)
class LineEnd:
    """The CRLF that ends a command or response."""


@dataclass(frozen=True, slots=True)
class RawLine:
    """A line read verbatim after `expect_raw_line()`: a SASL response or IDLE's `DONE`."""

    data: bytes


# -- tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Atom:
    value: bytes


@dataclass(frozen=True, slots=True)
class Number:
    value: int


@dataclass(frozen=True, slots=True)
class Nil:
    """The atom `NIL` in exactly that spelling."""


@dataclass(frozen=True, slots=True)
class Quoted:
    """A quoted string, unescaped; may hold UTF-8 (IMAP4rev2) but never CR, LF or NUL."""

    value: bytes


@dataclass(frozen=True, slots=True)
class ListStart:
    """`(`; adjacent: it follows a `)` with no space, as the bodies of a multipart
    BODYSTRUCTURE and the addresses of an ENVELOPE list do (`(...)(...)`), kept so the bytes
    round-trip exactly."""

    adjacent: bool = False


@dataclass(frozen=True, slots=True)
class ListEnd:
    """`)`"""


@dataclass(frozen=True, slots=True)
class SectionStart:
    """A fetch-att section opening, `BODY[`, `BODY.PEEK[`, `BINARY[` ...; name excludes `[`."""

    name: bytes


@dataclass(frozen=True, slots=True)
class SectionEnd:
    """`]`, with the partial range that may follow it (`0.512` for `<0.512>`)."""

    partial: bytes | None = None


@dataclass(frozen=True, slots=True)
class CodeStart:
    """`[NAME` opening a response code in status responses (`[CAPABILITY`, `[ALERT`)."""

    name: bytes


@dataclass(frozen=True, slots=True)
class CodeEnd:
    """`]` closing a response code."""


@dataclass(frozen=True, slots=True)
class Text:
    """Human-readable text ending a status response or continuation request, after one SP."""

    value: bytes


@dataclass(frozen=True, slots=True)
class LiteralStart:
    """`{size}` / `{size+}` / `~{size}` and its CRLF; the body follows as LiteralChunk events.

    synchronizing is the spelling (no `+`); only client-side synchronising literals wait for a
    decision, server literals always follow immediately.
    """

    size: int
    synchronizing: bool = True
    binary: bool = False


@dataclass(frozen=True, slots=True)
class LiteralChunk:
    """Part of a literal body, at most Limits.max_chunk bytes; how it is split is arbitrary."""

    data: bytes


@dataclass(frozen=True, slots=True)
class LiteralEnd:
    """The last byte of the literal body has been delivered."""


# -- connection -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The input broke the grammar or a limit; message is a fixed text safe to send to the peer.

    fatal=False: answer `tag BAD message` (or `* BAD` without a tag) and carry on — the parser has
    already skipped the rest of the offending line, literals included. fatal=True: answer
    `* BYE message` and close; the parser accepts no further input.
    """

    kind: ErrorKind
    message: str
    fatal: bool
    tag: bytes | None = None


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection cleanly, between two lines."""


Token: TypeAlias = (
    Atom
    | Number
    | Nil
    | Quoted
    | ListStart
    | ListEnd
    | SectionStart
    | SectionEnd
    | CodeStart
    | CodeEnd
    | Text
    | LiteralStart
    | LiteralChunk
    | LiteralEnd
)
Event: TypeAlias = (
    CommandStart | ResponseStart | LineEnd | RawLine | Token | ProtocolError | ConnectionClosed
)
NextEvent: TypeAlias = Event | Literal[Signal.NEED_DATA, Signal.PAUSED]

# Shared instances of the field-less events; they compare equal to fresh ones.
LINE_END: Final = LineEnd()
NIL: Final = Nil()
LIST_START: Final = ListStart()
LIST_END: Final = ListEnd()
CODE_END: Final = CodeEnd()
LITERAL_END: Final = LiteralEnd()
