"""Fuzz the IMAP codec as the door uses it: parser, assembler, pre-login session, FETCH splitter.

The oracles (`run_commands`, `run_responses`) are plain functions: tests/imap/test_fuzz_oracles.py
drives them with hypothesis in the suite, and `python -m bench.fuzz_imap TARGET` drives them with
atheris (coverage-guided, libFuzzer) for a bounded time. Each oracle fails with AssertionError or
the unexpected exception itself; everything the codec may legitimately do with hostile input
(events, ProtocolError, a close) passes.

    python -m bench.fuzz_imap commands -max_total_time=300 -rss_limit_mb=1024
    python -m bench.fuzz_imap responses -max_total_time=300 -rss_limit_mb=1024
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from roamgate.imap.assemble import Assembler
from roamgate.imap.command_parser import CommandParser
from roamgate.imap.engine import ParserEngine
from roamgate.imap.events import (
    NEED_DATA,
    PAUSED,
    CommandStart,
    ConnectionClosed,
    Event,
    LineEnd,
    LiteralChunk,
    ProtocolError,
    RawLine,
    ResponseStart,
)
from roamgate.imap.fetch_plan import plan_fetch
from roamgate.imap.fetch_response import FetchSplitter
from roamgate.imap.limits import Limits
from roamgate.imap.prelogin import (
    CheckLogin,
    Close,
    PreLoginSession,
    ReadRawLine,
    Send,
    StartTls,
)
from roamgate.imap.response_parser import ResponseParser
from roamgate.imap.values import Command, Response

# Small caps so that a short input reaches every limit; the door's own are larger.
FUZZ_LIMITS = Limits(
    max_line=256, max_literal=64, max_depth=4, max_chunk=16, max_nonsync_literal=32
)
FUZZ_LITERAL_TOTAL = 96
# A line the gateway sends: `* ...`, `+ ...` or `tag ...`, printable, one CRLF at its end.
_REPLY_LINE = re.compile(rb"(\*|\+|[!-~]+) [ -~]*\r\n")
_ERROR_TYPES = (ProtocolError,)


def _pieces(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = max(1, sizes[i % len(sizes)]) if sizes else len(data)
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


def _check_line_events(events: list[Event]) -> None:
    """Invariant 5 of the engine: each start is closed by exactly one LineEnd or ProtocolError."""
    open_line = False
    for event in events:
        if isinstance(event, CommandStart | ResponseStart):
            assert not open_line, events
            open_line = True
        elif isinstance(event, LineEnd | ProtocolError):
            open_line = False
        elif isinstance(event, LiteralChunk):
            assert 0 < len(event.data) <= FUZZ_LIMITS.max_chunk
        if isinstance(event, ProtocolError):
            assert event.message.isascii() and "\n" not in event.message


def _check_replies(data: bytes) -> None:
    """No response splitting: every byte the session sends is whole, printable reply lines."""
    assert data.endswith(b"\r\n"), data
    for line in data[:-2].split(b"\r\n"):
        assert _REPLY_LINE.fullmatch(line + b"\r\n"), data


def _drain(
    parser: ParserEngine, decide: Callable[[int], bool], on_event: Callable[[Event], bool]
) -> bool:
    """Hand out events until NEED_DATA; True when the parser stopped (fatal, closed, or told)."""
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            return False
        if event is PAUSED:
            literal = parser.pending_literal
            assert literal is not None
            if decide(literal.size):
                parser.accept_literal()
            else:
                parser.reject_literal()
            continue
        assert not isinstance(event, type(NEED_DATA))
        if on_event(event):
            return True
        if isinstance(event, ConnectionClosed) or (
            isinstance(event, ProtocolError) and event.fatal
        ):
            return True


def run_commands(data: bytes, sizes: Sequence[int], accept_login: bool = False) -> list[bytes]:
    """Client bytes through what the door runs before login; return what it would send."""
    state: dict[str, object] = {
        "parser": CommandParser(FUZZ_LIMITS),
        "assembler": Assembler(FUZZ_LITERAL_TOTAL),
        "restarted": False,
    }
    session = PreLoginSession(tls_active=False, max_failures=3)
    sent: list[bytes] = []
    events: list[Event] = []

    def parser() -> ParserEngine:
        p = state["parser"]
        assert isinstance(p, CommandParser)
        return p

    def assembler() -> Assembler:
        a = state["assembler"]
        assert isinstance(a, Assembler)
        return a

    def decide(size: int) -> bool:
        return size <= assembler().room

    def on_event(event: Event) -> bool:
        events.append(event)
        item = assembler().push(event)
        if item is None or isinstance(item, Response):
            return False
        if isinstance(item, ConnectionClosed):
            return True
        if isinstance(item, Command):
            plan_fetch(item)  # the post-login FETCH planner sees the same commands
        for action in session.handle(item):
            if isinstance(action, Send):
                _check_replies(action.data)
                sent.append(action.data)
            elif isinstance(action, Close):
                return True
            elif isinstance(action, StartTls):
                # The door discards what is buffered and starts over (rule 3).
                session.tls_started()
                state["parser"] = CommandParser(FUZZ_LIMITS)
                state["assembler"] = Assembler(FUZZ_LITERAL_TOTAL)
                state["restarted"] = True
                return True  # stop draining the old parser: its bytes are dropped
            elif isinstance(action, ReadRawLine):
                parser().expect_raw_line()
            elif isinstance(action, CheckLogin):
                for result in session.login_result(
                    action.tag, ok=accept_login, temporary=False, caps=["IMAP4rev1"]
                ):
                    if isinstance(result, Send):
                        _check_replies(result.data)
                        sent.append(result.data)
                    elif isinstance(result, Close):
                        return True
                if accept_login:
                    return True
        return False

    done = False
    for piece in _pieces(data, sizes):
        p = parser()
        p.receive_data(piece)
        if _drain(p, decide, on_event):
            if state["restarted"]:
                state["restarted"] = False
                continue
            done = True
            break
        # Bounded: at most one line beyond what was just fed (invariant 3).
        assert parser().buffered <= FUZZ_LIMITS.max_line + len(piece), parser().buffered
    if not done:
        p = parser()
        p.receive_data(b"")
        _drain(p, decide, on_event)
    _check_line_events(events)
    return sent


def run_responses(data: bytes, sizes: Sequence[int]) -> list[Response | ProtocolError]:
    """Server bytes through the response parser, the assembler and the FETCH splitter."""
    parser = ResponseParser(FUZZ_LIMITS)
    assembler = Assembler(FUZZ_LITERAL_TOTAL)
    splitter: FetchSplitter | None = None
    out: list[Response | ProtocolError] = []
    events: list[Event] = []

    def on_event(event: Event) -> bool:
        nonlocal splitter
        events.append(event)
        if isinstance(event, ResponseStart):
            splitter = FetchSplitter(record=frozenset({b"FLAGS", b"BODYSTRUCTURE"}))
        elif splitter is not None and not isinstance(event, LineEnd | ProtocolError):
            splitter.push(event)
        if isinstance(event, LineEnd | ProtocolError):
            splitter = None
        item = assembler.push(event)
        if isinstance(item, Response | ProtocolError):
            out.append(item)
        assert not isinstance(item, Command | RawLine)
        return False

    done = False
    for piece in _pieces(data, sizes):
        parser.receive_data(piece)
        if _drain(parser, lambda _size: True, on_event):
            done = True
            break
        assert parser.buffered <= FUZZ_LIMITS.max_line + len(piece), parser.buffered
    if not done:
        parser.receive_data(b"")
        _drain(parser, lambda _size: True, on_event)
    _check_line_events(events)
    return out


def _split_input(data: bytes) -> tuple[list[int], bytes]:
    """The first bytes choose how the rest is cut into receive_data calls."""
    sizes = [1 + b % 48 for b in data[:4]] or [1]
    return sizes, data[4:]


def main(argv: list[str]) -> None:
    import atheris  # only the fuzzing run needs it (the dev extra installs it)

    targets: dict[str, Callable[[bytes], object]] = {
        "commands": lambda d: run_commands(_split_input(d)[1], _split_input(d)[0], d[:1] == b"L"),
        "responses": lambda d: run_responses(_split_input(d)[1], _split_input(d)[0]),
    }
    if len(argv) < 2 or argv[1] not in targets:
        sys.exit(f"usage: python -m bench.fuzz_imap {{{','.join(targets)}}} [libFuzzer options]")
    target = targets[argv[1]]
    atheris.instrument_all()
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
