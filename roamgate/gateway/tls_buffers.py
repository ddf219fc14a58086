"""asyncio's TLS read buffer sized to the traffic: small for idle sessions, large for transfers.

asyncio (3.11, 3.12) gives every TLS connection a 256 KiB read buffer, allocated and zeroed
when the connection is made (SSLProtocol.max_size). A proxied IMAP session holds two TLS
connections, so an idle session cost over half a megabyte in these buffers alone
(bench/idle_sessions.py). Here each connection starts with IDLE_BUFFER; a read that fills the
buffer doubles it (up to BULK_BUFFER) and a short read after a large one brings it back down,
so a FETCH of many megabytes still reads 256 KiB at a time while thousands of quiet sessions
each keep a few KiB.

This patches two methods of asyncio.sslproto.SSLProtocol for the whole process (serve calls
`install` once). It relies on that class's private buffer attributes, so it installs only
when they are as expected and otherwise leaves asyncio alone (memory use is then the stock one).
"""

from __future__ import annotations

import asyncio.sslproto
from typing import Any

IDLE_BUFFER = 8 * 1024
BULK_BUFFER = 256 * 1024
_SHORT_READ = 2 * 1024

_installed = False


def install() -> bool:
    """Patch SSLProtocol once; False if this Python's asyncio does not look as expected."""
    global _installed
    proto: Any = asyncio.sslproto.SSLProtocol
    if _installed:
        return True
    if getattr(proto, "max_size", None) != BULK_BUFFER or not hasattr(proto, "buffer_updated"):
        return False
    original_updated = proto.buffer_updated

    def buffer_updated(self: Any, nbytes: int) -> None:
        size = len(self._ssl_buffer)
        original_updated(self, nbytes)  # the bytes are copied out of the buffer here
        if nbytes >= size and size < BULK_BUFFER:
            self.max_size = min(2 * size, BULK_BUFFER)  # get_buffer grows it on the next read
        elif nbytes <= _SHORT_READ and size > IDLE_BUFFER:
            self.max_size = IDLE_BUFFER
            self._ssl_buffer = bytearray(IDLE_BUFFER)
            self._ssl_buffer_view = memoryview(self._ssl_buffer)

    proto.max_size = IDLE_BUFFER  # the size each new connection allocates
    proto.buffer_updated = buffer_updated
    _installed = True
    return True
