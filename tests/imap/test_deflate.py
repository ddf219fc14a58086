"""The COMPRESS=DEFLATE codec against plain zlib: round trips, mode switches, bombs, garbage."""

from __future__ import annotations

import base64
import contextlib
import os
import random
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roamgate.demo.mailbox import sample_mailbox
from roamgate.imap.deflate import Deflater, InflateError, Inflater, looks_compressed

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mime_base64(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + b"\r\n"


def _inflate(data: bytes) -> bytes:
    """The independent peer: stdlib zlib, raw DEFLATE, as any RFC 4978 client does it."""
    z = zlib.decompressobj(-15)
    out = z.decompress(data)
    assert not z.unconsumed_tail and not z.unused_data
    return out


# One step: (data, incompressible) to compress, or None for a flush.
_steps = st.lists(
    st.one_of(
        st.none(),
        st.tuples(st.binary(max_size=3000), st.booleans()),
        # Text-like data, so back-references across a mode switch would be tempting for zlib.
        st.tuples(
            st.sampled_from([b"* 1 FETCH (FLAGS (\\Seen))\r\n", b"a OK done\r\n"]).map(
                lambda s: s * 20
            ),
            st.booleans(),
        ),
    ),
    max_size=40,
)


@PROPERTY
@given(steps=_steps, level=st.integers(1, 9))
def test_any_interleaving_of_normal_and_incompressible_data_inflates_to_the_input(
    steps: list[tuple[bytes, bool] | None], level: int
) -> None:
    deflater = Deflater(level)
    wire = bytearray()
    sent = bytearray()
    peer = zlib.decompressobj(-15)  # decodes as the bytes arrive, like a client
    received = bytearray()
    for step in steps:
        if step is None:
            wire += deflater.flush()
            received += peer.decompress(bytes(wire))
            wire.clear()
            # After a flush the client has everything sent so far.
            assert received == sent
        else:
            data, incompressible = step
            wire += deflater.compress(data, incompressible=incompressible)
            sent += data
    wire += deflater.flush()
    received += peer.decompress(bytes(wire))
    assert received == sent


def test_switching_streams_keeps_one_valid_stream_and_saves_work_on_random_data() -> None:
    rng = random.Random(4978)
    noise = rng.randbytes(100_000)
    text = b"* 3 FETCH (UID 42 FLAGS (\\Seen) RFC822.SIZE 1234)\r\n" * 500
    deflater = Deflater(9)
    out = deflater.compress(text)
    out += deflater.compress(noise, incompressible=True)
    out += deflater.compress(_mime_base64(noise), incompressible=True)
    out += deflater.compress(text)
    out += deflater.flush()
    assert _inflate(out) == text + noise + _mime_base64(noise) + text
    # Random bytes go as stored blocks (almost no growth); base64 of them loses its quarter.
    encoded = len(_mime_base64(noise))
    assert len(out) < 2 * 1000 + len(noise) * 1.01 + encoded * 0.8


def test_flush_with_nothing_new_sends_nothing_and_empty_data_is_no_step() -> None:
    deflater = Deflater()
    assert deflater.flush() == b""
    assert deflater.compress(b"") == b""
    first = deflater.compress(b"a NOOP\r\n") + deflater.flush()
    assert first.endswith(b"\x00\x00\xff\xff")  # the sync flush marker
    assert deflater.flush() == b""
    assert _inflate(first) == b"a NOOP\r\n"


def test_level_out_of_range_is_refused() -> None:
    for level in (0, 10):
        with pytest.raises(ValueError):
            Deflater(level)


def test_the_sample_pdf_message_compresses_to_about_three_quarters() -> None:
    message = max(sample_mailbox(large_attachment_bytes=200_000)["INBOX"], key=len)
    deflater = Deflater(6)
    out = bytearray()
    for i in range(0, len(message), 16384):
        chunk = message[i : i + 16384]
        out += deflater.compress(chunk, incompressible=looks_compressed(chunk))
    out += deflater.flush()
    assert _inflate(bytes(out)) == message
    assert len(out) < 0.8 * len(message)


# -- detection


def test_signatures_and_their_base64_look_compressed() -> None:
    rng = random.Random(1)
    samples = [
        b"\xff\xd8\xff\xe0" + rng.randbytes(40),
        b"\x89PNG\r\n\x1a\n" + rng.randbytes(40),
        b"PK\x03\x04" + rng.randbytes(40),
        zlib.compress(b"x" * 100, wbits=31),  # gzip
    ]
    for sample in samples:
        assert looks_compressed(sample), sample[:8]
        assert looks_compressed(_mime_base64(sample)), sample[:8]
    assert looks_compressed(b"\r\n" + _mime_base64(samples[0]))


def test_random_data_and_its_base64_look_compressed_text_does_not() -> None:
    noise = os.urandom(4096)
    assert looks_compressed(noise)
    assert looks_compressed(_mime_base64(noise))
    for message in sample_mailbox(large_attachment_bytes=20_000)["INBOX"][:20]:
        assert not looks_compressed(message[:4096]), message[:60]
    prose = b"Please find the quarterly figures attached; the totals are on page two.\r\n" * 20
    assert not looks_compressed(prose)
    assert not looks_compressed(_mime_base64(prose))
    assert not looks_compressed(b"")
    assert not looks_compressed(noise[:100])  # too short to judge, and too short to matter


# -- inflating what the client sends


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)


