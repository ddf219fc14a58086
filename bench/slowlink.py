"""A slow serial link in a TCP relay: per-direction rate and one-way delay, FIFO, on loopback.

    python -m bench.slowlink --target 127.0.0.1:993 --link phs [--port N] [--seconds 3600]

Each direction is one FIFO line shared by every connection through the link, like a modem:
a segment leaves at max(now, the line's previous departure) + len * 8 / rate and arrives
`delay` later. The departure times are computed, not slept per chunk; a writer per connection
wakes when the head of its queue arrives and writes every segment that is due. Reading pauses
while a connection's queue holds more than QUEUE_LIMIT bytes, so memory stays bounded however
fast the far side sends. Counts are of bytes delivered across the link, each way.

From another bench script (asyncio): `async with SlowLink(host, port, rate_bps=29_200,
delay_s=0.150) as link: ... link.port, link.bytes_up, link.bytes_down`. From blocking code
(imaplib): `with running_in_thread(SlowLink(...)) as link: ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

__all__ = ["LINKS", "QUEUE_LIMIT", "SEGMENT", "LinkSpec", "SlowLink", "running_in_thread"]

QUEUE_LIMIT = 64 * 1024  # bytes queued per direction of a connection before reading pauses
SEGMENT = 512  # bytes per scheduled segment: a PPP-sized frame, so the first byte is not late
_READ = 16 * 1024


@dataclass(frozen=True)
class LinkSpec:
    """A link's rate (bits/s, both ways) and one-way delay (s)."""

    rate_bps: int
    delay_s: float

    @property
    def rtt_s(self) -> float:
        return 2 * self.delay_s


LINKS: dict[str, LinkSpec] = {
    "phs": LinkSpec(29_200, 0.150),  # PHS 32k data: 29.2 kbit/s, 150 ms one way
    "isdn": LinkSpec(64_000, 0.030),  # one ISDN B channel
}


class _Line:
    """One direction of the link: the departure clock all connections share, and the count."""

    def __init__(self, rate_bps: int, delay_s: float) -> None:
        self.rate_bps = rate_bps
        self.delay_s = delay_s
        self.last_departure = 0.0
        self.delivered = 0

    def arrival(self, size: int, now: float) -> float:
        """Schedule `size` bytes on the line; returns when their last byte reaches the far end."""
        if self.rate_bps <= 0:  # unshaped: only the delay (and the count)
            return now + self.delay_s
        self.last_departure = max(now, self.last_departure) + size * 8 / self.rate_bps
        return self.last_departure + self.delay_s


