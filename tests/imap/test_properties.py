"""Property tests: split invariance, round trips, and arbitrary input never raising."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roamgate.imap.assemble import assemble
from roamgate.imap.command_parser import CommandParser
from roamgate.imap.engine import ParserEngine
from roamgate.imap.events import ConnectionClosed, Event, LiteralChunk, LiteralStart, ProtocolError
from roamgate.imap.limits import MIB, Limits
from roamgate.imap.response_parser import ResponseParser
from roamgate.imap.serialize import (
    command_parts,
    serialize_command,
    serialize_events,
    serialize_response,
)
from roamgate.imap.values import Command, Response
from tests.imap import strategies
from tests.imap.support import bytewise, feed, merge_chunks, split_at

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(PROPERTY, max_examples=300)
SPLITS = st.lists(st.integers(1, 40), min_size=1, max_size=8)


def parse(
    cls: type[ParserEngine], pieces: list[bytes], limits: Limits | None = None
) -> list[Event]:
    return merge_chunks(feed(cls(limits), pieces, eof=True, decide=_even))


def _even(literal: LiteralStart) -> bool:
    """A decision that depends only on the literal, so it is the same however bytes arrive."""
    return literal.size % 2 == 0


def parse_valid(cls: type[ParserEngine], data: bytes) -> list[Event]:
    events = merge_chunks(feed(cls(), [data], eof=True))
    assert events[-1] == ConnectionClosed()
    assert not any(isinstance(e, ProtocolError) for e in events), events
    return events[:-1]


@PROPERTY
@given(data=strategies.command_streams, sizes=SPLITS)
def test_commands_split_invariance_and_round_trips(data: bytes, sizes: list[int]) -> None:
    events = parse_valid(CommandParser, data)
    # (a) the same events however the bytes arrive
    assert merge_chunks(feed(CommandParser(), split_at(data, sizes), eof=True))[:-1] == events
    assert merge_chunks(feed(CommandParser(), bytewise(data), eof=True))[:-1] == events
    # (b) serialize(parse(b)) == b and parse(serialize(events)) == events
    assert serialize_events(events) == data
    assert parse_valid(CommandParser, serialize_events(events)) == events
    # ... and for assembled commands, whichever string forms the serializer picks
    for command in assemble(events):
        assert isinstance(command, Command)
        assert assemble(parse_valid(CommandParser, serialize_command(command))) == [command]
        synchronising = b"".join(command_parts(command))
        assert assemble(parse_valid(CommandParser, synchronising)) == [command]


@PROPERTY
@given(data=strategies.response_streams, sizes=SPLITS)
def test_responses_split_invariance_and_round_trips(data: bytes, sizes: list[int]) -> None:
    events = parse_valid(ResponseParser, data)
    assert merge_chunks(feed(ResponseParser(), split_at(data, sizes), eof=True))[:-1] == events
    assert merge_chunks(feed(ResponseParser(), bytewise(data), eof=True))[:-1] == events
    assert serialize_events(events) == data
    assert parse_valid(ResponseParser, serialize_events(events)) == events
    for response in assemble(events):
        assert isinstance(response, Response)
        assert assemble(parse_valid(ResponseParser, serialize_response(response))) == [response]


SMALL = Limits(max_line=64, max_literal=40, max_depth=3, max_chunk=8, max_nonsync_literal=20)
# Tight caps except max_chunk: fed all at once, a sync literal's body would otherwise count as a
# client sending data before its continuation, which legitimately depends on timing.
TIGHT = Limits(max_line=64, max_literal=40, max_depth=3, max_chunk=MIB, max_nonsync_literal=20)


@FUZZ
@given(data=strategies.garbage, sizes=st.lists(st.integers(1, 16), min_size=1, max_size=8))
def test_arbitrary_bytes_never_raise_and_never_overfill(data: bytes, sizes: list[int]) -> None:
    for cls in (CommandParser, ResponseParser):
        parser = cls(SMALL)

        def bounded(p: ParserEngine) -> None:
            assert p.buffered <= SMALL.max_line

        events = feed(parser, split_at(data, sizes), eof=True, decide=_even, check=bounded)
        last = events[-1]
        assert last == ConnectionClosed() or (isinstance(last, ProtocolError) and last.fatal)
        for event in events:
            if isinstance(event, LiteralChunk):
                assert 0 < len(event.data) <= SMALL.max_chunk
            if isinstance(event, ProtocolError):
                assert event.message.isascii()


@FUZZ
@given(data=strategies.garbage, sizes=SPLITS)
def test_arbitrary_bytes_give_the_same_events_however_they_arrive(
    data: bytes, sizes: list[int]
) -> None:
    for cls in (CommandParser, ResponseParser):
        whole = parse(cls, [data], TIGHT)
        assert parse(cls, split_at(data, sizes), TIGHT) == whole
        assert parse(cls, bytewise(data), TIGHT) == whole
