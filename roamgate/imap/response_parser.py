"""Parser for the server side: tagged, untagged and continuation responses, literals streamed.

Status responses (OK, NO, BAD, BYE, PREAUTH) end in resp-text: an optional `[CODE args]` and free
text, which is kept as one Text event because human text need not follow the token grammar.
Other responses are tokens, so `* 12 FETCH (UID 7 BODY[1] {n}` is fully visible before the
literal body arrives.
"""

from __future__ import annotations

import re

from roamgate.imap import errors
from roamgate.imap.command_parser import TAG
from roamgate.imap.engine import ParserEngine
from roamgate.imap.errors import ErrorKind, LineError
from roamgate.imap.events import LINE_END, Event, LiteralStart, ResponseKind, ResponseStart
from roamgate.imap.limits import MAX_NUMBER64
from roamgate.imap.tokenizer import text

STATUS_NAMES = frozenset({b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"})
_NAME = re.compile(rb'[A-Za-z][^\x00-\x20\x7f-\xff(){"%*\\\[\]]*')
_NUMBER = re.compile(rb"[0-9]+")
_SP, _PLUS, _STAR, _ZERO = 0x20, 0x2B, 0x2A, 0x30


class ResponseParser(ParserEngine):
    """Server responses in, events out; literals are never synchronising on this side."""

    _literals_wait = False

    def _start_line(self, seg: bytes, out: list[Event]) -> LiteralStart | None:
        end = len(seg) - 2
        first = seg[0]
        if first == _PLUS:
            out.append(ResponseStart(ResponseKind.CONTINUATION, None, None, b""))
            if end > 1:
                if seg[1] != _SP:
                    raise LineError(ErrorKind.BAD_SYNTAX, errors.MISSING_SPACE)
                out.append(text(seg, 2, end))
            out.append(LINE_END)
            return None
        number = None
        if first == _STAR:
            if end < 2 or seg[1] != _SP:
                raise LineError(ErrorKind.BAD_SYNTAX, errors.MISSING_SPACE)
            kind, tag, pos = ResponseKind.UNTAGGED, None, 2
            m = _NUMBER.match(seg, pos)
            if m is not None:
                digits = m.group()
                number = int(digits) if len(digits) <= 19 else MAX_NUMBER64 + 1
                if (digits[0] == _ZERO and len(digits) > 1) or number > MAX_NUMBER64:
                    raise LineError(ErrorKind.BAD_SYNTAX, errors.INVALID_NUMBER)
                pos = m.end()
                if pos == end or seg[pos] != _SP:
                    raise LineError(ErrorKind.BAD_SYNTAX, errors.MISSING_RESPONSE_NAME)
                pos += 1
        else:
            m = TAG.match(seg)
            if m is None or m.end() == end or seg[m.end()] != _SP:
                raise LineError(ErrorKind.BAD_SYNTAX, errors.INVALID_TAG)
            kind, tag, pos = ResponseKind.TAGGED, m.group(), m.end() + 1
            self._tag = tag
        m = _NAME.match(seg, pos)
        if m is None:
            raise LineError(ErrorKind.BAD_SYNTAX, errors.MISSING_RESPONSE_NAME)
        name = m.group()
        out.append(ResponseStart(kind, tag, number, name))
        pos = m.end()
        if number is None and name.upper() in STATUS_NAMES:
            return self._tokenizer.resp_text(seg, pos, out)
        if pos == end:
            out.append(LINE_END)
            return None
        if seg[pos] != _SP:
            raise LineError(ErrorKind.BAD_SYNTAX, errors.MISSING_SPACE)
        return self._tokenizer.run(seg, pos + 1, out)
