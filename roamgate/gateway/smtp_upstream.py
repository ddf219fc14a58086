"""A small SMTP client for the upstream submission server: verified TLS, AUTH, streamed DATA/BDAT.

Why not smtplib or aiosmtplib: the door must hand each upstream reply back to its client as it
came (a refused recipient is refused to the client, with the upstream's code and text), and
must stream a spooled message of up to the SIZE limit without holding it in memory. Both
libraries take the message as one bytes object. This client does the few commands the relay
needs, one at a time, and returns every reply whole.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from roamgate.config import UpstreamServer
from roamgate.login.verifiers import upstream_ssl_context

# An upstream reply longer than this many lines, or a line longer than the reader's limit, is
# a broken server, not something to relay.
MAX_REPLY_LINES = 100
READ_LIMIT = 8 * 1024
CHUNK = 64 * 1024


class UpstreamSmtpError(Exception):
    """The upstream cannot be reached or does not speak SMTP as expected (text for logs only)."""


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: its code and the text of each line (without the code)."""

    code: int
    lines: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def wire(self) -> str:
        """The reply as the client is to see it, multi-line form kept (no final CRLF)."""
        lines = self.lines or ("",)
        last = len(lines) - 1
        return "\r\n".join(
            f"{self.code}{' ' if i == last else '-'}{line}" for i, line in enumerate(lines)
        )


class ChunkSource(Protocol):
    """A spooled message read from its start (roamgate.gateway.submission_spool.Spool)."""

    def chunks(self) -> Iterator[bytes]: ...


def _ehlo_caps(reply: Reply) -> dict[str, str]:
    caps: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, value = line.partition(" ")
        caps[keyword.upper()] = value.strip()
    return caps


class UpstreamSmtp:
    """One connection to the upstream submission server."""

    def __init__(
        self, server: UpstreamServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.caps: dict[str, str] = {}
        self.timeout = float(server.timeout_seconds)

    @classmethod
    async def connect(cls, server: UpstreamServer, helo: str) -> UpstreamSmtp:
        """Connected, TLS established (verified per the config) and greeted with EHLO."""
        try:
            return await asyncio.wait_for(cls._connect(server, helo), server.timeout_seconds)
        except TimeoutError:
            raise UpstreamSmtpError("timed out connecting") from None
        except ssl.SSLError as exc:
            raise UpstreamSmtpError(f"TLS failed: {exc.reason or type(exc).__name__}") from None
        except OSError as exc:
            raise UpstreamSmtpError(
                f"cannot connect: {exc.strerror or type(exc).__name__}"
            ) from None

    @classmethod
    async def _connect(cls, server: UpstreamServer, helo: str) -> UpstreamSmtp:
        ctx = upstream_ssl_context(server) if server.tls != "none" else None
        if server.tls == "implicit":
            reader, writer = await asyncio.open_connection(
                server.host, server.port, ssl=ctx, server_hostname=server.host, limit=READ_LIMIT
            )
        else:
            reader, writer = await asyncio.open_connection(
                server.host, server.port, limit=READ_LIMIT
            )
        conn = cls(server, reader, writer)
        try:
            greeting = await conn.read_reply()
            if greeting.code != 220:
                raise UpstreamSmtpError(f"greeting {greeting.code} {greeting.text[:200]}")
            await conn.ehlo(helo)
            if server.tls == "starttls":
                if "STARTTLS" not in conn.caps:
                    raise UpstreamSmtpError("the upstream does not offer STARTTLS")
                reply = await conn.command("STARTTLS")
                if reply.code != 220:
                    raise UpstreamSmtpError(f"STARTTLS refused: {reply.code}")
                assert ctx is not None
                await writer.start_tls(ctx, server_hostname=server.host)
                await conn.ehlo(helo)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def ehlo(self, helo: str) -> None:
        reply = await self.command(f"EHLO {helo}")
        if reply.code != 250:
            raise UpstreamSmtpError(f"EHLO refused: {reply.code}")
        self.caps = _ehlo_caps(reply)

    def has(self, capability: str) -> bool:
        return capability.upper() in self.caps

    async def read_reply(self) -> Reply:
        lines: list[str] = []
        code = 0
        while True:
            try:
                raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
            except (ValueError, asyncio.LimitOverrunError):
                raise UpstreamSmtpError("reply line too long") from None
            except TimeoutError:
                raise UpstreamSmtpError("timed out waiting for a reply") from None
            if not raw.endswith(b"\n"):
                raise UpstreamSmtpError("connection closed")
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise UpstreamSmtpError("malformed reply")
            if code and int(line[:3]) != code:
                raise UpstreamSmtpError("reply codes differ within one reply")
            code = int(line[:3])
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(code, tuple(lines))
            if len(lines) >= MAX_REPLY_LINES:
                raise UpstreamSmtpError("reply too long")

    async def command(self, line: str) -> Reply:
        self.writer.write(line.encode("utf-8", "surrogateescape") + b"\r\n")
        await self.writer.drain()
        return await self.read_reply()

    async def auth_plain(self, user: str, password: str) -> Reply:
        blob = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
        return await self.command(f"AUTH PLAIN {blob}")

    async def send_message(self, received: bytes, spool: ChunkSource, size: int) -> Reply:
        """Send our Received line and then the client's message exactly as it came.

        With CHUNKING the bytes go as they are (BDAT LAST); otherwise as DATA with each line
        that starts with a dot stuffed (RFC 5321 4.5.2), which the receiver takes off again.
        """
        if self.has("CHUNKING"):
            self.writer.write(f"BDAT {len(received) + size} LAST\r\n".encode())
            self.writer.write(received)
            for chunk in spool.chunks():
                self.writer.write(chunk)
                await self.writer.drain()
            await self.writer.drain()
            return await self.read_reply()
        reply = await self.command("DATA")
        if reply.code != 354:
            return reply
        self.writer.write(received)
        at_line_start = True
        tail = b""
        for chunk in spool.chunks():
            if not chunk:
                continue
            out = chunk.replace(b"\n.", b"\n..")
            if at_line_start and out.startswith(b"."):
                out = b"." + out
            self.writer.write(out)
            await self.writer.drain()
            at_line_start = chunk.endswith(b"\n")
            tail = (tail + chunk)[-2:]
        # A message that does not end in CRLF gets one, else the terminator would be data.
        self.writer.write(b".\r\n" if tail.endswith(b"\r\n") or not tail else b"\r\n.\r\n")
        await self.writer.drain()
        return await self.read_reply()

    async def quit(self) -> None:
        with contextlib.suppress(UpstreamSmtpError, OSError, ssl.SSLError):
            await asyncio.wait_for(self.command("QUIT"), 5)
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)
