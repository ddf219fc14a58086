"""A listener for doors behind a load balancer: accept, read the PROXY header, hand the socket on.

With `listeners.<door>.proxy_protocol: true` a door serves its load balancers only:

- a connection from an address in `trusted_proxies` must begin with a valid PROXY v1 or v2
  header within HEADER_TIMEOUT; the door then sees the client address the header names
  (LOCAL and address-less headers keep the proxy's own address: a health check);
- a connection from any other address is closed before a byte is sent, whether or not it
  carries a header (a forged one is noted in the audit record): otherwise anybody able to
  reach the port could choose the address that throttling and travel windows see.

The header is read with MSG_PEEK and then consumed exactly, never a byte more: the bytes after
it (a TLS ClientHello, an SSH version line) stay in the socket for whoever takes it next
(asyncio's TLS transport, asyncssh.run_server), which is why the socket is accepted here
rather than by asyncio.start_server, whose transport reads greedily.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from roamgate.audit import Auditor
from roamgate.proxy_protocol import (
    DEFAULT_MAX_LENGTH,
    Invalid,
    NeedMore,
    ProxyHeader,
    looks_like_header,
    parse,
)

log = logging.getLogger("roamgate.proxy")

# HAProxy writes the header together with the connection; a trusted peer that has sent no
# complete header by then is broken or not a proxy.
HEADER_TIMEOUT = 10.0
# How long an untrusted connection is watched for a forged header before it is closed.
UNTRUSTED_PEEK_SECONDS = 1.0
# Connections still in the header phase; beyond this a new one is closed at once.
MAX_PENDING = 256

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The load balancers' addresses and networks (`trusted_proxies:` in the config)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(e, strict=False) for e in entries
        )

    def __contains__(self, address: str) -> bool:
        try:
            addr = ipaddress.ip_address(normal_address(address))
        except ValueError:
            return False
        return any(addr in net for net in self.networks)


def normal_address(address: str) -> str:
    """One spelling per client: an IPv4-mapped IPv6 peer (a dual-stack socket) as plain IPv4."""
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@dataclass(frozen=True)
class Origin:
    """Who a proxied connection is from: the client the header names, and the proxy."""

    source: str
    port: int
    proxy: str
    header: ProxyHeader


Handler = Callable[[socket.socket, Origin], Awaitable[None]]


class HeaderError(Exception):
    """No usable header from a trusted proxy; `reason` goes to the audit record."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def read_header(sock: socket.socket, *, max_length: int = DEFAULT_MAX_LENGTH) -> ProxyHeader:
    """Read exactly one PROXY header from a non-blocking socket, or raise HeaderError.

    Bytes are peeked, and consumed only once they are known to be header: while the parser
    wants more, everything seen so far is header; when it has a header, exactly its length.
    """
    seen = b""
    while True:
        await _readable(sock)
        try:
            chunk = sock.recv(max_length - len(seen), socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not chunk:
            raise HeaderError("header_missing" if not seen else "header_truncated")
        result = parse(seen + chunk, max_length=max_length)
        if isinstance(result, ProxyHeader):
            _consume(sock, result.length - len(seen))
            return result
        if isinstance(result, Invalid):
            began = looks_like_header((seen + chunk)[:16])
            raise HeaderError("header_invalid" if began else "header_missing", result.reason)
        assert isinstance(result, NeedMore)
        _consume(sock, len(chunk))
        seen += chunk


def _consume(sock: socket.socket, n: int) -> None:
    # The bytes were peeked a moment ago, so they are in the socket's buffer: one recv of a
    # non-blocking socket returns them all.
    got = sock.recv(n)
    if len(got) != n:
        raise HeaderError("header_truncated")


async def _peek_forged(sock: socket.socket) -> bool:
    """Whether an untrusted peer's first bytes look like a PROXY header (for the audit)."""
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(_readable(sock), UNTRUSTED_PEEK_SECONDS)
        return looks_like_header(sock.recv(16, socket.MSG_PEEK))
    return False


class ProxyAcceptor:
    """One listening socket whose connections are handed on after their PROXY header."""

    def __init__(
        self,
        door: str,
        host: str,
        port: int,
        trusted: TrustedProxies,
        auditor: Auditor,
        handler: Handler,
    ) -> None:
        self.door = door
        self.host = host
        self.requested_port = port
        self.trusted = trusted
        self.auditor = auditor
        self.handler = handler
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending = 0

    async def start(self) -> None:
        family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        sock = socket.create_server(
            (self.host, self.requested_port), family=family, backlog=128, reuse_port=False
        )
        sock.setblocking(False)
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept_loop(), name=f"{self.door}-accept")

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    async def close(self) -> None:
        """Stop accepting; connections already handed on belong to their door."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._sock is not None:
            self._sock.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as exc:
                # EMFILE and the like: wait instead of spinning; the listener stays up.
                log.warning("%s: accept failed: %s", self.door, exc.strerror)
                await asyncio.sleep(0.5)
                continue
            if self._pending >= MAX_PENDING:
                log.warning(
                    "%s: %d connections waiting for a PROXY header; closing one",
                    self.door,
                    self._pending,
                )
                conn.close()
                continue
            conn.setblocking(False)
            task = asyncio.create_task(self._handshake(conn, addr), name=f"{self.door}-proxy")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handshake(
        self, sock: socket.socket, addr: tuple[str, int] | tuple[str, int, int, int]
    ) -> None:
        peer, peer_port = normal_address(str(addr[0])), int(addr[1])
        handed_on = False
        self._pending += 1
        try:
            if peer not in self.trusted:
                forged = await _peek_forged(sock)
                await self.auditor.record(
                    "proxy_refused",
                    "fail",
                    source=peer,
                    door=self.door,
                    reason="untrusted_source",
                    detail={"forged_header": forged},
                )
                return
            try:
                header = await asyncio.wait_for(read_header(sock), HEADER_TIMEOUT)
            except TimeoutError:
                header = None
                problem = HeaderError("header_timeout")
            except HeaderError as exc:
                header, problem = None, exc
            except OSError:
                return  # the proxy went away; nothing to hand on
            if header is None:
                if problem.reason == "header_missing" and not problem.detail:
                    # Connected and closed without a byte: a plain TCP health check.
                    log.debug("%s: %s closed without a PROXY header", self.door, peer)
                    return
                await self.auditor.record(
                    "proxy_refused",
                    "fail",
                    source=peer,
                    door=self.door,
                    reason=problem.reason,
                    detail={"proxy": peer, "problem": problem.detail[:120]},
                )
                return
            if header.source is not None:
                origin = Origin(normal_address(header.source[0]), header.source[1], peer, header)
            else:
                origin = Origin(peer, peer_port, peer, header)
            self._pending -= 1
            handed_on = True
            await self.handler(sock, origin)
        finally:
            if not handed_on:
                self._pending -= 1
                sock.close()
