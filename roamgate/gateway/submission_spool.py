"""Where a message waits between the client's DATA and the upstream: memory if small, else disk.

The door never holds more than the announced SIZE of one message, and a message above
`spool_memory_bytes` goes to an unlinked temporary file, so many concurrent large messages
cost disk, not memory; and all of them together never more disk than `spool_max_bytes`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 64 * 1024


class DiskBudget:
    """The bytes every spool of one node holds on disk, against a limit read at each use."""

    def __init__(self) -> None:
        self.used = 0


class Spool:
    """One message's bytes as the client meant them (dot-unstuffed), up to `limit`."""

    def __init__(
        self,
        *,
        memory_bytes: int,
        directory: Path | None,
        limit: int,
        disk: DiskBudget | None = None,
        disk_limit: int = 0,
    ) -> None:
        self.limit = limit
        self.size = 0
        self.overflow = False  # more than `limit` was offered; the rest was dropped
        # The node's spool disk is full (spool_max_bytes, or the disk itself): refused whole.
        self.no_space = False
        self._memory_bytes = memory_bytes
        self._disk = disk
        self._disk_limit = disk_limit
        self._on_disk = 0  # what this spool counts against the budget
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed by close())
            max_size=memory_bytes,
            prefix="roamgate-submission-",
            dir=str(directory) if directory is not None else None,
        )
        if memory_bytes <= 0:
            self._file.rollover()  # max_size 0 would mean "never roll over": disk from the start

    def write(self, data: bytes) -> None:
        if self.overflow or self.no_space:
            return
        size = self.size + len(data)
        if size > self.limit:
            # Nothing more is kept: the message will be refused whole.
            self.overflow = True
            self._drop()
            return
        # Past memory_bytes the whole message moves to disk (SpooledTemporaryFile's rollover).
        on_disk = size if size > self._memory_bytes else 0
        if self._disk is not None and on_disk > self._on_disk:
            if self._disk.used + on_disk - self._on_disk > self._disk_limit:
                self.no_space = True
                self._drop()
                return
            self._disk.used += on_disk - self._on_disk
            self._on_disk = on_disk
        try:
            self._file.write(data)
        except OSError:
            # The disk itself is full (ENOSPC, a quota): the same refusal, nothing half kept.
            self.no_space = True
            self._drop()
            return
        self.size = size

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

    def seal(self) -> None:
        """The message is all in: what is still buffered goes to disk now, so that a full disk
        shows as this message's refusal, not as an error while it is sent upstream."""
        if self.overflow or self.no_space:
            return
        try:
            self._file.flush()
        except OSError:
            self.no_space = True
            self._drop()

    def _drop(self) -> None:
        """Keep nothing more of this message, and give its disk back."""
        # On a full disk truncating may fail too: the message is refused either way.
        with contextlib.suppress(OSError):
            self._file.truncate(0)
        self._release()

    def _release(self) -> None:
        if self._disk is not None:
            self._disk.used -= self._on_disk
        self._on_disk = 0

    def close(self) -> None:
        self._release()
        with contextlib.suppress(OSError):  # a refused message's buffer, on a full disk
            self._file.close()
