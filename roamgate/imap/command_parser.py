"""Parser for the client side: `tag SP command-name [SP arguments] CRLF`, literals streamed.

It knows each command's tag and name (UID commands become `UID FETCH`) and the token structure
of its arguments, which is what a relaying proxy needs; the meaning of the arguments is left to
the assemble layer and the session logic.
"""

from __future__ import annotations

import re

from roamgate.imap import errors
from roamgate.imap.engine import ParserEngine
from roamgate.imap.errors import ErrorKind, LineError
from roamgate.imap.events import LINE_END, CommandStart, Event, LiteralStart

# tag = 1*<any ASTRING-CHAR except "+">
TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){"%*+\\]+')
# Command names are atoms; every defined one starts with a letter.
_NAME = re.compile(rb'[A-Za-z][^\x00-\x20\x7f-\xff(){"%*\\\[\]]*')
_SP = 0x20


class CommandParser(ParserEngine):
    """Client commands in, events out: `receive_data(bytes)`, then `next_event()` until NEED_DATA.

    A synchronising literal `{n}` is announced by LiteralStart, after which next_event() returns
    PAUSED until the caller calls accept_literal() (and sends `+ ...`) or reject_literal().
    """

    _literals_wait = True

    def _start_line(self, seg: bytes, out: list[Event]) -> LiteralStart | None:
        end = len(seg) - 2
        m = TAG.match(seg)
        if m is None or (m.end() < end and seg[m.end()] != _SP):
            raise LineError(ErrorKind.BAD_SYNTAX, errors.INVALID_TAG)
        tag = m.group()
        self._tag = tag
        if m.end() == end:
            raise LineError(ErrorKind.BAD_SYNTAX, errors.MISSING_NAME)
        start = m.end() + 1
        m = _NAME.match(seg, start)
        if m is None:
            message = errors.EXTRA_SPACE if seg[start] == _SP else errors.INVALID_NAME
            raise LineError(ErrorKind.BAD_SYNTAX, message)
        pos = m.end()
        if pos < end and seg[pos] == _SP and m.group().upper() == b"UID":
            sub = _NAME.match(seg, pos + 1)
            if sub is not None:
                pos = sub.end()
        out.append(CommandStart(tag, seg[start:pos]))
        if pos == end:
            out.append(LINE_END)
            return None
        if seg[pos] != _SP:
            raise LineError(ErrorKind.BAD_SYNTAX, errors.INVALID_NAME)
        return self._tokenizer.run(seg, pos + 1, out)
