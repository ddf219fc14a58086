"""The receive_data / next_event state machine both IMAP parsers share (h11-style, sans-IO).

Subclasses parse only the start of a line (tag and command name, or `*`/`+`/tag and response
name); everything after it — tokens, literals, limits, error recovery — lives here.

Invariants (tests/imap checks each):
1. Input is cut into segments: line bytes up to an LF, where a segment that ends in a literal
   header (`{n}` CRLF) is followed by n bytes of literal body and then the next segment of the same
   line. A segment is parsed only when it is complete and only after every event of the previous
   one has been handed out, so a mode switch the caller makes between two events
   (expect_raw_line, accept_literal, reject_literal) applies to the very next byte.
2. The events depend only on the bytes and the caller's literal decisions, never on how
   receive_data split them (LiteralChunk boundaries aside). The one timing-dependent error is
   DATA_BEFORE_CONTINUATION: over max_line + max_chunk bytes arriving while a synchronising
   literal still awaits its decision, i.e. a client that does not wait for `+`.
3. Buffering is bounded: a line (all its segments, literal bodies excluded) longer than
   max_line is a fatal error the moment that many bytes are buffered; literal bodies leave the
   buffer as LiteralChunk events of at most max_chunk bytes or are skipped without being copied.
4. Literal bodies are counted, never interpreted: no byte inside a literal starts a line.
5. Every CommandStart / ResponseStart is followed by exactly one LineEnd or one ProtocolError.
   A segment that fails produces no events of its own; the rest of its line (literals counted
   out) is skipped, and a non-fatal ProtocolError is emitted only then, so the parser stands at
   the start of the next line and the caller's BAD follows the peer's last byte of that line.
6. A synchronising client literal (`{n}`) within the limits is announced by LiteralStart and then
   next_event returns PAUSED until accept_literal() or reject_literal(); one over the limit is
   refused at once (the client sends nothing more for that command). Non-synchronising and
   server literals over the limit cannot be refused in time: they are skipped, then reported.
7. Invalid input never raises: tokenizer errors are LineError, caught at the segment boundary.
   Only caller mistakes raise (RuntimeError): data after EOF, next_event after a fatal error,
   a literal decision when none is pending.
8. After a fatal ProtocolError nothing more is parsed; after ConnectionClosed it repeats.
"""

from __future__ import annotations

import enum
from collections import deque

from roamgate.imap import errors
from roamgate.imap.errors import ErrorKind, LineError
from roamgate.imap.events import (
    LITERAL_END,
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Event,
    LiteralChunk,
    LiteralStart,
    NextEvent,
    ProtocolError,
    RawLine,
)
from roamgate.imap.limits import Limits
from roamgate.imap.receive_buffer import ReceiveBuffer
from roamgate.imap.tokenizer import Tokenizer, literal_tail, text


class _State(enum.Enum):
    LINE = "line"  # waiting for a complete segment
    LITERAL = "literal"  # handing out literal body bytes
    DECISION = "decision"  # a synchronising literal waits for the caller
    SKIP_LITERAL = "skip-literal"  # counting out a literal of a line that already failed
    CLOSED = "closed"
    FAILED = "failed"


