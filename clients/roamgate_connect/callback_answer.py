"""Answers the gateway's dial-back (callback verification): `--callback-listen HOST:PORT`.

The gateway connects, sends its call line with a fresh nonce, and this side proves it holds
the device key made when the endpoint was registered (roamgate.auth.dialback has the protocol).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Callable
from pathlib import Path

from roamgate.auth.dialback import KEY_BYTES, MAX_LINE, DialbackError, answer_line, parse_call

READ_SECONDS = 10.0


class CallbackKeyError(Exception):
    """The key file cannot be used; the message says why."""


def load_callback_key(path: Path) -> bytes:
    try:
        if path.stat().st_mode & 0o077:
            raise CallbackKeyError(f"{path} is readable by group or others; run: chmod 600 {path}")
        key = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (OSError, UnicodeDecodeError, binascii.Error, ValueError) as exc:
        if isinstance(exc, CallbackKeyError):
            raise
        raise CallbackKeyError(
            f"cannot read the callback key {path}: {type(exc).__name__}"
        ) from None
    if len(key) != KEY_BYTES:
        raise CallbackKeyError(f"{path} does not hold a roamgate callback key")
    return key


class CallbackAnswerer:
    """A listener that answers each dial-back with the proof."""

    def __init__(self, key: bytes, status: Callable[[str], None]) -> None:
        self._key = key
        self.status = status
        self.server: asyncio.Server | None = None
        self.answered = 0

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_LINE)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            async with asyncio.timeout(READ_SECONDS):
                call = parse_call(await reader.readline())
                writer.write(answer_line(self._key, call))
                await writer.drain()
                await reader.readline()  # BYE
            self.answered += 1
            self.status(f"answered a dial-back from {call.gateway} for {call.user} ({peer[0]})")
        except (DialbackError, ValueError, OSError, TimeoutError) as exc:
            self.status(f"refused a connection from {peer[0]}: {type(exc).__name__}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
