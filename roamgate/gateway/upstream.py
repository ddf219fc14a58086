"""A connection to the corporate IMAP server: TLS (implicit or STARTTLS, verified), ID, login.

Only the setup and login exchanges are handled here, with whole (bounded) responses; once logged
in, the relay takes the reader, writer and parser over and streams everything else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import ssl
from collections.abc import Sequence

from roamgate.config import UpstreamServer
from roamgate.imap.assemble import Assembler
from roamgate.imap.events import (
    NEED_DATA,
    PAUSED,
    Atom,
    ConnectionClosed,
    ProtocolError,
    ResponseKind,
)
from roamgate.imap.limits import Limits
from roamgate.imap.response_parser import ResponseParser
from roamgate.imap.serialize import quote
from roamgate.imap.values import Response
from roamgate.login.verifiers import Outcome, upstream_ssl_context

log = logging.getLogger("roamgate.upstream")

READ_SIZE = 64 * 1024


@functools.lru_cache(maxsize=8)
def _context(server: UpstreamServer) -> ssl.SSLContext:
    # Building a context and loading the CA file costs milliseconds; every session needs one.
    return upstream_ssl_context(server)


class UpstreamError(Exception):
    """The upstream cannot be reached or does not speak IMAP as expected (text for logs only)."""


class UpstreamImap:
    """One session with the upstream server."""

    def __init__(
        self, server: UpstreamServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.parser = ResponseParser(Limits.upstream())
        self.capabilities: list[str] = []
        self.authenticated = False
        self._tags = 0
        # Setup responses are small; a large one here is a misbehaving server, not mail.
        self._assembler = Assembler(max_literal_total=1024 * 1024)

    # -- lifecycle
    @classmethod
    async def connect(cls, server: UpstreamServer) -> UpstreamImap:
        try:
            async with asyncio.timeout(server.timeout_seconds):
                return await cls._connect(server)
        except TimeoutError:
            raise UpstreamError(
                f"{server.host}:{server.port}: no answer within {server.timeout_seconds} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(f"{server.host}:{server.port}: {exc}") from None

    @classmethod
    async def _connect(cls, server: UpstreamServer) -> UpstreamImap:
        ctx = _context(server) if server.tls != "none" else None
        if server.tls == "implicit":
            reader, writer = await asyncio.open_connection(
                server.host, server.port, ssl=ctx, server_hostname=server.host
            )
        else:
            reader, writer = await asyncio.open_connection(server.host, server.port)
        conn = cls(server, reader, writer)
        try:
            greeting = await conn.read_response()
            if greeting.kind is not ResponseKind.UNTAGGED or greeting.verb != "OK":
                raise UpstreamError(f"unexpected greeting {greeting.verb!r}")
            conn._take_capabilities(greeting)
            if server.tls == "starttls":
                if not conn.has("STARTTLS"):
                    await conn.refresh_capabilities()
                if not conn.has("STARTTLS"):
                    raise UpstreamError("the upstream does not offer STARTTLS")
                _, done = await conn.command(b"STARTTLS")
                if done.verb != "OK":
                    raise UpstreamError("the upstream refused STARTTLS")
                assert ctx is not None
                await writer.start_tls(ctx, server_hostname=server.host)
                # Anything buffered before the handshake is not trusted (RFC 3501 6.2.1).
                conn.parser = ResponseParser(Limits.upstream())
                conn.capabilities = []
            if not conn.capabilities:
                await conn.refresh_capabilities()
        except BaseException:
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(2):
                await self.writer.wait_closed()

    # -- exchanges
    def next_tag(self) -> bytes:
        self._tags += 1
        return b"rg%d" % self._tags

    async def read_response(self) -> Response:
        """The next whole response (setup and login only)."""
        while True:
            event = self.parser.next_event()
            if event is NEED_DATA:
                data = await self.reader.read(READ_SIZE)
                self.parser.receive_data(data)
                continue
            if event is PAUSED:
                raise UpstreamError("the parser paused on a server literal")
            item = self._assembler.push(event)
            if item is None:
                continue
            if isinstance(item, Response):
                return item
            if isinstance(item, ConnectionClosed):
                raise UpstreamError("the upstream closed the connection")
            if isinstance(item, ProtocolError):
                raise UpstreamError(f"unparseable response from the upstream ({item.kind.value})")
            raise UpstreamError("unexpected line from the upstream")

    async def command(self, text: bytes) -> tuple[list[Response], Response]:
        """Send `TAG text` and collect the untagged responses up to its tagged completion."""
        tag = self.next_tag()
        self.writer.write(tag + b" " + text + b"\r\n")
        await self.writer.drain()
        untagged: list[Response] = []
        while True:
            response = await self.read_response()
            if response.kind is ResponseKind.TAGGED and response.tag == tag:
                return untagged, response
            if response.kind is ResponseKind.CONTINUATION:
                raise UpstreamError("unexpected continuation request")
            if response.verb == "BYE":
                raise UpstreamError("the upstream said BYE")
            untagged.append(response)

    async def refresh_capabilities(self) -> None:
        untagged, done = await self.command(b"CAPABILITY")
        for response in untagged:
            if response.verb == "CAPABILITY":
                self.capabilities = _atoms(response.args)
        self._take_capabilities(done)

    async def send_id(self, pairs: Sequence[tuple[str, str | None]]) -> None:
        """ID with the client's parameters; its answer does not matter."""
        if not pairs:
            return
        parts = []
        for key, value in pairs:
            parts.append(quote(key.encode()))
            parts.append(b"NIL" if value is None else quote(value.encode()))
        await self.command(b"ID (" + b" ".join(parts) + b")")

    async def login(self, user: str, password: str) -> Outcome:
        """Log in as the user; REJECTED keeps the connection usable for another try."""
        if self.has("AUTH=PLAIN"):
            blob = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
            if self.has("SASL-IR"):
                _, done = await self.command(b"AUTHENTICATE PLAIN " + blob)
            else:
                done = await self._authenticate_plain(blob)
        else:
            done = await self._login_command(user, password)
        if done.verb == "OK":
            self.authenticated = True
            self.capabilities = []
            self._take_capabilities(done)
            if not self.capabilities:
                await self.refresh_capabilities()
            return Outcome.ACCEPTED
        code = done.code.name.upper() if done.code is not None else b""
        if code in (b"UNAVAILABLE", b"SERVERBUG", b"LIMIT"):
            return Outcome.UNAVAILABLE
        return Outcome.REJECTED

    async def _authenticate_plain(self, blob: bytes) -> Response:
        tag = self.next_tag()
        self.writer.write(tag + b" AUTHENTICATE PLAIN\r\n")
        await self.writer.drain()
        first = await self.read_response()
        if first.kind is not ResponseKind.CONTINUATION:
            return first
        self.writer.write(blob + b"\r\n")
        await self.writer.drain()
        while True:
            response = await self.read_response()
            if response.kind is ResponseKind.TAGGED and response.tag == tag:
                return response

    async def _login_command(self, user: str, password: str) -> Response:
        # Synchronising literals work with every server and carry any byte but NUL.
        tag = self.next_tag()
        prefix = tag + b" LOGIN"
        for value in (user.encode(), password.encode()):
            self.writer.write(prefix + b" {%d}\r\n" % len(value))
            await self.writer.drain()
            cont = await self.read_response()
            if cont.kind is not ResponseKind.CONTINUATION:
                return cont
            prefix = value
        self.writer.write(prefix + b"\r\n")
        await self.writer.drain()
        while True:
            response = await self.read_response()
            if response.kind is ResponseKind.TAGGED and response.tag == tag:
                return response

    def has(self, capability: str) -> bool:
        return capability.upper() in (c.upper() for c in self.capabilities)

    def _take_capabilities(self, response: Response) -> None:
        if response.code is not None and response.code.name.upper() == b"CAPABILITY":
            self.capabilities = _atoms(response.code.args)


