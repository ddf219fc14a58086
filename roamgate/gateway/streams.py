"""The byte streams a door hands to a session: asyncio's TCP/TLS streams or an SSH channel's."""

from __future__ import annotations

from typing import Any, Protocol


class Reader(Protocol):
    """What a session reads from: asyncio.StreamReader, asyncssh.SSHReader[bytes]."""

    async def read(self, n: int = -1, /) -> bytes: ...


class Writer(Protocol):
    """What a session writes to: asyncio.StreamWriter, asyncssh.SSHWriter[bytes]."""

    def write(self, data: bytes, /) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None, /) -> Any: ...
