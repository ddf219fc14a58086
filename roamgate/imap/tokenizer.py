"""Tokens of one IMAP line segment: atoms, quoted strings, lists, sections, codes, literal headers.

A segment is a run of line bytes ending in CRLF: a whole line, or the part of a line up to and
including a literal header (`{n}` CRLF). The tokenizer keeps the open brackets between segments so
a list can span a literal (`(BODY[] {5}` ... `)`). It raises LineError; the engine converts it.
"""

from __future__ import annotations

import re

from roamgate.imap import errors
from roamgate.imap.errors import ErrorKind, LineError
from roamgate.imap.events import (
    CODE_END,
    LINE_END,
    LIST_END,
    LIST_START,
    NIL,
    Atom,
    CodeStart,
    Event,
    ListStart,
    LiteralStart,
    Nil,
    Number,
    Quoted,
    SectionEnd,
    SectionStart,
    Text,
)
from roamgate.imap.limits import MAX_NUMBER64

# Atom bytes outside brackets: ATOM-CHAR, plus `]` (ASTRING-CHAR), the list wildcards `%` `*` and
# `\` (sequence sets, LIST patterns and flags are all atoms to the tokenizer). `[` is an ATOM-CHAR
# (`[Gmail]/Drafts` is one atom); a section is recognised afterwards by its name prefix.
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){"]+')
# Inside a section or response code `]` closes it, so it cannot be part of an atom there.
_BRACKET_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\[\]]+')
_LITERAL = re.compile(rb"~?\{([0-9]+)(\+?)\}\r\n\Z")
_PARTIAL = re.compile(rb"<([0-9]+(?:\.[0-9]+)?)>")
_SIMPLE_QUOTED = re.compile(rb'"([^"\\\x00\r\n]*)"')  # no escapes: the common case
_QUOTED_STOP = re.compile(rb'["\\]')
_QUOTED_BAD = re.compile(rb"[\x00\r\n]")
_TEXT_BAD = re.compile(rb"[\x00\r\n]")

# Atoms that a `[` turns into a fetch-att section (RFC 9051 fetch-att and msg-att, RFC 3516).
SECTION_NAMES = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"})

_SP, _DQUOTE, _LPAREN, _RPAREN = 0x20, 0x22, 0x28, 0x29
_LBRACKET, _RBRACKET, _LBRACE, _TILDE, _LT = 0x5B, 0x5D, 0x7B, 0x7E, 0x3C

# Open brackets on the stack.
_PAREN, _SECTION, _CODE = 0, 1, 2
# Where the cursor stands: a token must follow a space; a token or closer may follow an opener;
# a space, closer or the line end must follow a token.
_AFTER_SPACE, _AFTER_OPEN, _AFTER_TOKEN = 0, 1, 2


def atom_token(value: bytes) -> Atom | Number | Nil:
    """Classify an atom; only canonical spellings become Number or Nil (byte-exact round trips)."""
    if value.isdigit():
        if len(value) <= 19 and (value[0] != 0x30 or len(value) == 1):
            n = int(value)
            if n <= MAX_NUMBER64:
                return Number(n)
    elif value == b"NIL":
        return NIL
    return Atom(value)


def parse_quoted(seg: bytes, pos: int) -> tuple[Quoted, int]:
    """Parse the quoted string opening at seg[pos]; return it and the index after its `"`."""
    i = pos + 1
    parts: list[bytes] = []
    while True:
        m = _QUOTED_STOP.search(seg, i)
        if m is None:
            raise LineError(ErrorKind.BAD_SYNTAX, errors.UNTERMINATED_QUOTED)
        j = m.start()
        parts.append(seg[i:j])
        if seg[j] == _DQUOTE:
            break
        escaped = seg[j + 1 : j + 2]
        if escaped != b'"' and escaped != b"\\":
            raise LineError(ErrorKind.BAD_SYNTAX, errors.BAD_ESCAPE)
        parts.append(escaped)
        i = j + 2
    value = parts[0] if len(parts) == 1 else b"".join(parts)
    bad = _QUOTED_BAD.search(value)
    if bad is not None:
        raise _bad_character(value[bad.start()])
    if not value.isascii():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise LineError(ErrorKind.BAD_UTF8, errors.BAD_UTF8) from None
    return Quoted(value), j + 1


def text(seg: bytes, start: int, end: int) -> Text:
    """resp-text after its space: anything but NUL, CR and LF (8-bit is relayed as it came)."""
    value = seg[start:end]
    bad = _TEXT_BAD.search(value)
    if bad is not None:
        raise _bad_character(value[bad.start()])
    return Text(value)


