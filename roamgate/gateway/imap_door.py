"""The TLS front door: IMAPS and IMAP+STARTTLS listeners, the login, then the relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from roamgate.callback.waiting import LOGIN_DEVICE, WAITING_CLIENT
from roamgate.config import Listener
from roamgate.gateway.imap_relay import ImapRelay, RelaySettings
from roamgate.gateway.lean_cache import LeanCache
from roamgate.gateway.limits import ConnectionLimiter
from roamgate.gateway.proxy_accept import Origin, ProxyAcceptor, TrustedProxies
from roamgate.gateway.serve import DOORS, Door
from roamgate.gateway.streams import Reader, Writer
from roamgate.gateway.tls import peer_certificate_fingerprint, server_context
from roamgate.gateway.upstream import READ_SIZE, SparePool, UpstreamError, UpstreamImap
from roamgate.imap import capabilities
from roamgate.imap.assemble import Assembler
from roamgate.imap.command_parser import CommandParser
from roamgate.imap.events import NEED_DATA, PAUSED, ConnectionClosed, Signal
from roamgate.imap.limits import KIB, Limits
from roamgate.imap.prelogin import (
    Action,
    CheckLogin,
    Close,
    PreLoginSession,
    ReadRawLine,
    Send,
    StartTls,
)
from roamgate.imap.values import Response
from roamgate.login.authenticator import LoginResult
from roamgate.login.profile_choice import LoginName, choose_profile, split_login
from roamgate.login.verifiers import Outcome, PasswordVerifier
from roamgate.runtime import Runtime
from roamgate.store.base import SessionRecord, StoreError, UserRecord

log = logging.getLogger("roamgate.imap")

# Before login a client needs short lines only (LOGIN, ID, AUTHENTICATE PLAIN): small caps keep
# an unauthenticated peer from making the gateway hold much.
# An oversized `{n+}` literal ends the connection instead of being read and thrown away.
PRELOGIN_LIMITS = Limits(
    max_line=8 * KIB, max_literal=4 * KIB, max_depth=4, skip_oversized_nonsync=False
)
PRELOGIN_LITERAL_TOTAL = 8 * KIB
# ID keys the gateway sets itself; a client must not forge its own address upstream.
_RESERVED_ID_PREFIX = "x-"
# RFC 3501 7.1.5: the untagged BYE a draining shutdown sends between commands.
SHUTDOWN_BYE = b"roamgate: server shutting down"
# An idle session's record (last seen) is refreshed this often; a busy one at every check.
SESSION_TOUCH_SECONDS = 60.0
# How often a draining session looks whether its transfer has finished.
_DRAIN_POLL = 0.05


@dataclass
class DrainCounts:
    """How a door's connections ended in a draining shutdown (for serve_stop's audit)."""

    sessions_drained: int = 0  # logged in, told BYE at a quiet moment
    sessions_cut: int = 0  # still busy at the deadline: BYE if possible, then closed
    prelogin_closed: int = 0  # not logged in yet: BYE at once


@dataclass
class _LiveSession:
    """A logged-in session as the door's watcher sees it."""

    relay: ImapRelay
    revoked: asyncio.Future[str]
    touched_at: float
    touched: tuple[int, int] = (0, 0)  # bytes in and out when the record was last written


class Disconnect(Exception):
    """Internal: the connection ends before login; the reason is for logs."""


async def prepared_upstream(
    pool: SparePool, client_id: Sequence[tuple[str, str | None]]
) -> UpstreamImap:
    """An upstream connection that has been told who the client is (ID), ready for a login.

    A spare may have died since it was made (the server restarted): then one fresh try.
    """
    conn = await pool.take()
    try:
        if conn.has("ID"):
            # asyncio.timeout, not wait_for: no extra task per call (this runs at every login).
            async with asyncio.timeout(pool.server.timeout_seconds):
                await conn.send_id(client_id)
        return conn
    except (UpstreamError, TimeoutError, OSError, ssl.SSLError):
        await conn.close()
    conn = await UpstreamImap.connect(pool.server)
    try:
        if conn.has("ID"):
            async with asyncio.timeout(pool.server.timeout_seconds):
                await conn.send_id(client_id)
    except BaseException:
        await conn.close()
        raise
    return conn


