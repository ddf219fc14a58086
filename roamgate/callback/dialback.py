"""The gateway's side of a dial-back: connect to the registered endpoint, send the call line,
read the device's proof (roamgate.auth.dialback has the protocol)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from roamgate.auth.dialback import MAX_LINE, Call, DialbackError, call_line, parse_answer

log = logging.getLogger("roamgate.callback")


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [addr]:port) -> (host, port); ValueError if it is not one."""
    host, sep, port = endpoint.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {endpoint!r}")
    return host, int(port)


async def dial(endpoint: str, call: Call, seconds: float) -> bytes | None:
    """The device's proof, or None if it denied, was unreachable or broke the protocol."""
    host, port = split_endpoint(endpoint)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
            writer.write(call_line(call))
            await writer.drain()
            line = await reader.readline()
            answer = parse_answer(line)
            writer.write(b"BYE\n")
            await writer.drain()
            return answer
    except (OSError, TimeoutError, ValueError, DialbackError, asyncio.IncompleteReadError) as exc:
        log.warning("dial-back to %s failed: %s", endpoint, type(exc).__name__)
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