class ParserEngine:
    """Shared machinery; see CommandParser and ResponseParser for the two directions."""

    # True on the client side: `{n}` makes the client wait for a continuation request.
    _literals_wait: bool = False

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        self._buf = ReceiveBuffer()
        self._queue: deque[Event] = deque()
        self._tokenizer = Tokenizer(self.limits.max_depth)
        self._state = _State.LINE
        self._eof = False
        self._in_line = False  # a segment of the current line has been consumed
        self._line_len = 0
        self._tag: bytes | None = None
        self._remaining = 0  # literal body bytes still to deliver or skip
        self._binary = False
        self._pending: LiteralStart | None = None
        self._error: tuple[ErrorKind, str] | None = None  # reported once the line is skipped
        self._raw_next = False

    # -- public API ---------------------------------------------------------------------------

    def set_limits(self, limits: Limits) -> None:
        """New caps from the next line on (after login a client may send larger commands)."""
        self.limits = limits
        self._tokenizer.set_max_depth(limits.max_depth)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events (for tests and back-pressure)."""
        return len(self._buf)

    @property
    def pending_literal(self) -> LiteralStart | None:
        """The synchronising literal awaiting accept_literal() / reject_literal(), if any."""
        return self._pending

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; b"" means the peer closed its side (EOF)."""
        if self._state is _State.FAILED:
            return  # the caller is closing; late bytes do not matter
        if self._eof:
            raise RuntimeError("receive_data() after EOF")
        if data:
            self._buf.append(data)
        else:
            self._eof = True

    def next_event(self) -> NextEvent:
        """The next event, NEED_DATA, or PAUSED while a synchronising literal awaits a decision."""
        while True:
            if self._queue:
                return self._queue.popleft()
            state = self._state
            if state is _State.LINE:
                result = self._next_segment()
            elif state is _State.LITERAL:
                result = self._next_chunk()
            elif state is _State.SKIP_LITERAL:
                result = self._skip_literal()
            elif state is _State.DECISION:
                if len(self._buf) > self.limits.max_line + self.limits.max_chunk:
                    return self._fatal(
                        ErrorKind.DATA_BEFORE_CONTINUATION, errors.DATA_BEFORE_CONTINUATION
                    )
                return PAUSED
            elif state is _State.CLOSED:
                return ConnectionClosed()
            else:
                raise RuntimeError("next_event() after a fatal ProtocolError")
            if result is not None:
                return result

    def expect_raw_line(self) -> None:
        """Read the next line verbatim as RawLine (a SASL response, or `DONE` ending IDLE)."""
        if self._in_line or self._state is not _State.LINE:
            raise RuntimeError("expect_raw_line() in the middle of a line")
        self._raw_next = True

    # -- segments -----------------------------------------------------------------------------

    def _next_segment(self) -> NextEvent | None:
        buf = self._buf
        end = buf.line_end()
        if end < 0:
            if self._line_len + len(buf) > self.limits.max_line:
                return self._fatal(ErrorKind.LINE_TOO_LONG, errors.LINE_TOO_LONG)
            if not self._eof:
                return NEED_DATA
            if len(buf) == 0 and not self._in_line:
                self._state = _State.CLOSED
                return ConnectionClosed()
            return self._fatal(ErrorKind.TRUNCATED, errors.TRUNCATED)
        self._line_len += end
        if self._line_len > self.limits.max_line:
            return self._fatal(ErrorKind.LINE_TOO_LONG, errors.LINE_TOO_LONG)
        seg = buf.take(end)
        first = not self._in_line
        self._in_line = True
        raw = self._raw_next
        self._raw_next = False
        if self._error is not None:
            self._skip_rest(seg)
            return None
        out: list[Event] = []
        try:
            if not seg.endswith(b"\r\n"):
                raise LineError(ErrorKind.BAD_SYNTAX, errors.MISSING_CRLF)
            if raw:
                out.append(RawLine(text(seg, 0, len(seg) - 2).value))
                literal = None
            elif first:
                if len(seg) == 2:
                    raise LineError(ErrorKind.BAD_SYNTAX, errors.EMPTY_LINE)
                literal = self._start_line(seg, out)
            else:
                literal = self._tokenizer.run(seg, 0, out)
            if literal is not None:
                self._check_literal(literal)
        except LineError as e:
            self._error = (e.kind, e.message)
            self._skip_rest(seg)
            return None
        self._queue.extend(out)
        if literal is None:
            self._end_line()
        else:
            self._queue.append(literal)
            self._remaining = literal.size
            self._binary = literal.binary
            if literal.synchronizing and self._literals_wait:
                self._pending = literal
                self._state = _State.DECISION
            else:
                self._state = _State.LITERAL
        return None

    def _start_line(self, seg: bytes, out: list[Event]) -> LiteralStart | None:
        """Parse the start of a line (seg ends in CRLF and is not empty); set self._tag."""
        raise NotImplementedError

    def _check_literal(self, literal: LiteralStart) -> None:
        cap = self.limits.max_literal
        if not literal.synchronizing:
            cap = self.limits.nonsync_literal_cap
        if literal.size > cap:
            raise LineError(ErrorKind.LITERAL_TOO_LARGE, errors.LITERAL_TOO_LARGE)

    def _skip_rest(self, seg: bytes) -> None:
        """The line failed; count out a literal that ends seg, or report the error now."""
        tail = literal_tail(seg)
        if tail is None or (tail[1] and self._literals_wait):
            # No literal follows, or the client waits for a `+` it will never get.
            self._report_error()
            return
        size = tail[0]
        if size is None:
            # A literal we cannot count: the next line cannot be found.
            self._queue.append(self._fatal(ErrorKind.BAD_LITERAL, errors.INVALID_LITERAL_SIZE))
            return
        if not self.limits.skip_oversized_nonsync and size > self.limits.nonsync_literal_cap:
            self._queue.append(self._fatal(ErrorKind.LITERAL_TOO_LARGE, errors.LITERAL_TOO_LARGE))
            return
        self._remaining = size
        self._state = _State.SKIP_LITERAL

    def _report_error(self) -> None:
        assert self._error is not None
        kind, message = self._error
        self._queue.append(ProtocolError(kind, message, fatal=False, tag=self._tag))
        self._end_line()

    def _end_line(self) -> None:
        self._state = _State.LINE
        self._in_line = False
        self._line_len = 0
        self._tag = None
        self._error = None
        self._tokenizer.reset()

    # -- literal bodies -----------------------------------------------------------------------

    def _next_chunk(self) -> NextEvent | None:
        if self._remaining == 0:
            self._state = _State.LINE
            return LITERAL_END
        buf = self._buf
        if len(buf) == 0:
            return self._fatal(ErrorKind.TRUNCATED, errors.TRUNCATED) if self._eof else NEED_DATA
        n = min(self._remaining, len(buf), self.limits.max_chunk)
        chunk = buf.take(n)
        self._remaining -= n
        if not self._binary and self.limits.reject_nul_in_literal:
            nul = chunk.find(0)
            if nul >= 0:
                # Deliver what precedes the NUL so the events do not depend on chunking.
                self._error = (ErrorKind.BAD_CHARACTER, errors.NUL_IN_LITERAL)
                self._state = _State.SKIP_LITERAL
                return LiteralChunk(chunk[:nul]) if nul else None
        return LiteralChunk(chunk)

    def _skip_literal(self) -> NextEvent | None:
        if self._remaining:
            buf = self._buf
            if len(buf) == 0:
                return (
                    self._fatal(ErrorKind.TRUNCATED, errors.TRUNCATED) if self._eof else NEED_DATA
                )
            n = min(self._remaining, len(buf))
            buf.drop(n)
            self._remaining -= n
            if self._remaining:
                return None
        self._state = _State.LINE  # the rest of the failed line follows
        return None

    # -- literal decisions (client side) ------------------------------------------------------

    def accept_literal(self) -> None:
        """Let the pending synchronising literal through (the caller sends `+ ...`)."""
        self._take_pending()
        self._state = _State.LITERAL

    def reject_literal(self) -> None:
        """Refuse the pending synchronising literal; next_event reports LITERAL_REFUSED."""
        self._take_pending()
        self._error = (ErrorKind.LITERAL_REFUSED, errors.LITERAL_REFUSED)
        self._report_error()

    def _take_pending(self) -> None:
        if self._state is not _State.DECISION:
            raise RuntimeError("no synchronising literal is waiting for a decision")
        self._pending = None

    def _fatal(self, kind: ErrorKind, message: str) -> ProtocolError:
        self._state = _State.FAILED
        self._queue.clear()
        return ProtocolError(kind, message, fatal=True, tag=self._tag)