# Capability lists by content: every session with one server has the same ~40 strings, so they
# are kept once (lists are replaced, never changed in place). Bounded: a server that varies
# its list endlessly only stops the sharing.
_SHARED_ATOMS: dict[tuple[str, ...], list[str]] = {}
_MAX_SHARED = 64


def _atoms(values: Sequence[object]) -> list[str]:
    atoms = tuple(v.value.decode("ascii", "replace") for v in values if isinstance(v, Atom))
    shared = _SHARED_ATOMS.get(atoms)
    if shared is None:
        shared = list(atoms)
        if len(_SHARED_ATOMS) < _MAX_SHARED:
            _SHARED_ATOMS[atoms] = shared
    return shared


class SparePool:
    """A few connected, verified, not yet logged-in upstream sessions, kept for a short time.

    Connecting and the TLS handshake are most of what a login costs the gateway. A login takes
    a spare if one is fresh and a new one is made in the background, so a burst of logins (a
    client reconnecting, a mail client opening several connections) does not wait for them.
    When logins stop, spares expire and are closed, not replaced: an idle gateway holds no
    upstream connections, and no unauthenticated client can make it open more than `size`.
    """

    def __init__(self, server: UpstreamServer, size: int, max_age: float) -> None:
        self.server = server
        self.size = size
        self.max_age = max_age
        self._spares: list[tuple[float, UpstreamImap]] = []
        self._refill: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def take(self) -> UpstreamImap:
        now = asyncio.get_running_loop().time()
        conn: UpstreamImap | None = None
        while self._spares:
            born, spare = self._spares.pop(0)
            if now - born < self.max_age and not spare.reader.at_eof():
                conn = spare
                break
            await spare.close()
        if self.size > 0 and not self._closed and (self._refill is None or self._refill.done()):
            self._refill = asyncio.create_task(self._fill(), name="imap-upstream-spares")
        return conn if conn is not None else await UpstreamImap.connect(self.server)

    async def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        while len(self._spares) < self.size and not self._closed:
            try:
                conn = await UpstreamImap.connect(self.server)
            except UpstreamError as exc:
                log.info("no spare upstream connection: %s", exc)
                return
            if self.closed:  # close() ran while this one was connecting
                await conn.close()
                return
            born = loop.time()
            self._spares.append((born, conn))
            loop.call_later(self.max_age, self._expire, conn)

    def _expire(self, conn: UpstreamImap) -> None:
        for i, (_born, spare) in enumerate(self._spares):
            if spare is conn:
                del self._spares[i]
                # A spare never saw a login; closing it tells the server nothing.
                conn.writer.close()
                return

    async def close(self) -> None:
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill
        spares, self._spares = self._spares, []
        for _born, conn in spares:
            await conn.close()