class _SessionVerifier:
    """First factor for one login, checked by logging in to the upstream as the user.

    The upstream connection that accepted the password is kept for the session, so the
    gateway does not log in twice and never stores the password.
    """

    name = "upstream"

    def __init__(
        self, rt: Runtime, pool: SparePool, client_id: Sequence[tuple[str, str | None]]
    ) -> None:
        self.rt = rt
        self.pool = pool
        self.client_id = client_id
        self.conn: UpstreamImap | None = None

    async def verify(self, user: UserRecord, password: str) -> Outcome:
        if not password:
            return Outcome.REJECTED
        server = self.rt.config.upstream.imap
        try:
            if self.conn is None:
                self.conn = await prepared_upstream(self.pool, self.client_id)
            async with asyncio.timeout(server.timeout_seconds):
                outcome = await self.conn.login(user.name, password)
        except (UpstreamError, TimeoutError, OSError, ssl.SSLError) as exc:
            log.warning("upstream login for %s failed: %s", user.name, _reason(exc))
            await self.discard()
            return Outcome.UNAVAILABLE
        if outcome is Outcome.UNAVAILABLE:
            await self.discard()
        return outcome

    async def discard(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await conn.close()


class _RememberingVerifier:
    """Wraps the configured verifier and keeps the accepted password for a passthrough login."""

    def __init__(self, inner: PasswordVerifier) -> None:
        self.inner = inner
        self.name = inner.name
        self.password: str | None = None

    async def verify(self, user: UserRecord, password: str) -> Outcome:
        outcome = await self.inner.verify(user, password)
        if outcome is Outcome.ACCEPTED:
            self.password = password
        return outcome


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, UpstreamError) else type(exc).__name__


