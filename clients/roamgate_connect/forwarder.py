"""Local ports for the mail client, bound for the connector's whole life, link up or not.

A connection that arrives while the line is down waits (up to the hold time) for the link
instead of being refused, so a mail client that retries simply sees a slow server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from roamgate.gateway.pump import Counted, relay
from roamgate_connect.link import Link
from roamgate_connect.resuming import ResumingStream

log = logging.getLogger("roamgate_connect")


class LocalPort:
    """127.0.0.1:PORT forwarded to one gateway service."""

    def __init__(
        self,
        link: Link,
        port: int,
        service: str,
        service_port: int,
        hold: float,
        *,
        resume_seconds: float | None = None,
        status: Callable[[str], None] | None = None,
    ) -> None:
        self.link = link
        # Set: each connection is a resumable stream that outlives line drops this long.
        self.resume_seconds = resume_seconds
        self.status = status or (lambda message: log.info("%s", message))
        self.port = port
        self.service = service
        self.service_port = service_port
        self.hold = hold
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        local = Counted(reader, writer)
        try:
            if self.resume_seconds is not None:
                await ResumingStream(
                    self.link,
                    reader,
                    writer,
                    hold=self.hold,
                    resume_seconds=self.resume_seconds,
                    status=self.status,
                ).run()
                return
            try:
                ch_reader, ch_writer = await self.link.open(
                    self.service, self.service_port, self.hold
                )
            except TimeoutError:
                log.info("%s: the link stayed down for %.0f s; closing", self.service, self.hold)
                return
            except Exception as exc:  # noqa: BLE001 (any refusal: close the local socket)
                log.info("%s: the gateway refused the channel: %s", self.service, exc)
                return
            await relay(local, ch_reader, ch_writer)
        except (ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            local.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