@PROPERTY
@given(data=st.binary(max_size=20_000), cut=st.integers(1, 500), cap=st.integers(1, 4096))
def test_inflater_round_trips_any_split_with_any_cap(data: bytes, cut: int, cap: int) -> None:
    wire = _deflate(data)
    inflater = Inflater(cap)
    out = bytearray()
    for i in range(0, len(wire), cut):
        piece = inflater.decompress(wire[i : i + cut])
        assert len(piece) <= cap
        out += piece
        while inflater.pending:
            piece = inflater.decompress()
            assert len(piece) <= cap
            out += piece
    assert out == data


def test_a_decompression_bomb_comes_out_a_capped_piece_at_a_time() -> None:
    bomb = _deflate(b"\x00" * (50 * 1024 * 1024))
    assert len(bomb) < 60 * 1024
    inflater = Inflater(64 * 1024)
    first = inflater.decompress(bomb)
    assert len(first) == 64 * 1024
    assert inflater.pending
    # The rest waits compressed; the caller pulls it only as fast as it can use it.
    total = len(first)
    while inflater.pending:
        piece = inflater.decompress(limit=4096)
        assert len(piece) <= 4096
        total += len(piece)
        if total > 1024 * 1024:
            break
    assert inflater.pending


def test_invalid_data_raises_inflate_error() -> None:
    inflater = Inflater()
    with pytest.raises(InflateError):
        inflater.decompress(b"\xff\xff\xff\xff not deflate at all")


def test_plain_imap_after_compress_is_an_error_or_garbage_never_a_crash() -> None:
    # A client that keeps talking plain text: zlib may read it as blocks; either it fails
    # or it yields bytes the IMAP parser will refuse. Only InflateError may escape.
    for plain in (b"b NOOP\r\n", b"c LOGOUT\r\n", b"\x07\x00garbage" * 10):
        with contextlib.suppress(InflateError):
            Inflater().decompress(plain)


def test_data_after_the_final_block_is_an_error() -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    ended = c.compress(b"a NOOP\r\n") + c.flush(zlib.Z_FINISH)
    inflater = Inflater()
    with pytest.raises(InflateError):
        inflater.decompress(ended + b"more")
    inflater = Inflater()
    assert inflater.decompress(ended) == b"a NOOP\r\n"
    with pytest.raises(InflateError):
        inflater.decompress(b"more")


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Inflater(0)