def literal_header(seg: bytes, pos: int) -> LiteralStart:
    """Parse `{n}`, `{n+}`, `~{n}` or `~{n+}` at seg[pos], which must end the segment."""
    m = _LITERAL.match(seg, pos)
    if m is None:
        raise LineError(ErrorKind.BAD_SYNTAX, errors.INVALID_LITERAL)
    size = _literal_size(m.group(1))
    if size is None:
        raise LineError(ErrorKind.BAD_LITERAL, errors.INVALID_LITERAL_SIZE)
    return LiteralStart(size, synchronizing=not m.group(2), binary=seg[pos] == _TILDE)


def literal_tail(seg: bytes) -> tuple[int | None, bool] | None:
    """If seg ends in a literal header: (size, or None past number64; synchronising).

    Used to skip the rest of a line that already failed: its literals must still be counted out
    rather than read as commands.
    """
    i = seg.rfind(b"{")
    if i < 0:
        return None
    m = _LITERAL.match(seg, i)
    if m is None:
        return None
    return _literal_size(m.group(1)), not m.group(2)


def _literal_size(digits: bytes) -> int | None:
    if len(digits) > 19:
        return None
    size = int(digits)
    return size if size <= MAX_NUMBER64 else None


def _bad_character(c: int) -> LineError:
    if c == 0:
        return LineError(ErrorKind.BAD_CHARACTER, errors.NUL_CHAR)
    if c >= 0x80:
        return LineError(ErrorKind.BAD_CHARACTER, errors.EIGHT_BIT)
    return LineError(ErrorKind.BAD_CHARACTER, errors.CONTROL_CHAR)


def _unexpected(c: int, after_token: bool) -> LineError:
    if c < 0x20 or c >= 0x7F:
        return _bad_character(c)
    if c == _SP:
        return LineError(ErrorKind.BAD_SYNTAX, errors.EXTRA_SPACE)
    if c in (_RPAREN, _RBRACKET):
        return LineError(ErrorKind.BAD_SYNTAX, errors.UNEXPECTED_CLOSE)
    if after_token:
        return LineError(ErrorKind.BAD_SYNTAX, errors.MISSING_SPACE)
    return LineError(ErrorKind.BAD_SYNTAX, errors.UNEXPECTED_CHAR)


