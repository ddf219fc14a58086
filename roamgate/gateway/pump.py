"""Byte pumps: a forwarded TCP connection relayed both ways, with back-pressure and byte counts."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from roamgate.gateway.streams import Reader, Writer

CHUNK = 64 * 1024


class Counted:
    """Wraps a reader and a writer and counts the bytes through each (for the audit trail)."""

    def __init__(self, reader: Reader, writer: Writer) -> None:
        self._reader = reader
        self._writer = writer
        self.bytes_read = 0
        self.bytes_written = 0

    # Reader
    async def read(self, n: int = -1, /) -> bytes:
        data = await self._reader.read(n)
        self.bytes_read += len(data)
        return data

    # Writer
    def write(self, data: bytes, /) -> None:
        self.bytes_written += len(data)
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()

    def get_extra_info(self, name: str, default: Any = None, /) -> Any:
        return self._writer.get_extra_info(name, default)

    async def wait_closed(self) -> None:
        """Until the peer has closed its side too (an SSH channel); at once for other writers."""
        wait = getattr(getattr(self._writer, "channel", None), "wait_closed", None)
        if wait is not None:
            await wait()

    def write_eof(self) -> None:
        write_eof = getattr(self._writer, "write_eof", None)
        if write_eof is not None:
            with contextlib.suppress(OSError, RuntimeError):
                write_eof()


async def _one_way(src: Reader, dst: Counted | Writer) -> None:
    while True:
        data = await src.read(CHUNK)
        if not data:
            # Half-close: the other direction may still be sending (SMTP's QUIT reply).
            write_eof = getattr(dst, "write_eof", None)
            if write_eof is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    write_eof()
            return
        dst.write(data)
        await dst.drain()  # back-pressure: never read faster than the other side takes


async def relay(a: Counted, b_reader: Reader, b_writer: Writer) -> None:
    """Copy a -> b and b -> a until both directions have ended (or one fails)."""
    tasks = [
        asyncio.create_task(_one_way(a, b_writer)),
        asyncio.create_task(_one_way(b_reader, a)),
    ]
    try:
        # Returns when both directions ended, or at once when one failed.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        b_writer.close()
        a.close()