class _Pipe:
    """One direction of one connection: read, schedule, queue (bounded), write when due."""

    def __init__(
        self,
        line: _Line,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_data: Callable[[], None],
    ) -> None:
        self.line, self.reader, self.writer, self.on_data = line, reader, writer, on_data
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.eof = False
        self.changed = asyncio.Event()  # the queue got a segment (or EOF)
        self.drained = asyncio.Event()  # the queue fell under the limit
        self.drained.set()

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self.drained.wait()
                data = await self.reader.read(_READ)
                if not data:
                    break
                self.on_data()
                for i in range(0, len(data), SEGMENT):
                    segment = data[i : i + SEGMENT]
                    self.queue.append((self.line.arrival(len(segment), loop.time()), segment))
                    self.queued += len(segment)
                if self.queued > QUEUE_LIMIT:
                    self.drained.clear()
                self.changed.set()
        finally:
            self.eof = True
            self.changed.set()

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                if self.eof:
                    if self.writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            self.writer.write_eof()
                    return
                self.changed.clear()
                await self.changed.wait()
                continue
            due, _ = self.queue[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            now, batch = loop.time(), bytearray()
            while self.queue and self.queue[0][0] <= now:
                batch += self.queue.popleft()[1]
            self.queued -= len(batch)
            self.writer.write(batch)
            await self.writer.drain()
            self.line.delivered += len(batch)
            if self.queued <= QUEUE_LIMIT:
                self.drained.set()


class SlowLink:
    """A TCP relay on 127.0.0.1 that behaves like a slow serial line toward (host, port).

    `rate_bps` <= 0 relays at loopback speed and only counts (and delays, if `delay_s`).
    `turns` counts how often the client spoke after the server had: a rough number of round
    trips, for estimating a run that would take too long at the real rate.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        rate_bps: int = 0,
        delay_s: float = 0.0,
        rate_down_bps: int | None = None,
        delay_down_s: float | None = None,
        port: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self.up = _Line(rate_bps, delay_s)
        self.down = _Line(
            rate_bps if rate_down_bps is None else rate_down_bps,
            delay_s if delay_down_s is None else delay_down_s,
        )
        self.port = port
        self.connections = 0
        self.turns = 0
        self._last_speaker = "server"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pipes: set[_Pipe] = set()
        self._stopping = False
        self.last_accept = 0.0  # time.monotonic() of the newest connection through the link
        self.cuts = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def bytes_up(self) -> int:
        """Bytes delivered from the client side to the target."""
        return self.up.delivered

    @property
    def bytes_down(self) -> int:
        """Bytes delivered from the target to the client side."""
        return self.down.delivered

    @property
    def queued_bytes(self) -> int:
        """Bytes read but not yet delivered, over all connections (bounded by QUEUE_LIMIT each)."""
        return sum(pipe.queued for pipe in self._pipes)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection still open (quietly: see `_accept`)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the closed transports' connection_lost callbacks run

    async def __aenter__(self) -> SlowLink:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def cut(self) -> None:
        """The line loses its carrier: every connection through it is dropped at once (the
        bytes still queued on the line are lost). Callable from any thread."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._cut)

    def _cut(self) -> None:
        self.cuts += 1
        for writer in list(self._writers):
            writer.transport.abort()

    def _spoke(self, who: str) -> None:
        if who == "client" and self._last_speaker == "server":
            self.turns += 1
        self._last_speaker = who

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        """One connection's relay; the task asyncio.start_server made for it.

        stop() cancels this task. It must then end quietly rather than cancelled: Python 3.11's
        StreamReaderProtocol calls task.exception() on the finished task, which raises (and
        logs a traceback for) CancelledError.
        """
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.last_accept = time.monotonic()
        writers = [c_writer]
        self._writers.add(c_writer)
        try:
            await self._relay(c_reader, c_writer, writers)
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # not ours: let whoever cancelled see it
        finally:
            for w in writers:
                w.close()
                self._writers.discard(w)
            self._tasks.discard(task)

    async def _relay(
        self,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        writers: list[asyncio.StreamWriter],
    ) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            return
        writers.append(s_writer)
        self._writers.add(s_writer)
        self.connections += 1
        # The TCP handshake would cost a round trip on the real line: the client's first
        # bytes wait in its socket buffer meanwhile, and the greeting comes that much later.
        self._spoke("client")
        await asyncio.sleep(self.up.delay_s + self.down.delay_s)
        pipes = (
            _Pipe(self.up, c_reader, s_writer, lambda: self._spoke("client")),
            _Pipe(self.down, s_reader, c_writer, lambda: self._spoke("server")),
        )
        self._pipes.update(pipes)
        try:
            async with asyncio.TaskGroup() as group:
                for pipe in pipes:
                    group.create_task(pipe.read_loop())
                    group.create_task(pipe.write_loop())
        except* (OSError, asyncio.IncompleteReadError):
            pass  # a reset on either side ends the connection, as it would on a real line
        finally:
            self._pipes.difference_update(pipes)


@contextlib.contextmanager
def running_in_thread(link: SlowLink) -> Iterator[SlowLink]:
    """Run `link` on its own event loop in a daemon thread, for blocking clients."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    thread = threading.Thread(target=loop.run_forever, name="slowlink", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(link.start(), loop).result(timeout=10)
        started.set()
        yield link
    finally:
        if started.is_set():
            asyncio.run_coroutine_threadsafe(link.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _serve(args: argparse.Namespace) -> None:
    spec = LINKS[args.link] if args.link else LinkSpec(args.rate_bps, args.delay_ms / 1000)
    host, port = _host_port(args.target)
    async with SlowLink(
        host, port, rate_bps=spec.rate_bps, delay_s=spec.delay_s, port=args.port
    ) as link:
        print(
            f"slowlink 127.0.0.1:{link.port} -> {host}:{port}:"
            f" {spec.rate_bps} bit/s, {spec.delay_s * 1000:.0f} ms one way",
            flush=True,
        )
        started = time.monotonic()
        try:
            await asyncio.sleep(args.seconds)
        finally:
            print(
                f"{link.connections} connections, {link.bytes_up} bytes up,"
                f" {link.bytes_down} bytes down in {time.monotonic() - started:.1f} s",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--port", type=int, default=0, help="local port (default: any free)")
    parser.add_argument("--link", choices=sorted(LINKS), help="a named link (else the two below)")
    parser.add_argument("--rate-bps", type=int, default=29_200)
    parser.add_argument("--delay-ms", type=float, default=150.0, help="one-way delay")
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
