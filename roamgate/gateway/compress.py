"""COMPRESS=DEFLATE on a client's streams: a Reader that inflates and a Writer that deflates.

The relay swaps these in for the client's reader and writer after `tag OK DEFLATE active`; the
codec is roamgate/imap/deflate.py. The writer compresses on write() and sends a sync flush on
drain(), so one batch of responses costs one flush marker, not one per line. Both count the
bytes on the wire (compressed), which is what the audit trail and the benchmarks report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from roamgate.gateway.streams import Reader, Writer
from roamgate.imap.deflate import DEFAULT_MAX_OUTPUT, Deflater, Inflater

READ_SIZE = 64 * 1024


def _ignore(_n: int) -> None:
    pass


class DeflateWriter:
    """Writer: what is written is compressed; drain() flushes it to the client, then drains."""

    def __init__(
        self, inner: Writer, level: int, *, on_wire: Callable[[int], None] = _ignore
    ) -> None:
        self._inner = inner
        self._deflater = Deflater(level)
        self._on_wire = on_wire
        self.wire_bytes = 0

    def write(self, data: bytes, /, *, incompressible: bool = False) -> None:
        self._send(self._deflater.compress(data, incompressible=incompressible))

    async def drain(self) -> None:
        self._send(self._deflater.flush())
        await self._inner.drain()

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, name: str, default: Any = None, /) -> Any:
        return self._inner.get_extra_info(name, default)

    def _send(self, data: bytes) -> None:
        if data:
            self._inner.write(data)
            self.wire_bytes += len(data)
            self._on_wire(len(data))


class InflateReader:
    """Reader: the client's compressed bytes in, at most max_output inflated bytes per read.

    Raises roamgate.imap.deflate.InflateError when the client's stream is invalid.
    """

    def __init__(
        self,
        inner: Reader,
        *,
        max_output: int = DEFAULT_MAX_OUTPUT,
        on_wire: Callable[[int], None] = _ignore,
    ) -> None:
        self._inner = inner
        self._inflater = Inflater(max_output)
        self._on_wire = on_wire
        self.wire_bytes = 0

    async def read(self, n: int = -1, /) -> bytes:
        """Inflated bytes (b"" at EOF); input held back by the cap is used before reading more."""
        limit = None if n < 0 else n
        if n == 0:
            return b""
        while True:
            if self._inflater.pending:
                out = self._inflater.decompress(limit=limit)
            else:
                data = await self._inner.read(READ_SIZE)
                if not data:
                    return b""
                self.wire_bytes += len(data)
                self._on_wire(len(data))
                out = self._inflater.decompress(data, limit=limit)
            # A sync flush marker alone inflates to nothing: that is not the end of the stream.
            if out:
                return out
