"""The slow-link relay: a serial line's timing (rate and delay), exact counts, bounded memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bench.slowlink import QUEUE_LIMIT, SlowLink


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def _round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    got = await reader.readexactly(len(payload))
    writer.close()
    return got


async def test_20_kb_at_64_kbit_takes_two_and_a_half_seconds_and_counts_are_exact(
    echo_port: int,
) -> None:
    payload = bytes(range(256)) * 78 + b"x" * 32  # 20,000 bytes
    async with SlowLink("127.0.0.1", echo_port, rate_bps=64_000) as link:
        started = time.monotonic()
        got = await asyncio.wait_for(_round_trip(link.port, payload), 10)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.05)  # the echo server's close travels back
        assert got == payload
        # Up and down are separate lines: the echo streams back while the rest goes up.
        # The lower bound is the rate limit; the upper one only catches a link that stalls
        # (generous: a loaded 2-core CI machine runs this beside other processes).
        assert 2.0 <= elapsed <= 8.0, elapsed
        assert (link.bytes_up, link.bytes_down) == (20_000, 20_000)
        assert link.connections == 1


async def test_the_delay_adds_to_a_round_trip(echo_port: int) -> None:
    async def ping(delay: float) -> float:
        async with SlowLink("127.0.0.1", echo_port, delay_s=delay) as link:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            writer.write(b"a")
            await reader.readexactly(1)  # connect (a handshake round trip) + the first echo
            started = time.monotonic()
            writer.write(b"b")
            await reader.readexactly(1)
            elapsed = time.monotonic() - started
            writer.close()
            return elapsed

    fast, slow = await ping(0.0), await ping(0.1)
    # Two one-way delays of 0.1 s; upper bounds generous for a loaded machine.
    assert fast < 0.5, fast
    assert slow >= 0.19, slow
    assert slow - fast >= 0.15 and slow <= 1.5, (fast, slow)


async def test_a_fast_sender_is_paused_instead_of_buffered() -> None:
    received = asyncio.Event()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        received.set()
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with SlowLink("127.0.0.1", port, rate_bps=64_000) as link:
            _, writer = await asyncio.open_connection("127.0.0.1", link.port)
            writer.write(b"x" * (4 * 1024 * 1024))  # drain() would wait: the link pushes back
            await asyncio.wait_for(received.wait(), 5)
            await asyncio.sleep(0.3)
            assert 0 < link.queued_bytes <= QUEUE_LIMIT + 16 * 1024
            assert link.bytes_up < 8_000  # 64 kbit/s for about 0.3 s
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_stopping_with_connections_open_logs_nothing(echo_port: int) -> None:
    loop = asyncio.get_running_loop()
    logged: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: logged.append(context))
    try:
        link = SlowLink("127.0.0.1", echo_port, rate_bps=8_000, delay_s=0.05)
        await link.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"x" * 4000)  # four seconds of line: segments still queued at stop()
        await writer.drain()
        await asyncio.sleep(0.3)
        assert link.queued_bytes > 0
        await asyncio.wait_for(link.stop(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b"x" * (link.bytes_down)
        writer.close()
        await asyncio.sleep(0.05)  # any done-callback of the cancelled relay would run by now
    finally:
        loop.set_exception_handler(None)
    assert logged == []