class ImapDoor:
    """One listener: `imaps` (TLS from the first byte) or `imap` (STARTTLS before login).

    Without a listener it serves IMAP sessions that another door hands it (the SSH door's
    tunnels), each already protected by that door.
    """

    def __init__(
        self, rt: Runtime, listener: Listener | None, *, name: str, implicit_tls: bool
    ) -> None:
        self.rt = rt
        self.listener = listener
        self.name = name
        self.implicit_tls = implicit_tls
        self.settings = rt.config.imap_proxy
        self.ssl_context = server_context(rt.config.tls)
        self.limiter = ConnectionLimiter(
            self.settings.max_connections, self.settings.max_connections_per_source
        )
        self.relay_settings = RelaySettings(
            idle_timeout=float(self.settings.idle_timeout_seconds),
            idle_renew=float(self.settings.idle_renew_seconds),
            keepalive=float(self.settings.keepalive_seconds),
        )
        self.profiles = rt.config.link_profiles()
        self.pool = SparePool(
            rt.config.upstream.imap,
            self.settings.upstream_spares,
            float(self.settings.upstream_spare_seconds),
        )
        self._server: asyncio.Server | None = None
        self._proxied: ProxyAcceptor | None = None
        # Lean renditions by user and message, shared by the door's sessions (bounded).
        self.lean_cache = LeanCache()
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False
        # SIGTERM: sessions end at their next quiet moment, or at drain_deadline (monotonic).
        self.draining = asyncio.Event()
        self.drain_deadline = 0.0
        self.drain_counts = DrainCounts()
        self.drain_waiters: set[asyncio.Future[str]] = set()
        self.live: dict[str, _LiveSession] = {}
        self._watcher: asyncio.Task[None] | None = None

    def start_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch_sessions(), name=f"{self.name}-session-watch"
            )

    async def _watch_sessions(self) -> None:
        """Every session_check_seconds: one store query finds revoked sessions among this
        door's; a session's record is rewritten only when its byte counts moved, or once
        every SESSION_TOUCH_SECONDS while idle (a query and a write per idle session every
        few seconds was most of the gateway's CPU with thousands of idle sessions)."""
        while True:
            await asyncio.sleep(self.settings.session_check_seconds)
            if not self.live:
                continue
            try:
                await self._check_sessions()
            except StoreError as exc:
                log.error("session check failed: %s", exc)

    async def _check_sessions(self) -> None:
        store = self.rt.store
        for record in await store.list_sessions(open_only=True):
            live = self.live.get(record.id)
            revoked = live is not None and record.end_requested_at is not None
            if revoked and live is not None and not live.revoked.done():
                live.revoked.set_result("revoked")
        now = self.rt.clock()
        for session_id, live in list(self.live.items()):
            counts = (live.relay.bytes_in, live.relay.bytes_out)
            if counts != live.touched or now - live.touched_at >= SESSION_TOUCH_SECONDS:
                await store.touch_session(session_id, now, *counts)
                live.touched, live.touched_at = counts, now

    def reload(self, rt: Runtime) -> None:
        """SIGHUP: new sessions use the new settings; the TLS certificate changes in place."""
        self.settings = rt.config.imap_proxy
        self.limiter.total = self.settings.max_connections
        self.limiter.per_source = self.settings.max_connections_per_source
        self.relay_settings = RelaySettings(
            idle_timeout=float(self.settings.idle_timeout_seconds),
            idle_renew=float(self.settings.idle_renew_seconds),
            keepalive=float(self.settings.keepalive_seconds),
        )
        self.profiles = rt.config.link_profiles()
        # The listening socket keeps this context object: loading the new pair into it gives
        # every later handshake the new certificate, while connections made before keep their
        # own (OpenSSL copies the certificate into each connection). The caller has checked
        # the pair in a fresh context first, so a bad pair never gets this far.
        tls = rt.config.tls
        self.ssl_context.load_cert_chain(str(tls.cert_file), str(tls.key_file))

    async def drain(self, deadline: float) -> DrainCounts:
        """Stop accepting at once; end each session at a quiet moment, all by the deadline."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._proxied is not None:
            await self._proxied.close()
        self.drain_deadline = deadline
        self.draining.set()
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result("drain")
        if self._connections:
            # The margin lets sessions cut at the deadline write their session_close.
            await asyncio.wait(
                set(self._connections), timeout=max(0.0, deadline - time.monotonic()) + 8
            )
        return self.drain_counts

    async def start(self) -> None:
        assert self.listener is not None
        if self.listener.proxy_protocol:
            self._proxied = ProxyAcceptor(
                self.name,
                self.listener.host,
                self.listener.port,
                TrustedProxies(self.rt.config.trusted_proxies),
                self.rt.auditor,
                self._accept_proxied,
            )
            await self._proxied.start()
            return
        self._server = await asyncio.start_server(
            self._accept,
            self.listener.host,
            self.listener.port,
            ssl=self.ssl_context if self.implicit_tls else None,
            ssl_handshake_timeout=30 if self.implicit_tls else None,
            limit=READ_SIZE,
        )

    @property
    def port(self) -> int:
        if self._proxied is not None:
            return self._proxied.port
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._server is not None:
            self._server.close()
        if self._proxied is not None:
            await self._proxied.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=10)
        await self.pool.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        await self.serve_stream(reader, writer, str(peer[0]), int(peer[1]))

    async def _accept_proxied(self, sock: socket.socket, origin: Origin) -> None:
        """A connection whose PROXY header is read: streams as asyncio.start_server makes them.

        The callback given to StreamReaderProtocol marks the streams as the server side,
        which StreamWriter.start_tls (STARTTLS) relies on.
        """
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_SIZE)
        made: list[asyncio.StreamWriter] = []
        protocol = asyncio.StreamReaderProtocol(reader, lambda _r, w: made.append(w))
        try:
            await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=self.ssl_context if self.implicit_tls else None,
                ssl_handshake_timeout=30 if self.implicit_tls else None,
            )
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError):
            sock.close()
            return
        if not made:  # closed during the handshake
            sock.close()
            return
        await self.serve_stream(reader, made[0], origin.source, origin.port, via=origin.proxy)

    async def serve_stream(
        self,
        reader: Reader,
        writer: Writer,
        source: str,
        port: int,
        *,
        tunnel_user: str | None = None,
        link_compressed: bool = False,
        logout_when_gone: bool = False,
        via: str | None = None,
    ) -> None:
        """One client connection from greeting to close, within the connection caps.

        tunnel_user: the stream is an SSH tunnel whose login proved both factors for this
        user; only they may log in on it, with the password alone. via: the load balancer
        that named `source` in a PROXY header.
        logout_when_gone: the stream ends only when the client is gone for good (a resumable
        stream's grace ran out), so the upstream session is logged out, not just dropped.
        """
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn: _Connection | None = None
        try:
            refused = self.limiter.admit(source)
            if refused is not None or self._closing:
                await self.rt.auditor.record(
                    "connection_refused",
                    "fail",
                    source=source,
                    door=self.name,
                    reason=refused or "shutting_down",
                )
                writer.write(b"* BYE Too many connections, try again later.\r\n")
                return
            with self.limiter.hold(source):
                conn = _Connection(self, reader, writer, source, port, tunnel_user)
                conn.link_compressed = link_compressed
                conn.logout_when_gone = logout_when_gone
                conn.via = via
                await conn.run()
        except asyncio.CancelledError:
            # After login the relay says BYE itself (through COMPRESS, if the client started it).
            if conn is None or not conn.relaying:
                with contextlib.suppress(Exception):
                    writer.write(b"* BYE Server shutting down.\r\n")
            raise
        except (ConnectionError, ssl.SSLError, OSError):
            pass  # the client went away; nothing to tell it
        except StoreError as exc:
            # The database is unreachable: fail closed, one line for the operator (the
            # message names the store without its password), a plain BYE for the client.
            log.warning("%s connection from %s ended: %s", self.name, source, exc)
            if conn is None or not conn.relaying:
                with contextlib.suppress(Exception):
                    writer.write(b"* BYE [UNAVAILABLE] Service unavailable, try again later.\r\n")
        except Exception:
            log.exception("IMAP connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            wait_closed = getattr(writer, "wait_closed", None)
            if wait_closed is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await wait_closed()


class _Connection:
    """One client connection from greeting to close."""

    def __init__(
        self,
        door: ImapDoor,
        reader: Reader,
        writer: Writer,
        source: str,
        port: int,
        tunnel_user: str | None,
    ) -> None:
        self.door = door
        self.rt = door.rt
        self.reader = reader
        self.writer = writer
        self.source = source
        self.port = port
        self.tunnel_user = tunnel_user
        # An SSH tunnel is encrypted already: no STARTTLS on it, and LOGIN is allowed.
        self.tls = door.implicit_tls or tunnel_user is not None
        self.parser = CommandParser(PRELOGIN_LIMITS)
        self.assembler = Assembler(PRELOGIN_LITERAL_TOTAL)
        self.session = PreLoginSession(
            tls_active=self.tls,
            server_name="roamgate",
            max_failures=door.settings.max_login_failures,
        )
        self.deadline = time.monotonic() + door.settings.login_grace_seconds
        self.relaying = False  # logged in: the relay owns the client's stream
        self.link_compressed = False  # the SSH tunnel compresses: no COMPRESS=DEFLATE on top
        self.logout_when_gone = False
        self.via: str | None = None  # the load balancer, for a connection behind one
        # The profile named by the login's suffix (`alice#phs`), once the login has succeeded.
        self.login_profile: str | None = None

    async def run(self) -> None:
        if self.door.implicit_tls and await self._certificate_revoked():
            self.writer.write(b"* BYE Certificate not accepted.\r\n")
            await self.writer.drain()
            return
        self.writer.write(self.session.greeting())
        await self.writer.drain()
        try:
            upstream, user, device = await self._prelogin()
        except Disconnect as exc:
            log.debug("imap connection from %s ended before login: %s", self.source, exc)
            return
        self.relaying = True
        await self._relay(upstream, user, device)

    # -- before login
    async def _read(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        draining = self.door.draining
        if draining.is_set():
            await self._shutdown_before_login()
        read = asyncio.ensure_future(self.reader.read(READ_SIZE))
        # A bare future the door resolves on drain, as _watch does: no task per read.
        drain: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.door.drain_waiters.add(drain)
        waiting: set[asyncio.Future[Any]] = {read, drain}
        try:
            done, _ = await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.door.drain_waiters.discard(drain)
            drain.cancel()
            if not read.done():
                read.cancel()
        if read in done:
            self.parser.receive_data(read.result())
        elif drain in done:
            await self._shutdown_before_login()
        else:
            raise TimeoutError

    async def _shutdown_before_login(self) -> None:
        self.door.drain_counts.prelogin_closed += 1
        with contextlib.suppress(OSError, ssl.SSLError, ConnectionError, TimeoutError):
            await asyncio.wait_for(self._send(b"* BYE " + SHUTDOWN_BYE + b"\r\n"), 5)
        raise Disconnect("server shutting down")

    async def _prelogin(self) -> tuple[UpstreamImap, UserRecord, str]:
        while True:
            event = self.parser.next_event()
            if event is NEED_DATA:
                try:
                    await self._read()
                except TimeoutError:
                    await self._send(b"* BYE Login grace time exceeded.\r\n")
                    raise Disconnect("login grace time exceeded") from None
                continue
            if event is PAUSED:
                pending = self.parser.pending_literal
                if pending is not None and pending.size <= self.assembler.room:
                    self.parser.accept_literal()
                    await self._send(b"+ Ready for literal data\r\n")
                else:
                    self.parser.reject_literal()
                continue
            assert not isinstance(event, Signal)
            item = self.assembler.push(event)
            if item is None or isinstance(item, Response):
                continue
            if isinstance(item, ConnectionClosed):
                raise Disconnect("client closed")
            actions = self.session.handle(item)
            result = await self._perform(actions)
            if result is not None:
                return result

    async def _perform(
        self, actions: Sequence[Action]
    ) -> tuple[UpstreamImap, UserRecord, str] | None:
        for action in actions:
            if isinstance(action, Send):
                await self._send(action.data)
            elif isinstance(action, Close):
                raise Disconnect(action.reason)
            elif isinstance(action, StartTls):
                await self._start_tls()
            elif isinstance(action, ReadRawLine):
                self.parser.expect_raw_line()
            elif isinstance(action, CheckLogin):
                done = await self._login(action)
                if done is not None:
                    return done
        return None

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _start_tls(self) -> None:
        # Whatever the client sent after STARTTLS in plaintext is discarded unread: the parser's
        # buffer with a fresh parser, the stream's buffer by emptying it (CVE-2011-0411 class).
        self.parser = CommandParser(PRELOGIN_LIMITS)
        self.assembler = Assembler(PRELOGIN_LITERAL_TOTAL)
        buffered = getattr(self.reader, "_buffer", None)
        if isinstance(buffered, bytearray) and buffered:
            log.info(
                "discarded %d bytes pipelined after STARTTLS from %s", len(buffered), self.source
            )
            buffered.clear()
        left = max(1.0, self.deadline - time.monotonic())
        # Only the plain TCP door offers STARTTLS (a tunnel starts with TLS already active).
        assert isinstance(self.writer, asyncio.StreamWriter)
        try:
            await self.writer.start_tls(self.door.ssl_context, ssl_handshake_timeout=min(left, 30))
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            raise Disconnect(f"TLS handshake failed: {type(exc).__name__}") from None
        self.tls = True
        if await self._certificate_revoked():
            await self._send(b"* BYE Certificate not accepted.\r\n")
            raise Disconnect("revoked client certificate")
        self.session.tls_started()

    async def _certificate_revoked(self) -> bool:
        """A client certificate whose device was revoked is refused at once.

        The store is asked at each handshake (not a CRL file loaded at start), so a revocation
        made on any node or by the CLI holds for the next connection everywhere.
        """
        if self.tunnel_user is not None:
            return False
        fingerprint = peer_certificate_fingerprint(self.writer.get_extra_info("ssl_object"))
        if fingerprint is None:
            return False
        device = await self.rt.store.find_device(fingerprint)
        if device is None or device.revoked_at is None:
            return False
        await self.rt.auditor.record(
            "connection_refused",
            "fail",
            user=device.user_name,
            source=self.source,
            door=self.door.name,
            reason="certificate_revoked",
            detail={"device_id": device.id, "serial": device.serial},
        )
        return True

    def _device(self) -> str:
        if self.tunnel_user is not None:
            return "ssh:" + self.tunnel_user
        sslobj = self.writer.get_extra_info("ssl_object")
        fingerprint = peer_certificate_fingerprint(sslobj)
        if fingerprint is not None:
            return "cert:" + fingerprint
        return "addr:" + self.source

    def _id_for_upstream(self) -> list[tuple[str, str | None]]:
        pairs = [
            (k, v)
            for k, v in self.session.client_id
            if not k.lower().startswith(_RESERVED_ID_PREFIX)
        ][:27]
        pairs += [
            ("x-originating-ip", self.source),
            ("x-originating-port", str(self.port)),
            ("x-proxy-door", self.door.name),
        ]
        return pairs

    async def _login(self, action: CheckLogin) -> tuple[UpstreamImap, UserRecord, str] | None:
        began = time.monotonic()
        cfg = self.rt.config
        proxy = cfg.imap_proxy
        device = self._device()
        direct = proxy.upstream_login == "passthrough" and cfg.auth.password_verifier == "upstream"  # noqa: S105
        session_verifier = _SessionVerifier(self.rt, self.door.pool, self._id_for_upstream())
        remembering = _RememberingVerifier(self.rt.verifier)
        verifier: PasswordVerifier = session_verifier if direct else remembering
        result: LoginResult | None = None
        upstream: UpstreamImap | None = None
        try:
            login = await self._login_name(action.user)
            if login.unknown_suffix is not None:
                result = await self._refuse_unknown_profile(login)
            elif self.tunnel_user is not None:
                result = await self.rt.authenticator.login_tunnelled(
                    login.user,
                    action.secret,
                    tunnel_user=self.tunnel_user,
                    source=self.source,
                    door=self.door.name,
                    verifier=verifier,
                )
            else:
                # A callback may hold this LOGIN: the client gets untagged OKs meanwhile.
                client = WAITING_CLIENT.set(_HeldLogin(self))
                held_device = LOGIN_DEVICE.set(device)
                try:
                    result = await self.rt.authenticator.login_combined(
                        login.user,
                        action.secret,
                        source=self.source,
                        door=self.door.name,
                        device=device,
                        verifier=verifier,
                    )
                finally:
                    WAITING_CLIENT.reset(client)
                    LOGIN_DEVICE.reset(held_device)
            if result.ok and result.user is not None:
                if direct:
                    upstream, session_verifier.conn = session_verifier.conn, None
                else:
                    upstream = await self._upstream_login(result.user, remembering.password)
                if upstream is None:
                    result = LoginResult(False, "upstream_login_failed", temporary=True)
        except StoreError as exc:
            # Fail closed with a temporary NO: the store (locks, codes, windows) decides logins.
            log.error("login of %s not decided: %s", action.user[:128], exc)
            result = LoginResult(False, "store_unavailable", temporary=True)
            if upstream is not None:
                await upstream.close()
                upstream = None
        finally:
            await session_verifier.discard()
        if not result.ok or upstream is None or result.user is None:
            if not result.temporary:
                # Every failure is answered failure_delay_ms after the attempt began, however
                # long the checks took (an upstream's own failure delay, say), so the time does
                # not tell which factor failed. The delay should exceed the upstream's check time.
                left = began + proxy.failure_delay_ms / 1000 - time.monotonic()
                if left > 0:
                    await asyncio.sleep(left)
            await self._perform(
                self.session.login_result(action.tag, ok=False, temporary=result.temporary)
            )
            return None
        self.login_profile = login.profile
        caps = capabilities.postlogin(upstream.capabilities, compress=not self.link_compressed)
        await self._perform(
            self.session.login_result(action.tag, ok=True, temporary=False, caps=caps)
        )
        return upstream, result.user, device

    async def _login_name(self, login: str) -> LoginName:
        """The user name without its profile suffix; only the bare name goes any further."""
        name = split_login(login, self.door.settings.profile_separator, self.door.profiles)
        if name.unknown_suffix is not None and await self.rt.store.get_user(login) is not None:
            # A user whose name holds the separator (say `-`) logs in under that whole name.
            return LoginName(login)
        return name

    async def _refuse_unknown_profile(self, login: LoginName) -> LoginResult:
        """A suffix naming no configured profile: refused before any factor is checked."""
        await self.rt.auditor.record(
            "auth",
            "fail",
            user=login.user,
            source=self.source,
            door=self.door.name,
            reason="unknown_profile",
            detail={"profile": (login.unknown_suffix or "")[:64]},
        )
        # Counted against the source only, like an unknown user name.
        await self.rt.throttle.failure(None, self.source, self.door.name)
        return LoginResult(False, "unknown_profile")

    async def _upstream_login(self, user: UserRecord, password: str | None) -> UpstreamImap | None:
        """Log in upstream after a login decided by a verifier other than the upstream."""
        cfg = self.rt.config
        proxy = cfg.imap_proxy
        server = cfg.upstream.imap
        if proxy.upstream_login == "master":
            assert proxy.master_user is not None and proxy.master_password is not None
            login_name = f"{user.name}{proxy.master_separator}{proxy.master_user}"
            # A password file usually ends with a newline that is not part of the password.
            login_password = proxy.master_password.text().rstrip("\r\n")
        else:
            if password is None:
                return None
            login_name, login_password = user.name, password
        conn: UpstreamImap | None = None
        try:
            conn = await prepared_upstream(self.door.pool, self._id_for_upstream())
            async with asyncio.timeout(server.timeout_seconds):
                outcome = await conn.login(login_name, login_password)
        except (UpstreamError, TimeoutError, OSError, ssl.SSLError) as exc:
            log.warning("upstream session for %s failed: %s", user.name, _reason(exc))
            outcome = Outcome.UNAVAILABLE
        if outcome is not Outcome.ACCEPTED:
            if conn is not None:
                await conn.close()
            await self.rt.auditor.record(
                "upstream_login",
                "error",
                user=user.name,
                source=self.source,
                door=self.door.name,
                reason=outcome.value,
                detail={"mode": proxy.upstream_login},
            )
            return None
        return conn

    # -- after login
    async def _relay(self, upstream: UpstreamImap, user: UserRecord, device: str) -> None:
        rt = self.rt
        started = rt.clock()
        began = time.monotonic()
        session_id = "ses_" + secrets.token_hex(8)
        # After login the client may send large commands (APPEND): the post-login limits apply,
        # and the bytes the pre-login parser already holds (pipelined commands) carry over.
        self.parser.set_limits(Limits())
        choice = choose_profile(
            login_profile=self.login_profile,
            client_id=self.session.client_id,
            stored=user.profile,
            known=self.door.profiles,
            device=(await rt.store.device_profiles(user.id)).get(device),
        )
        if choice.ignored:
            log.warning("%s: no such profile %s; using %s", user.name, choice.ignored, choice.name)
        relay = ImapRelay(
            self.reader,
            self.writer,
            self.parser,
            upstream,
            self.door.relay_settings,
            profile=self.door.profiles[choice.name],
            profile_name=choice.name,
        )
        # Lean markers tell the user which login shows a message as stored.
        relay.original_login = f"{user.name}{self.rt.config.imap_proxy.profile_separator}lan"
        relay.cache, relay.user_name = self.door.lean_cache, user.name
        relay.offer_compress = not self.link_compressed
        relay.logout_when_client_gone = self.logout_when_gone
        # The relay starts at once; the bookkeeping below runs beside it, not in the client's way.
        relay_task = asyncio.create_task(relay.run(), name=f"imap-relay-{session_id}")
        reason = "closed"
        try:
            await rt.store.open_session(
                SessionRecord(
                    id=session_id,
                    user_name=user.name,
                    door=self.door.name,
                    source=self.source,
                    device=device,
                    node=rt.config.hostname,
                    started_at=started,
                    last_seen_at=started,
                )
            )
            await rt.auditor.record(
                "session_open",
                "ok",
                user=user.name,
                source=self.source,
                door=self.door.name,
                detail={
                    "session_id": session_id,
                    "device": device,
                    "tls": self.tls,
                    "tunnel": "ssh" if self.tunnel_user is not None else None,
                    "profile": choice.name,
                    "profile_source": choice.source,
                    "via": self.via,
                },
            )
            reason = await self._watch(relay, relay_task, session_id)
        except StoreError as exc:
            # The session cannot be recorded or watched (revocations): end it, fail closed.
            log.error("session %s of %s ended: %s", session_id, user.name, exc)
            reason = "store_unavailable"
            await relay.end(b"Server unavailable, try again later.")
        except asyncio.CancelledError:
            reason = "server_shutdown"
            await relay.end(b"Server shutting down.")
            raise
        finally:
            if not relay_task.done():
                relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await relay_task
            await upstream.close()
            now = rt.clock()
            try:
                await rt.store.close_session(
                    session_id, now, reason, relay.bytes_in, relay.bytes_out
                )
            except StoreError as exc:
                log.error("session %s not closed in the store: %s", session_id, exc)
            await rt.auditor.record(
                "session_close",
                "ok",
                user=user.name,
                source=self.source,
                door=self.door.name,
                reason=reason,
                detail={
                    "session_id": session_id,
                    "bytes_in": relay.bytes_in,
                    "bytes_out": relay.bytes_out,
                    "duration_seconds": round(time.monotonic() - began, 3),
                    "profile": choice.name,
                    "lean_messages": relay.lean_messages,
                    "lean_bytes_saved": relay.lean_bytes_saved,
                    "prefetched": relay.prefetched,
                    "cache_hits": relay.cache_hits,
                },
            )

    async def _watch(self, relay: ImapRelay, relay_task: asyncio.Task[str], session_id: str) -> str:
        """Wait for the relay, a revocation (the door's watcher polls the store for all its
        sessions at once) or a draining shutdown."""
        draining = self.door.draining
        # Bare futures the door resolves (lighter than a task per session).
        loop = asyncio.get_running_loop()
        drain_wait: asyncio.Future[str] = loop.create_future()
        live = _LiveSession(relay, loop.create_future(), self.rt.clock())
        self.door.drain_waiters.add(drain_wait)
        self.door.live[session_id] = live
        self.door.start_watcher()
        try:
            while True:
                if draining.is_set():
                    return await self._drain_session(relay, relay_task)
                done, _ = await asyncio.wait(
                    {relay_task, drain_wait, live.revoked}, return_when=asyncio.FIRST_COMPLETED
                )
                if relay_task in done:
                    return relay_task.result()
                if live.revoked in done:
                    await relay.end(b"Session ended by the administrator.")
                    relay_task.cancel()
                    return "revoked"
        finally:
            self.door.live.pop(session_id, None)
            self.door.drain_waiters.discard(drain_wait)
            drain_wait.cancel()
            live.revoked.cancel()

    async def _drain_session(self, relay: ImapRelay, relay_task: asyncio.Task[str]) -> str:
        """Shutdown: BYE when nothing is in flight, or at the drain deadline regardless."""
        counts = self.door.drain_counts
        while not relay.quiescent() and time.monotonic() < self.door.drain_deadline:
            done, _ = await asyncio.wait({relay_task}, timeout=_DRAIN_POLL)
            if done:
                return relay_task.result()
        if relay.quiescent():
            counts.sessions_drained += 1
            reason = "server_shutdown"
        else:
            counts.sessions_cut += 1
            reason = "drain_timeout"
        await relay.end(SHUTDOWN_BYE)
        if reason == "drain_timeout":
            # A client that stopped reading would hold a graceful close open: cut it.
            transport = getattr(self.writer, "transport", None)
            if transport is not None:
                transport.abort()
        relay_task.cancel()
        return reason


class _HeldLogin:
    """The WaitingClient of an IMAP LOGIN held for a callback: it cannot be asked anything."""

    can_ask = False

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    async def ask(self, instruction: str, prompt: str) -> str | None:
        return None

    async def keepalive(self, text: str) -> None:
        # An untagged OK may come at any time, during a command too (RFC 9051 7.1, RFC 3501
        # 7.1): it keeps the client's read timeout and NAT bindings from expiring.
        clean = "".join(c for c in text if c.isprintable() and c not in "[]")[:200]
        await self.conn._send(f"* OK {clean or 'Waiting'}\r\n".encode())


async def _open_imaps(rt: Runtime, listener: Listener) -> Door:
    door = ImapDoor(rt, listener, name="imaps", implicit_tls=True)
    await door.start()
    return door


async def _open_imap(rt: Runtime, listener: Listener) -> Door:
    door = ImapDoor(rt, listener, name="imap", implicit_tls=False)
    await door.start()
    return door


DOORS["imaps"] = _open_imaps
DOORS["imap"] = _open_imap
