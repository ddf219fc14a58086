"""The fuzz oracles of bench/fuzz_imap.py under hypothesis: the codec as the door runs it.

test_properties.py checks the parsers alone; these run the whole pre-login pipeline (parser,
assembler, PreLoginSession, FETCH planner) and the response side (parser, assembler, FETCH
splitter) on hostile input: only events or a clean protocol error, buffers within their caps,
and every byte the session would send is whole, printable reply lines (no response splitting).
"""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_imap import FUZZ_LIMITS, run_commands, run_responses
from tests.imap import strategies

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIZES = st.lists(st.integers(1, 48), min_size=1, max_size=6)

_PRELOGIN = [
    b"A CAPABILITY\r\n", b"B NOOP\r\n", b"C STARTTLS\r\n", b"D LOGOUT\r\n",
    b'E ID ("name" "x" "x-originating-ip" "1.2.3.4")\r\n', b"F ID NIL\r\n", b"G ID (\r\n",
    b"H LOGIN u p\r\n", b"I LOGIN {3}\r\n", b"abc", b" {2+}\r\nxy\r\n",
    b"J AUTHENTICATE PLAIN\r\n", b"K AUTHENTICATE PLAIN AHUAcA==\r\n", b"*\r\n", b"AHUAcA==\r\n",
    b"L SELECT INBOX\r\n", b"M FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.10>)\r\n",
    b"\xff\xfe\r\n", b"\x00\r\n", b"((((((((\r\n", b"{99999999999999999999}\r\n",
]  # fmt: skip
prelogin_streams = st.lists(
    st.one_of(st.sampled_from(_PRELOGIN), st.binary(max_size=8)), max_size=20
).map(b"".join)


@FUZZ
@given(data=st.one_of(strategies.garbage, prelogin_streams), sizes=SIZES, ok=st.booleans())
def test_hostile_client_bytes_through_the_prelogin_pipeline(
    data: bytes, sizes: list[int], ok: bool
) -> None:
    replies = run_commands(data, sizes, accept_login=ok)
    for reply in replies:
        # Nothing of the input is echoed but a tag: no password, no exception text.
        assert b"Traceback" not in reply and b"Error(" not in reply


@FUZZ
@given(data=strategies.command_streams, sizes=SIZES)
def test_valid_commands_get_one_tagged_reply_each_before_login(
    data: bytes, sizes: list[int]
) -> None:
    replies = b"".join(run_commands(data, sizes))
    # Valid commands (no literal is refused: the assembler's room is checked) end tagged.
    assert replies.count(b"\r\n") >= 1 or not data


@FUZZ
@given(data=st.one_of(strategies.garbage, strategies.response_streams), sizes=SIZES)
def test_hostile_server_bytes_through_the_response_pipeline(data: bytes, sizes: list[int]) -> None:
    run_responses(data, sizes)


def test_a_plain_sasl_exchange_and_a_cancelled_one() -> None:
    plain = base64.b64encode(b"\0bob\0pw123456")
    replies = run_commands(
        b"A STARTTLS\r\nB AUTHENTICATE PLAIN\r\n*\r\nC AUTHENTICATE PLAIN\r\n" + plain + b"\r\n",
        [200],
    )
    assert replies[0] == b"A OK Begin TLS negotiation now.\r\n"
    # Bytes pipelined after STARTTLS are discarded: nothing else is answered.
    assert len(replies) == 1


def test_every_cap_is_reached_by_a_short_input() -> None:
    assert FUZZ_LIMITS.max_line <= 256 and FUZZ_LIMITS.max_literal <= 64
    long_line = b"A NOOP " + b"x" * 300 + b"\r\n"
    replies = run_commands(long_line, [7])
    assert replies == [b"* BYE Line too long\r\n"] or replies[-1].startswith(b"* BYE")
