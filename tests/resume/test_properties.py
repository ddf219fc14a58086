"""Cutting the carrier at any byte, any number of times, loses and duplicates nothing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.resume.harness import Run


def test_a_run_without_cuts_delivers_both_streams() -> None:
    run = Run(b"a" * 100_000, bytes(range(256)) * 900, cuts=[])
    run.run()
    assert bytes(run.server_got) == b"a" * 100_000
    assert bytes(run.client_got) == bytes(range(256)) * 900
    assert run.carriers == 1


@settings(max_examples=300, deadline=None)
@given(
    client_data=st.binary(max_size=3000).map(lambda b: b * 40),
    server_data=st.binary(max_size=5000).map(lambda b: b * 60),
    cuts=st.lists(st.integers(min_value=0, max_value=40_000), max_size=30),
    deliver=st.integers(min_value=1, max_value=20_000),
    read=st.integers(min_value=1, max_value=70_000),
)
def test_cuts_at_any_byte_give_the_streams_of_a_run_without_cuts(
    client_data: bytes, server_data: bytes, cuts: list[int], deliver: int, read: int
) -> None:
    run = Run(client_data, server_data, list(cuts), deliver=deliver, read=read)
    run.run()
    assert bytes(run.server_got) == client_data
    assert bytes(run.client_got) == server_data
    assert run.refusals == []
    # Each cut is a new carrier (the last may still be unused when the stream finished).
    assert run.carriers >= 1 + len(cuts) - len(run.cuts) - 1


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=300), min_size=20, max_size=60))
def test_many_cuts_inside_frames_and_handshakes(cuts: list[int]) -> None:
    # Small budgets: carriers cut inside the challenge, the answer and the first frames.
    run = Run(b"x" * 5_000, b"y" * 9_000, [c + 120 for c in cuts], deliver=7, read=3)
    run.run()
    assert bytes(run.server_got) == b"x" * 5_000
    assert bytes(run.client_got) == b"y" * 9_000
