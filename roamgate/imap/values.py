"""The value tree of an assembled command or response: strings, lists, sections, codes.

Atoms, numbers and NIL reuse the token events (Atom, Number, Nil); a quoted string and a literal
both become String, since their meaning is the same and the serializer picks the form again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from roamgate.imap.events import Atom, Nil, Number, ResponseKind


@dataclass(frozen=True, slots=True)
class String:
    """A string argument; binary when it arrived as literal8 (and then may hold NUL)."""

    value: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class ValueList:
    """A parenthesised list."""

    items: tuple[Value, ...] = ()


@dataclass(frozen=True, slots=True)
class Section:
    """`BODY[items]<partial>` and its BODY.PEEK / BINARY / BINARY.PEEK / BINARY.SIZE kin."""

    name: bytes
    items: tuple[Value, ...] = ()
    partial: bytes | None = None


@dataclass(frozen=True, slots=True)
class Code:
    """A response code, `[NAME args]`."""

    name: bytes
    args: tuple[Value, ...] = ()


Value: TypeAlias = Atom | Number | Nil | String | ValueList | Section


@dataclass(frozen=True, slots=True)
class Command:
    """One complete client command."""

    tag: bytes
    name: bytes
    args: tuple[Value, ...] = ()

    @property
    def verb(self) -> str:
        return self.name.decode("ascii").upper()


@dataclass(frozen=True, slots=True)
class Response:
    """One complete server response; status responses carry code and text, others args."""

    kind: ResponseKind
    tag: bytes | None
    number: int | None
    name: bytes
    args: tuple[Value, ...] = ()
    code: Code | None = None
    text: bytes | None = None

    @property
    def verb(self) -> str:
        return self.name.decode("ascii").upper()


def astring(value: Value) -> bytes | None:
    """The bytes of an astring argument (LOGIN user, mailbox name), or None if it is not one.

    In an astring position `NIL` is just the three letters, and a number is its digits.
    """
    if isinstance(value, String):
        return value.value
    if isinstance(value, Atom):
        return value.value
    if isinstance(value, Number):
        return str(value.value).encode("ascii")
    if isinstance(value, Nil):
        return b"NIL"
    return None


def nstring(value: Value) -> tuple[bool, bytes | None]:
    """(valid, bytes or None for NIL) for an nstring argument (ID parameters, ENVELOPE fields)."""
    if isinstance(value, String):
        return True, value.value
    if isinstance(value, Nil) or (isinstance(value, Atom) and value.value.upper() == b"NIL"):
        return True, None
    return False, None
