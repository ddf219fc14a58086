"""Where a message waits between the client's DATA and the upstream: memory if small, else disk.

The door never holds more than the announced SIZE of one message, and a message above
`spool_memory_bytes` goes to an unlinked temporary file, so many concurrent large messages
cost disk, not memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 64 * 1024


class Spool:
    """One message's bytes as the client meant them (dot-unstuffed), up to `limit`."""

    def __init__(self, *, memory_bytes: int, directory: Path | None, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.overflow = False  # more than `limit` was offered; the rest was dropped
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed by close())
            max_size=memory_bytes,
            prefix="roamgate-submission-",
            dir=str(directory) if directory is not None else None,
        )

    def write(self, data: bytes) -> None:
        if self.overflow:
            return
        if self.size + len(data) > self.limit:
            # Nothing more is kept: the message will be refused whole.
            self.overflow = True
            self._file.truncate(0)
            return
        self._file.write(data)
        self.size += len(data)

    @property
    def on_disk(self) -> bool:
        return bool(getattr(self._file, "_rolled", False))

    def chunks(self) -> Iterator[bytes]:
        self._file.seek(0)
        while True:
            chunk = self._file.read(CHUNK)
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        self._file.close()
