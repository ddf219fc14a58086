"""The submission doors: SMTP with TLS from the first byte (465) or STARTTLS first (587), relayed.

Built on aiosmtpd's SMTP protocol class: it parses the verbs, STARTTLS and the AUTH exchanges;
this module decides. A client must AUTH (PLAIN or LOGIN, only once TLS is up) with the same
password+code rule, travel window, throttling and audit as the IMAP door before MAIL FROM is
taken; then each MAIL and RCPT is checked against the policy (submission_policy) and passed to
the upstream submission server at once, so the client hears the upstream's own answer for each
recipient. DATA (or BDAT) is spooled (submission_spool), the From: header checked, and the
message streamed upstream behind one Received line. Each message is audited.

The SSH door's `submission` service ends in this same code (serve_tunnel): the tunnel's login
proved both factors, so AUTH there takes the password alone, as the tunnel's `imap` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import socket
import ssl
import time
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from roamgate.config import Listener, SubmissionSettings
from roamgate.gateway.imap_door import _RememberingVerifier
from roamgate.gateway.limits import ConnectionLimiter
from roamgate.gateway.proxy_accept import Origin, ProxyAcceptor, TrustedProxies
from roamgate.gateway.pump import Counted, relay
from roamgate.gateway.serve import DOORS, Door
from roamgate.gateway.smtp_upstream import Reply, UpstreamSmtp, UpstreamSmtpError
from roamgate.gateway.submission_policy import (
    MESSAGE_TOO_LARGE,
    NOT_AUTHENTICATED,
    SPOOL_FULL,
    TOO_MANY_MESSAGES,
    USER_DISABLED,
    HeaderScanner,
    Refusal,
    SenderRules,
    check_sender,
    received_header,
    rules_for,
    too_many_recipients,
)
from roamgate.gateway.submission_spool import Spool
from roamgate.gateway.tls import peer_certificate_fingerprint, server_context
from roamgate.login.authenticator import LoginResult
from roamgate.login.profile_choice import split_login
from roamgate.runtime import Runtime
from roamgate.store.base import JsonValue, UserRecord

log = logging.getLogger("roamgate.submission")
# aiosmtpd logs every command line at INFO (addresses, AUTH verbs): its own masking would be
# all that stands between a client's AUTH PLAIN blob and the log. This module logs what matters.
logging.getLogger("mail.log").setLevel(logging.WARNING)

AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_TEMPORARY = "454 4.7.0 Temporary authentication failure, try again later"
AUTH_TOO_MANY = "421 4.7.0 Too many failed logins, closing connection"
UPSTREAM_UNAVAILABLE = "451 4.4.1 Upstream mail server unavailable, try again later"
UPSTREAM_LOGIN_FAILED = "454 4.7.0 Upstream mail server refused the gateway's login"
_QUEUED_AS = re.compile(r"queued as ([A-Za-z0-9._-]{1,64})", re.IGNORECASE)
_BDAT_ARGS = re.compile(r"(\d{1,10})(?: +(LAST))?", re.IGNORECASE)
# MAIL FROM parameters passed upstream, each only if the upstream announces its extension.
_MAIL_PARAM_EXTENSION = {"BODY": "8BITMIME", "SMTPUTF8": "SMTPUTF8", "SIZE": "SIZE"}
_EHLO_FROM_UPSTREAM = ("8BITMIME", "SMTPUTF8")


class SubmissionDoor:
    """One listener (`submissions` or `submission`), or none: the SSH door's tunnels."""

    def __init__(
        self, rt: Runtime, listener: Listener | None, *, name: str, implicit_tls: bool
    ) -> None:
        assert rt.config.upstream.smtp is not None  # the config check demands it
        self.rt = rt
        self.listener = listener
        self.name = name
        self.implicit_tls = implicit_tls
        self.settings: SubmissionSettings = rt.config.submission
        self.upstream_server = rt.config.upstream.smtp
        self.ssl_context = server_context(rt.config.tls)
        self.limiter = ConnectionLimiter(
            self.settings.max_connections, self.settings.max_connections_per_source
        )
        # The upstream's EHLO keywords as last seen: what the door may announce in turn.
        self.upstream_caps: dict[str, str] = {}
        self._server: asyncio.AbstractServer | None = None
        self._proxied: ProxyAcceptor | None = None
        self._sessions: set[SubmissionSession] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self._drained = asyncio.Event()  # no session and no bookkeeping left
        self._drained.set()

    async def start(self) -> None:
        assert self.listener is not None
        self.spawn(self.probe_upstream(), "submission-probe")
        if self.listener.proxy_protocol:
            # Behind a load balancer: the acceptor reads the PROXY header, then the session
            # runs on the socket with the client's address from it.
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
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SubmissionSession(self),
            self.listener.host,
            self.listener.port,
            ssl=self.ssl_context if self.implicit_tls else None,
            ssl_handshake_timeout=30 if self.implicit_tls else None,
        )

    async def _accept_proxied(self, sock: socket.socket, origin: Origin) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: SubmissionSession(self, source=origin.source, port=origin.port),
                sock,
                ssl=self.ssl_context if self.implicit_tls else None,
                ssl_handshake_timeout=30 if self.implicit_tls else None,
            )
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError):
            sock.close()

    async def probe_upstream(self) -> None:
        """Learn the upstream's extensions before the first client asks (EHLO comes first)."""
        try:
            conn = await UpstreamSmtp.connect(self.upstream_server, self.rt.config.hostname)
        except UpstreamSmtpError as exc:
            log.warning("upstream submission server not reachable yet: %s", exc)
            return
        self.upstream_caps = conn.caps
        await conn.quit()

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        self._drained.clear()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("submission task %s failed", task.get_name(), exc_info=task.exception())
        self._check_drained()

    def session_added(self, session: SubmissionSession) -> None:
        self._sessions.add(session)
        self._drained.clear()

    def session_removed(self, session: SubmissionSession) -> None:
        self._sessions.discard(session)
        self._check_drained()

    def _check_drained(self) -> None:
        if not self._sessions and not self._tasks:
            self._drained.set()

    async def serve_tunnel(self, channel: Counted, source: str, port: int, tunnel_user: str) -> str:
        """One SMTP session over an SSH channel, the user already known to the tunnel.

        aiosmtpd's SMTP is an asyncio protocol that wants a transport: a socketpair gives it
        one, and the channel is relayed to the other end.
        """
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: SubmissionSession(self, tunnel_user=tunnel_user, source=source, port=port),
                ours,
            )
            reader, writer = await asyncio.open_connection(sock=theirs)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        await relay(channel, reader, writer)
        return "closed"

    def reload(self, rt: Runtime) -> None:
        """SIGHUP: later sessions get the new limits and policy; the certificate changes in place."""
        self.settings = rt.config.submission
        self.limiter.total = self.settings.max_connections
        self.limiter.per_source = self.settings.max_connections_per_source
        # As the IMAP door does: the listening socket keeps this context, so loading the new
        # pair gives later handshakes the new certificate (serve checked the pair first).
        tls = rt.config.tls
        self.ssl_context.load_cert_chain(str(tls.cert_file), str(tls.key_file))

    async def drain(self, deadline: float) -> None:
        """SIGTERM: stop accepting; idle sessions hear 421 now, a message being sent finishes."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._proxied is not None:
            await self._proxied.close()
        for session in list(self._sessions):
            session.shut_down()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), max(0.0, deadline - time.monotonic()))
        if self._sessions:
            log.warning(
                "%s: %d session(s) still sending at the drain deadline; closing them",
                self.name,
                len(self._sessions),
            )

    async def close(self) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._proxied is not None:
            await self._proxied.close()
        for session in list(self._sessions):
            session.shut_down()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), 10)
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)


class SubmissionSession(SMTP):
    """One client connection: aiosmtpd parses, this class decides and relays."""

    def __init__(
        self,
        door: SubmissionDoor,
        *,
        tunnel_user: str | None = None,
        source: str | None = None,
        port: int = 0,
    ) -> None:
        self.door = door
        self.rt = door.rt
        self.settings = door.settings
        self.tunnel_user = tunnel_user
        # Given for a tunnel or a PROXY header; else the peer's address (connection_made).
        self.source = source or "?"
        self.port = port
        self._source_given = source is not None
        self.user: UserRecord | None = None
        self.rules: SenderRules | None = None
        self._password: str | None = None  # kept for a passthrough AUTH upstream, never logged
        self.session_id = "smtp_" + secrets.token_hex(8)
        self.upstream: UpstreamSmtp | None = None
        self.failures = 0
        self.helo = ""
        self._spool: Spool | None = None  # the message being received, if any
        self._abandon_recorded = False
        self._bdat: tuple[Spool, HeaderScanner] | None = None
        self._slot_user: str | None = None  # whose in-flight count this session's message holds
        self._refused: str | None = None
        self._hold: contextlib.ExitStack | None = None
        self._grace: asyncio.TimerHandle | None = None
        tunnel = tunnel_user is not None
        super().__init__(
            self,
            # SIZE is announced and checked here (per user), not by aiosmtpd.
            data_size_limit=None,
            enable_SMTPUTF8=True,
            hostname=self.rt.config.hostname,
            ident="roamgate",
            # An SSH tunnel is encrypted already: no STARTTLS there.
            tls_context=None if (tunnel or door.implicit_tls) else door.ssl_context,
            # aiosmtpd's require_starttls would answer every other verb itself, unaudited;
            # instead AUTH is refused here (smtp_AUTH) and MAIL and the rest by
            # check_auth_needed, both audited; nothing else leads anywhere before AUTH.
            require_starttls=False,
            timeout=float(self.settings.idle_timeout_seconds),
            # AUTH needs TLS; with implicit TLS and in a tunnel it is there from the start
            # (aiosmtpd only knows of its own STARTTLS). The AUTH-before-MAIL rule is
            # enforced in check_auth_needed, so auth_required stays off.
            auth_require_tls=not tunnel and not door.implicit_tls,
            auth_required=False,
            auth_exclude_mechanism=(),
        )

    # -- connection life
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        if first:
            peer = transport.get_extra_info("peername")
            if not self._source_given and isinstance(peer, tuple):
                self.source, self.port = str(peer[0]), int(peer[1])
            if self.tunnel_user is None:
                self._refused = self.door.limiter.admit(self.source)
                if self._refused is None and self.door.closing:
                    self._refused = "shutting_down"
                if self._refused is None:
                    self._hold = contextlib.ExitStack()
                    self._hold.enter_context(self.door.limiter.hold(self.source))
            self.door.session_added(self)
            self._grace = asyncio.get_running_loop().call_later(
                float(self.settings.login_grace_seconds), self._grace_over
            )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._grace is not None:
            self._grace.cancel()
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        pending = self._spool or (self._bdat[0] if self._bdat is not None else None)
        if pending is not None:
            self._abandoned(pending)
        if self._bdat is not None:
            self._bdat[0].close()
            self._bdat = None
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            self.door.spawn(upstream.quit(), "upstream-quit")
        self._password = None
        self._release_slot()
        self.door.session_removed(self)
        super().connection_lost(error)

    def _abandoned(self, spool: Spool) -> None:
        """The client stopped mid-DATA (or between BDAT chunks): nothing goes upstream.

        Called from the cancelled DATA reader or from connection_lost, whichever comes
        first (aiosmtpd cancels the reader on EOF before the transport reports the loss);
        the QUIT that connection_lost sends ends the upstream's half-made transaction.
        """
        if self._abandon_recorded:
            return
        self._abandon_recorded = True
        audit = self._audit_message(
            "fail", "client_disconnected_in_data", spool.size, None, self._envelope_detail()
        )
        self.door.spawn(audit, "audit")

    def _grace_over(self) -> None:
        if self.user is None and self.transport is not None:
            log.info(
                "submission %s from %s: login grace time exceeded", self.door.name, self.source
            )
            self._write_and_close(b"421 4.7.0 Login grace time exceeded\r\n")

    def shut_down(self) -> None:
        if self.transport is not None and self._spool is None:
            self._write_and_close(b"421 4.3.2 Server shutting down\r\n")

    def _write_and_close(self, data: bytes) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(data)
        if transport is not None:
            transport.close()

    async def _handle_client(self) -> None:
        if self._refused is not None:
            await self.rt.auditor.record(
                "connection_refused", "fail", source=self.source, door=self.door.name,
                reason=self._refused,
            )  # fmt: skip
            await self.push("421 4.7.0 Too many connections, try again later")
            assert self.transport is not None
            self.transport.close()
            return
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            await super()._handle_client()  # errors: the client went away, nothing to tell

    async def handle_exception(self, error: Exception) -> str:
        # Never exception text to the peer; the log gets the traceback.
        log.error("submission session %s failed", self.session_id, exc_info=error)
        return "451 4.3.0 Local error in processing"

    # -- the audit trail
    async def _refuse(self, refusal: Refusal, **detail: JsonValue) -> str:
        await self.rt.auditor.record(
            "submission",
            "fail",
            user=self.user.name if self.user else None,
            source=self.source,
            door=self.door.name,
            reason=refusal.reason,
            detail={"session_id": self.session_id, **detail},
        )
        return refusal.reply

    def _envelope_detail(self) -> dict[str, JsonValue]:
        envelope = self.envelope
        return {
            "session_id": self.session_id,
            "sender": str(envelope.mail_from) if envelope and envelope.mail_from else None,
            "recipients": len(envelope.rcpt_tos) if envelope else 0,
        }

    async def _audit_message(
        self,
        result: str,
        reason: str | None,
        size: int,
        reply: Reply | None = None,
        envelope: dict[str, JsonValue] | None = None,
    ) -> None:
        """One event per message: who, from which address, to how many, how big, what became."""
        detail = {**(envelope or self._envelope_detail()), "size": size}
        if reply is not None:
            detail["upstream_reply"] = reply.code
            found = _QUEUED_AS.search(reply.text)
            detail["queue_id"] = found.group(1) if found else None
        await self.rt.auditor.record(
            "submission_message",
            result,
            user=self.user.name if self.user else None,
            source=self.source,
            door=self.door.name,
            reason=reason,
            detail=detail,
        )

    # -- AUTH: aiosmtpd parses PLAIN and LOGIN; the decision is asynchronous, so it is made here
    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # Called by aiosmtpd's parsers: hand the parsed pair on to _check, decide nothing.
        return AuthResult(success=True, handled=False, auth_data=auth_data)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._check(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._check(await super().auth_LOGIN(server, args))

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if self.tls_context is not None and self._tls_protocol is None:
            # The STARTTLS door before STARTTLS: no credentials over plaintext.
            await self.rt.auditor.record(
                "submission", "fail", source=self.source, door=self.door.name,
                reason="auth_before_tls", detail={"session_id": self.session_id},
            )  # fmt: skip
            await self.push("530 5.7.0 Must issue a STARTTLS command first")
            return
        await super().smtp_AUTH(arg)

    def _device(self) -> str:
        if self.tunnel_user is not None:
            return "ssh:" + self.tunnel_user
        assert self.transport is not None
        fingerprint = peer_certificate_fingerprint(self.transport.get_extra_info("ssl_object"))
        return "cert:" + fingerprint if fingerprint is not None else "addr:" + self.source

    async def _check(self, parsed: AuthResult) -> AuthResult:
        if not parsed.success or not isinstance(parsed.auth_data, LoginPassword):
            return parsed
        began = time.monotonic()
        try:
            login = parsed.auth_data.login.decode("utf-8")
            secret = parsed.auth_data.password.decode("utf-8")
        except UnicodeDecodeError:
            login, secret = "", ""
        result = LoginResult(False, "undecodable")
        remembering = _RememberingVerifier(self.rt.verifier)
        if login and secret:
            imap = self.rt.config.imap_proxy
            name = split_login(login, imap.profile_separator, self.rt.config.link_profiles())
            user = name.user
            if name.unknown_suffix is not None or name.profile is not None:
                # A profile suffix means nothing here; a name holding the separator is whole.
                user = name.user if await self.rt.store.get_user(name.user) else login
            if self.tunnel_user is not None:
                result = await self.rt.authenticator.login_tunnelled(
                    user,
                    secret,
                    tunnel_user=self.tunnel_user,
                    source=self.source,
                    door=self.door.name,
                    verifier=remembering,
                )
            else:
                result = await self.rt.authenticator.login_combined(
                    user,
                    secret,
                    source=self.source,
                    door=self.door.name,
                    device=self._device(),
                    verifier=remembering,
                )
        if result.ok and result.user is not None:
            self._start(result.user, remembering.password)
            return AuthResult(success=True, handled=False, auth_data=result.user.name)
        if result.temporary:
            return AuthResult(success=False, handled=False, message=AUTH_TEMPORARY)
        # Every failure is answered failure_delay_ms after the attempt began, however long the
        # checks took, so the time does not tell which factor failed.
        left = began + self.settings.failure_delay_ms / 1000 - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)
        self.failures += 1
        if self.failures >= self.settings.max_login_failures:
            await self.push(AUTH_TOO_MANY)
            if self.transport is not None:
                self.transport.close()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=AUTH_INVALID)

    def _start(self, user: UserRecord, password: str | None) -> None:
        self.user = user
        self.rules = rules_for(user, self.settings)
        self._password = password
        if self._grace is not None:
            self._grace.cancel()
        log.info(
            "submission %s: %s authenticated from %s (%s)",
            self.door.name,
            user.name,
            self.source,
            self.session_id,
        )

    async def check_auth_needed(self, caller_method: str) -> bool:
        """Nothing before AUTH; in a tunnel the SSH login may stand in for it (see README)."""
        if self.user is not None:
            return False
        if self.tunnel_user is not None and self.settings.upstream_login != "passthrough":
            user = await self.rt.store.get_user(self.tunnel_user)
            if user is not None and user.enabled:
                self._start(user, None)
                return False
        await self.push(await self._refuse(NOT_AUTHENTICATED, command=caller_method))
        return True

    # -- the upstream
    async def _upstream(self) -> UpstreamSmtp | str:
        """The session's upstream connection, logged in; or the reply that refuses."""
        if self.upstream is not None:
            return self.upstream
        assert self.user is not None
        try:
            conn = await UpstreamSmtp.connect(self.door.upstream_server, self.rt.config.hostname)
        except UpstreamSmtpError as exc:
            log.warning("submission %s: upstream unavailable: %s", self.session_id, exc)
            await self._refuse_upstream("upstream_unavailable")
            return UPSTREAM_UNAVAILABLE
        self.door.upstream_caps = conn.caps
        mode = self.settings.upstream_login
        reply: Reply | None = None
        try:
            if mode == "passthrough":
                if self._password is None:
                    await conn.quit()
                    return await self._refuse(NOT_AUTHENTICATED, reason="password_needed")
                reply = await conn.auth_plain(self.user.name, self._password)
            elif mode == "relay":
                assert self.settings.relay_user and self.settings.relay_password
                password = self.settings.relay_password.text().rstrip("\r\n")
                reply = await conn.auth_plain(self.settings.relay_user, password)
        except (UpstreamSmtpError, OSError, ssl.SSLError) as exc:
            log.warning("submission %s: upstream login failed: %s", self.session_id, exc)
            await conn.close()
            await self._refuse_upstream("upstream_unavailable")
            return UPSTREAM_UNAVAILABLE
        if reply is not None and reply.code != 235:
            log.warning(
                "submission %s: upstream refused the %s login: %d",
                self.session_id,
                mode,
                reply.code,
            )
            await conn.quit()
            await self._refuse_upstream("upstream_login_refused", code=reply.code)
            return UPSTREAM_LOGIN_FAILED
        self.upstream = conn
        return conn

    async def _refuse_upstream(self, reason: str, **detail: JsonValue) -> None:
        await self.rt.auditor.record(
            "submission",
            "error",
            user=self.user.name if self.user else None,
            source=self.source,
            door=self.door.name,
            reason=reason,
            detail={"session_id": self.session_id, "mode": self.settings.upstream_login, **detail},
        )

    async def _upstream_command(self, line: str, *, retry: bool = False) -> Reply | str:
        """One command upstream; with retry, a connection the upstream dropped while the
        client was idle (its own timeout) is replaced once, at a transaction's start."""
        reused = self.upstream is not None
        conn = await self._upstream()
        if isinstance(conn, str):
            return conn
        try:
            return await conn.command(line)
        except (UpstreamSmtpError, OSError, ssl.SSLError) as exc:
            await self._drop_upstream()
            if retry and reused:
                return await self._upstream_command(line)
            log.warning("submission %s: upstream failed: %s", self.session_id, exc)
            await self._refuse_upstream("upstream_failed")
            return UPSTREAM_UNAVAILABLE

    async def _drop_upstream(self) -> None:
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            await upstream.close()

    # -- the hooks aiosmtpd calls after parsing (handler = this session)
    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.helo = hostname
        # EHLO resets the transaction (RFC 5321 4.1.4): the upstream's too.
        await self._reset_upstream()
        caps = self.door.upstream_caps
        kept = [
            r
            for r in responses[:-1]
            if r[4:].split(" ")[0].upper() not in _EHLO_FROM_UPSTREAM or r[4:].upper() in caps
        ]
        limit = self.rules.max_message_bytes if self.rules else self.settings.max_message_bytes
        upstream_size = caps.get("SIZE", "")
        if upstream_size.isdigit() and int(upstream_size) > 0:
            limit = min(limit, int(upstream_size))
        kept.append(f"250-SIZE {limit}")
        if "CHUNKING" in caps:
            kept.append("250-CHUNKING")
        kept.append("250-ENHANCEDSTATUSCODES")
        return [*kept, responses[-1]]

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> Any:
        self.helo = hostname
        await self._reset_upstream()
        return MISSING  # aiosmtpd's own answer

    async def _reset_upstream(self) -> None:
        if self.upstream is not None:
            await self._upstream_command("RSET")

    def _no_room_for(self, size: int) -> bool:
        """A message of the SIZE the client announced would not fit on the spool disk now."""
        if size <= self.settings.spool_memory_bytes:
            return False
        return self.rt.spool_disk.used + size > self.settings.spool_max_bytes

    def _size_limit(self) -> int:
        assert self.rules is not None
        limit = self.rules.max_message_bytes
        upstream_size = self.door.upstream_caps.get("SIZE", "")
        if upstream_size.isdigit() and int(upstream_size) > 0:
            limit = min(limit, int(upstream_size))
        return limit

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        assert self.user is not None and self.rules is not None
        # Each message starts here: a user disabled since AUTH (an admin, the directory sync)
        # is shut out now, not when this connection happens to end.
        current = await self.rt.store.get_user(self.user.name)
        if current is None or not current.enabled:
            refused = await self._refuse(USER_DISABLED, sender=address[:256])
            if self.transport is not None:
                # After aiosmtpd has written the reply (it does so as this hook returns).
                asyncio.get_running_loop().call_soon(self.transport.close)
            return refused
        refusal = check_sender(self.rules, address)
        if refusal is not None:
            return await self._refuse(refusal, sender=address[:256])
        for option in mail_options:
            key, _, value = option.partition("=")
            if key == "SIZE" and value.isdigit() and int(value) > self._size_limit():
                return await self._refuse(MESSAGE_TOO_LARGE, sender=address, size=int(value))
            if key == "SIZE" and value.isdigit() and self._no_room_for(int(value)):
                return await self._refuse(SPOOL_FULL, sender=address, size=int(value))
        self._release_slot()  # a second MAIL FROM replaces the first (aiosmtpd refuses it)
        # The messages under way are counted and this one's place taken before the audit
        # trail is read: one that finishes meanwhile is then counted twice (a refusal a moment
        # early), never not at all (one message over the limit). Other nodes' messages count
        # once they are audited.
        in_flight = self.rt.submissions_in_flight.get(self.user.name, 0)
        self._take_slot(self.user.name)
        sent = await self.rt.store.query_audit(
            user_name=self.user.name,
            kind="submission_message",
            result="ok",
            since=self.rt.clock() - 3600,
            limit=self.rules.max_messages_per_hour,
        )
        if len(sent) + in_flight >= self.rules.max_messages_per_hour:
            self._release_slot()
            return await self._refuse(
                TOO_MANY_MESSAGES, sender=address, sent=len(sent), in_flight=in_flight
            )
        caps = self.door.upstream_caps
        params = [
            o
            for o in mail_options
            if _MAIL_PARAM_EXTENSION.get(o.partition("=")[0]) in caps
            or o.partition("=")[0] not in _MAIL_PARAM_EXTENSION
        ]
        command = " ".join([f"MAIL FROM:<{address}>", *params])
        reply = await self._upstream_command(command, retry=True)
        if isinstance(reply, str) or not reply.ok:
            self._release_slot()
            return reply if isinstance(reply, str) else reply.wire()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return reply.wire()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        assert self.rules is not None
        if len(envelope.rcpt_tos) >= self.rules.max_recipients:
            return await self._refuse(
                too_many_recipients(self.rules.max_recipients),
                sender=str(envelope.mail_from),
                recipients=len(envelope.rcpt_tos),
            )
        reply = await self._upstream_command(f"RCPT TO:<{address}>")
        if isinstance(reply, str):
            return reply
        if reply.ok:
            envelope.rcpt_tos.append(address)
        return reply.wire()

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        self._drop_bdat()
        await self._reset_upstream()
        return MISSING

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            await upstream.quit()
        return "221 2.0.0 Bye"

    # -- the message
    def _reset_envelope(self) -> None:
        self.envelope = self._create_envelope()

    def _create_envelope(self) -> Envelope:
        # aiosmtpd makes a new envelope at every reset (RSET, EHLO, HELO, after DATA) and
        # this door after DATA and BDAT LAST: the message begun is over, sent or not, and
        # chunks a BDAT transaction left are not carried into the next one.
        self._release_slot()
        if self._bdat is not None:
            self._drop_bdat()
        return Envelope()

    def _take_slot(self, user: str) -> None:
        counts = self.rt.submissions_in_flight
        counts[user] = counts.get(user, 0) + 1
        self._slot_user = user

    def _release_slot(self) -> None:
        user, self._slot_user = self._slot_user, None
        if user is None:
            return
        counts = self.rt.submissions_in_flight
        left = counts.get(user, 0) - 1
        if left > 0:
            counts[user] = left
        else:
            counts.pop(user, None)

    def _drop_bdat(self) -> None:
        self._spool = None
        if self._bdat is not None:
            self._bdat[0].close()
            self._bdat = None

    def _new_spool(self) -> Spool:
        return Spool(
            memory_bytes=self.settings.spool_memory_bytes,
            directory=self.settings.spool_dir,
            limit=self._size_limit(),
            disk=self.rt.spool_disk,
            disk_limit=self.settings.spool_max_bytes,
        )

    async def _ready_for_data(self, arg: str | None, verb: str) -> bool:
        if await self.check_helo_needed():
            return False
        if await self.check_auth_needed(verb):
            return False
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return False
        return True

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA read line by line into a Spool instead of aiosmtpd's in-memory list.

        aiosmtpd's own smtp_DATA keeps every line in a list until the final dot and then joins
        them: two copies of the whole message in memory, for each concurrent client. It offers
        no hook before the end of DATA, so this override does the same reading (same limits:
        a line longer than 1001 bytes ends in 500, as RFC 5321 4.5.3.1.6 allows) but writes
        each line to the spool, which moves to disk past spool_memory_bytes and stops keeping
        anything past the SIZE limit.
        """
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self._bdat is not None:
            await self.push("503 5.5.1 BDAT transfer in progress")
            return
        if not await self._ready_for_data(arg, "DATA"):
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        spool = self._spool = self._new_spool()
        scanner = HeaderScanner()
        too_long = False
        ended = False  # the final dot came: only then is anything sent on
        try:
            fragment = False  # the last piece read was part of an over-long line
            while self.transport is not None:
                try:
                    line = await self._reader.readuntil(b"\r\n")
                except asyncio.LimitOverrunError as exc:
                    too_long = True
                    line = await self._reader.read(exc.consumed)
                    fragment = True
                    continue
                if fragment:
                    fragment = False  # the end of an over-long line
                    continue
                if line == b".\r\n":
                    ended = True
                    break
                if line.startswith(b"."):
                    line = line[1:]
                spool.write(line)
                scanner.feed(line)
        except (asyncio.CancelledError, asyncio.IncompleteReadError):
            ended = False
            raise
        finally:
            if not ended:
                self._abandoned(spool)
                self._spool = None
                spool.close()
        try:
            self._spool = None
            if too_long:
                await self._audit_message("fail", "line_too_long", spool.size)
                await self._reset_upstream()
                await self.push("500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)")
            else:
                await self.push(await self._finish(spool, scanner))
        finally:
            self._spool = None
            spool.close()
            self._reset_envelope()
        self._leave_if_draining()

    def _leave_if_draining(self) -> None:
        # A drain let this message finish; the client hears why the line closes now.
        if self.door.closing:
            self.shut_down()

    @syntax("BDAT size [LAST]")
    async def smtp_BDAT(self, arg: str) -> None:
        """CHUNKING (RFC 3030), offered when the upstream offers it: chunks go to the spool."""
        match = _BDAT_ARGS.fullmatch(arg.strip()) if arg else None
        if match is None:
            await self.push("501 5.5.4 Syntax: BDAT size [LAST]")
            return
        size, last = int(match.group(1)), match.group(2) is not None
        if "CHUNKING" not in self.door.upstream_caps or not await self._ready_for_data(arg, "BDAT"):
            # The chunk's bytes follow regardless; read them so they are not taken as commands.
            await self._discard(size)
            if "CHUNKING" not in self.door.upstream_caps:
                await self.push("502 5.5.1 BDAT not offered")
            return
        if self._bdat is None:
            self._bdat = (self._new_spool(), HeaderScanner())
        spool, scanner = self._bdat
        self._spool = spool
        left = size
        try:
            while left > 0:
                chunk = await self._reader.readexactly(min(left, 64 * 1024))
                left -= len(chunk)
                spool.write(chunk)
                scanner.feed(chunk)
        except asyncio.IncompleteReadError:
            return  # the client went away mid-chunk: connection_lost records it
        if not last:
            if spool.overflow or spool.no_space:
                reply = await self._not_kept(spool)
                self._drop_bdat()
                self._reset_envelope()
                await self.push(reply)
                return
            self._spool = None  # between chunks: nothing is in flight
            await self.push(f"250 2.0.0 {size} octets received")
            return
        self._bdat = None
        self._spool = None
        try:
            await self.push(await self._finish(spool, scanner))
        finally:
            spool.close()
            self._reset_envelope()
        self._leave_if_draining()

    async def _discard(self, size: int) -> None:
        while size > 0:
            size -= len(await self._reader.readexactly(min(size, 64 * 1024)))

    async def _not_kept(self, spool: Spool) -> str:
        """The message outgrew its SIZE limit or the node's spool disk: refused whole."""
        refusal = MESSAGE_TOO_LARGE if spool.overflow else SPOOL_FULL
        if refusal is SPOOL_FULL:
            log.warning(
                "submission %s: spool disk full (submission.spool_max_bytes %d): message refused",
                self.session_id,
                self.settings.spool_max_bytes,
            )
        await self._audit_message("fail", refusal.reason, spool.size)
        await self._reset_upstream()
        return refusal.reply

    async def _finish(self, spool: Spool, scanner: HeaderScanner) -> str:
        """The whole message is in: check its headers, then stream it upstream."""
        assert self.user is not None and self.rules is not None
        spool.seal()
        if spool.overflow or spool.no_space:
            return await self._not_kept(spool)
        refusal = scanner.check(self.rules)
        if refusal is not None:
            await self._audit_message("fail", refusal.reason, spool.size)
            await self._reset_upstream()
            return refusal.reply
        upstream = await self._upstream()
        if isinstance(upstream, str):
            return upstream
        received = received_header(
            helo=self.helo,
            source=self.source,
            hostname=self.rt.config.hostname,
            protocol="ESMTPA" if self.tunnel_user is not None else "ESMTPSA",
            session_id=self.session_id,
            user=self.user.name,
        )
        try:
            reply = await upstream.send_message(received, spool, spool.size)
        except (UpstreamSmtpError, OSError, ssl.SSLError) as exc:
            log.warning("submission %s: upstream failed during DATA: %s", self.session_id, exc)
            await self._drop_upstream()
            await self._audit_message("error", "upstream_failed", spool.size)
            return UPSTREAM_UNAVAILABLE
        await self._audit_message(
            "ok" if reply.ok else "fail",
            None if reply.ok else "upstream_refused",
            spool.size,
            reply,
        )
        self._release_slot()  # audited: from here the audit trail counts it
        log.info(
            "submission %s: %s sent %d bytes to %d recipient(s): %d",
            self.session_id,
            self.user.name,
            spool.size,
            len(self.envelope.rcpt_tos) if self.envelope else 0,
            reply.code,
        )
        return reply.wire()


async def _open_submissions(rt: Runtime, listener: Listener) -> Door:
    door = SubmissionDoor(rt, listener, name="submissions", implicit_tls=True)
    await door.start()
    return door


async def _open_submission(rt: Runtime, listener: Listener) -> Door:
    door = SubmissionDoor(rt, listener, name="submission", implicit_tls=False)
    await door.start()
    return door


DOORS["submissions"] = _open_submissions
DOORS["submission"] = _open_submission