class Tokenizer:
    """Turns the argument bytes of a line, segment by segment, into token events."""

    __slots__ = ("_brackets", "_max_depth", "_stack", "_where")

    _stack: list[int]
    _brackets: int
    _where: int

    def __init__(self, max_depth: int) -> None:
        self._max_depth = max_depth
        self.reset()

    def set_max_depth(self, max_depth: int) -> None:
        self._max_depth = max_depth

    def reset(self) -> None:
        """Forget the current line; the next run() starts right after `name SP`."""
        self._stack = []
        self._brackets = 0
        self._where = _AFTER_SPACE

    def run(self, seg: bytes, pos: int, out: list[Event]) -> LiteralStart | None:
        """Tokenize seg[pos:] into out; return the literal header ending it, or None at LineEnd."""
        # The hot loop of the codec for metadata-heavy lines: locals and regex fast paths are
        # deliberate; every rarer case goes through a helper.
        end = len(seg) - 2  # the engine guarantees the CRLF
        append = out.append
        where = self._where
        while True:
            if where == _AFTER_TOKEN:
                if pos == end:
                    self._line_end(out, where)
                    return None
                c = seg[pos]
                if c == _SP:
                    pos += 1
                    where = _AFTER_SPACE
                elif c in (_RPAREN, _RBRACKET):
                    pos = self._close(seg, pos, out)
                    if pos < 0:
                        return None
                    continue
                elif c == _LPAREN and seg[pos - 1] == _RPAREN:
                    # `)(`: body-type-mpart (RFC 3501 `1*body`) and address lists have no
                    # space between the parenthesised items.
                    self._open(_PAREN)
                    append(ListStart(adjacent=True))
                    pos += 1
                    where = _AFTER_OPEN
                    continue
                else:
                    raise _unexpected(c, after_token=True)
            if pos == end:
                self._line_end(out, where)  # raises: a token or closer was due
            c = seg[pos]
            if where == _AFTER_OPEN and (c == _RPAREN or (c == _RBRACKET and self._brackets)):
                pos = self._close(seg, pos, out)
                if pos < 0:
                    return None
                where = _AFTER_TOKEN
                continue
            where = _AFTER_TOKEN
            if c == _DQUOTE:
                m = _SIMPLE_QUOTED.match(seg, pos)
                if m is not None and m.group(1).isascii():
                    append(Quoted(m.group(1)))
                    pos = m.end()
                else:
                    token, pos = parse_quoted(seg, pos)
                    append(token)
                continue
            if c == _LPAREN:
                self._open(_PAREN)
                append(LIST_START)
                pos += 1
                where = _AFTER_OPEN
                continue
            if c == _LBRACE or (c == _TILDE and seg[pos + 1] == _LBRACE):
                literal = literal_header(seg, pos)
                self._where = _AFTER_TOKEN
                return literal
            m = (_BRACKET_ATOM if self._brackets else _ATOM).match(seg, pos)
            if m is None:
                raise _unexpected(c, after_token=False)
            value = m.group()
            pos = m.end()
            if 0x30 <= c <= 0x39:
                append(atom_token(value))
            elif value == b"NIL":
                append(NIL)
            else:
                b = -1 if self._brackets else value.find(b"[")
                if b > 0 and value[:b].upper() in SECTION_NAMES:
                    self._open(_SECTION)
                    append(SectionStart(value[:b]))
                    pos -= len(value) - b - 1
                    where = _AFTER_OPEN
                else:
                    append(Atom(value))

    def _line_end(self, out: list[Event], where: int) -> None:
        if self._stack:
            message = errors.UNCLOSED_LIST if self._stack[-1] == _PAREN else errors.UNCLOSED_BRACKET
            raise LineError(ErrorKind.BAD_SYNTAX, message)
        if where != _AFTER_TOKEN:
            raise LineError(ErrorKind.BAD_SYNTAX, errors.UNEXPECTED_EOL)
        out.append(LINE_END)

    def _close(self, seg: bytes, pos: int, out: list[Event]) -> int:
        """Close the bracket at seg[pos]; return the index after it, or -1 if the line ended."""
        stack = self._stack
        top = stack[-1] if stack else None
        c = seg[pos]
        if c == _RPAREN and top == _PAREN:
            stack.pop()
            out.append(LIST_END)
            return pos + 1
        if c == _RBRACKET and top == _SECTION:
            stack.pop()
            self._brackets -= 1
            pos += 1
            partial = None
            if seg[pos] == _LT:
                m = _PARTIAL.match(seg, pos)
                if m is None:
                    raise LineError(ErrorKind.BAD_SYNTAX, errors.INVALID_PARTIAL)
                partial = m.group(1)
                pos = m.end()
            out.append(SectionEnd(partial))
            return pos
        if c == _RBRACKET and top == _CODE:
            stack.pop()
            self._brackets -= 1
            out.append(CODE_END)
            self._text_tail(seg, pos + 1, out)
            return -1
        raise LineError(ErrorKind.BAD_SYNTAX, errors.UNEXPECTED_CLOSE)

    def resp_text(self, seg: bytes, pos: int, out: list[Event]) -> LiteralStart | None:
        """resp-text after a status word at seg[pos]: `[SP ["[" code "]" ] [SP text]]`."""
        end = len(seg) - 2
        if pos == end:
            out.append(LINE_END)
            return None
        if seg[pos] != _SP:
            raise _unexpected(seg[pos], after_token=True)
        pos += 1
        if pos < end and seg[pos] == _LBRACKET:
            m = _BRACKET_ATOM.match(seg, pos + 1)
            if m is None:
                raise LineError(ErrorKind.BAD_SYNTAX, errors.INVALID_CODE)
            self._open(_CODE)
            out.append(CodeStart(m.group()))
            self._where = _AFTER_TOKEN
            return self.run(seg, m.end(), out)
        out.append(text(seg, pos, end))
        out.append(LINE_END)
        return None

    def _text_tail(self, seg: bytes, pos: int, out: list[Event]) -> None:
        end = len(seg) - 2
        if pos < end:
            if seg[pos] != _SP:
                raise _unexpected(seg[pos], after_token=True)
            out.append(text(seg, pos + 1, end))
        out.append(LINE_END)

    def _open(self, kind: int) -> None:
        if len(self._stack) >= self._max_depth:
            raise LineError(ErrorKind.NESTING_TOO_DEEP, errors.NESTING_TOO_DEEP)
        self._stack.append(kind)
        if kind != _PAREN:
            self._brackets += 1
