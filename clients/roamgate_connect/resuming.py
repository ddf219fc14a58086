"""A mail client's connection carried as a resumable stream: it outlives the SSH connection.

The local socket stays open while the line is down. What the mail client sends meanwhile is
held (up to the stream's cap, then the local socket is simply not read: TCP back-pressure), and
once the link is back (re-authenticated by the Link: no new code inside the travel window, a
code asked through the prompter outside it) the stream is resumed on a new `imap-resume`
channel with a proof over the gateway's fresh nonce; both ends send again what the other missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncssh

from roamgate.resume.endpoint import StreamError
from roamgate.resume.handshake import ClientStream, StreamOpened, StreamRefused, StreamResumed
from roamgate_connect.link import Link

log = logging.getLogger("roamgate_connect")

SERVICE = "imap-resume"
CHUNK = 64 * 1024
BUFFER_BYTES = 1024 * 1024  # held per stream: the mail client's bytes not yet acknowledged
RETRY_CHANNEL = 0.5  # seconds before another channel try on a link that is going down


class ResumingStream:
    """One local connection, one gateway stream, any number of carriers."""

    def __init__(
        self,
        link: Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        hold: float,
        resume_seconds: float,
        status: Callable[[str], None],
    ) -> None:
        self.link = link
        self.reader = reader
        self.writer = writer
        self.hold = hold
        self.resume_seconds = resume_seconds
        self.status = status
        self.stream = ClientStream(BUFFER_BYTES)
        self.channel: asyncssh.SSHWriter[bytes] | None = None
        self.resumes = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def run(self) -> None:
        local = [
            asyncio.create_task(self._local_in(), name="resume-local-in"),
            asyncio.create_task(self._local_out(), name="resume-local-out"),
        ]
        try:
            await self._carriers()
            # The gateway's last bytes still go to the mail client before the socket closes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(local[1]), 10)
        finally:
            for task in local:
                task.cancel()
            await asyncio.gather(*local, return_exceptions=True)
            if self.channel is not None:
                self.channel.close()
            self.writer.close()

    # -- the mail client's side
    async def _local_in(self) -> None:
        end = self.stream.endpoint
        while True:
            while end.room == 0:
                await self._wait()
            data = await self.reader.read(min(end.room, CHUNK))
            if not data:
                end.close()
                self._flush()
                return
            end.write(data)
            self._flush()

    async def _local_out(self) -> None:
        end = self.stream.endpoint
        while True:
            if end.available:
                self.writer.write(end.read(CHUNK))
                await self.writer.drain()
                self._flush()  # an acknowledgement may be due
                continue
            if end.at_eof:
                with contextlib.suppress(OSError, RuntimeError):
                    self.writer.write_eof()
                return
            await self._wait()

    # -- carriers
    async def _carriers(self) -> None:
        lost_at: float | None = None
        while not self.stream.endpoint.finished:
            if self.stream.stream_id is None:
                wait = self.hold if lost_at is None else self.resume_seconds
            else:
                wait = self.resume_seconds - (time.monotonic() - (lost_at or time.monotonic()))
            if wait <= 0:
                self.status(
                    "imap: the line stayed down too long; the mail client's connection ends"
                )
                return
            try:
                ch_reader, ch_writer = await self.link.open(SERVICE, 143, wait)
            except TimeoutError:
                if self.stream.stream_id is not None:
                    self.status("imap: the line stayed down too long; the stream ends")
                return
            except asyncssh.ChannelOpenError as exc:
                if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                    self.status(f"imap: the gateway refused {SERVICE}: {exc.reason}")
                    return
                await asyncio.sleep(RETRY_CHANNEL)
                continue
            except (OSError, asyncssh.Error, AssertionError):
                await asyncio.sleep(RETRY_CHANNEL)  # the link is going down under us
                continue
            if await self._carry(ch_reader, ch_writer):
                return
            lost_at = time.monotonic()

    async def _carry(
        self, ch_reader: asyncssh.SSHReader[bytes], ch_writer: asyncssh.SSHWriter[bytes]
    ) -> bool:
        """Runs one carrier; True when the stream is over (finished or refused)."""
        stream = self.stream
        stream.carrier_up()
        self.channel = ch_writer
        try:
            while True:
                data = await ch_reader.read(CHUNK)
                if not data:
                    return False
                before = (stream.endpoint.received, stream.endpoint.acked)
                for event in stream.receive_data(data):
                    if isinstance(event, StreamOpened):
                        log.info("imap stream %s opened", event.stream_id.hex()[:8])
                    elif isinstance(event, StreamResumed):
                        self.resumes += 1
                        self.status(f"imap stream resumed ({event.resent} bytes sent again)")
                    elif isinstance(event, StreamRefused):
                        self.status("imap: the gateway no longer has this stream; it ends")
                        return True
                if (stream.endpoint.received, stream.endpoint.acked) != before:
                    self.link.note_progress()  # bytes moved one way or the other
                self._flush()
                self._notify()
                if stream.endpoint.finished:
                    return True
        except StreamError as exc:
            log.warning("imap stream: %s; reconnecting the stream", exc)
            return False
        except (OSError, asyncssh.Error):
            return False
        finally:
            stream.carrier_down()
            self.channel = None
            ch_writer.close()
            self._notify()

    def _flush(self) -> None:
        if self.channel is None:
            return
        data = self.stream.data_to_send()
        if data:
            with contextlib.suppress(OSError, asyncssh.Error):
                self.channel.write(data)

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
