"""The SSH front door: password and one-time code by keyboard-interactive, forwards to named services.

Policy lives in small asyncssh hooks whose default is to refuse (see roamgate.ssh.forwards):
no shell, exec, subsystem, agent or X11 (a session channel is refused outright: every one of
those needs one), no remote or Unix-socket forwarding, no tun/tap, and direct-tcpip only to
`imap` (roamgate's own IMAP proxy, logged in as the SSH user with the password alone),
`submission` (roamgate's own submission door: its policy and relay, see submission_door) and
the configured forwards. Each refusal is audited.

Authentication is one keyboard-interactive conversation: `Password: ` then `One-time code: `.
A client that proves it holds a key (its signature) gives the door a device identity for the
travel window; a key the user registered replaces the password, never the code. asyncssh has no
MaxAuthTries, so answers are counted here and the connection is closed after too many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import asyncssh

from roamgate.callback.waiting import LOGIN_DEVICE, WAITING_CLIENT
from roamgate.config import Listener, SshSettings
from roamgate.gateway.imap_door import DrainCounts, ImapDoor
from roamgate.gateway.limits import ConnectionLimiter
from roamgate.gateway.proxy_accept import Origin, ProxyAcceptor, TrustedProxies
from roamgate.gateway.pump import Counted, relay
from roamgate.gateway.resumable import ResumableService
from roamgate.gateway.serve import DOORS, Door
from roamgate.gateway.submission_door import SubmissionDoor
from roamgate.login.authenticator import LoginResult
from roamgate.runtime import Runtime
from roamgate.ssh import algorithms
from roamgate.ssh.callback_round import KbdRound
from roamgate.ssh.forwards import SUBMISSION, Refusal, Service, resolve
from roamgate.store.base import JsonValue, SessionRecord, StoreError, TravelWindow, UserRecord

log = logging.getLogger("roamgate.ssh")

PASSWORD_PROMPT = "Password: "  # noqa: S105 (a prompt, not a password)
CODE_PROMPT = "One-time code: "
# Keys a client may offer per connection (an agent with many keys tries each); each one costs a
# signature check, so the count is bounded like the answers are.
MAX_KEY_OFFERS = 10
# Client-supplied text (a destination host) is cut to this before it reaches the audit trail.
_MAX_AUDIT_TEXT = 255

Challenge = tuple[str, str, str, list[tuple[str, bool]]]
_KeyCheck = Callable[[str, bytes, bytes, bytes], Coroutine[Any, Any, bool]]


def _challenge(prompt: str) -> Challenge:
    return ("", "", "", [(prompt, False)])


class SshDoor:
    """The listener and the state its connections share."""

    name = "ssh"

    def __init__(self, rt: Runtime, listener: Listener) -> None:
        assert rt.config.ssh is not None  # the config check demands an ssh: section
        self.rt = rt
        self.listener = listener
        self.settings: SshSettings = rt.config.ssh
        # The tunnel's IMAP target: the gateway's own proxy, without a listener of its own.
        self.imap = ImapDoor(rt, None, name="ssh-imap", implicit_tls=True)
        # The tunnel's `submission`: the submission door's own SMTP session and relay.
        self.submission = (
            SubmissionDoor(rt, None, name="ssh-submission", implicit_tls=False)
            if rt.config.upstream.smtp is not None
            else None
        )
        # `imap-resume`: IMAP sessions kept across line drops (gateway/resumable.py).
        self.resume = ResumableService(rt, self.imap, self.settings.resume, door=self.name)
        self.limiter = ConnectionLimiter(
            self.settings.max_connections, self.settings.max_connections_per_source
        )
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._proxied: ProxyAcceptor | None = None
        self._options: asyncssh.SSHServerConnectionOptions | None = None
        self._connections: set[_SshConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._drained = asyncio.Event()  # no connection and no bookkeeping left
        self._drained.set()
        self.ssh_closed = 0  # draining shutdown: closed after their forwards finished
        self.ssh_cut = 0  # closed at the drain deadline with forwards still open

    def connection_added(self, conn: _SshConnection) -> None:
        self._connections.add(conn)
        self._drained.clear()

    def connection_removed(self, conn: _SshConnection) -> None:
        self._connections.discard(conn)
        self._check_drained()

    def _check_drained(self) -> None:
        if not self._connections and not self._tasks:
            self._drained.set()

    def _host_keys(self) -> list[asyncssh.SSHKeyPair]:
        keypairs = asyncssh.load_keypairs([str(p) for p in self.settings.host_key_files])
        allowed = {a.encode() for a in algorithms.SIGNATURE}
        for keypair in keypairs:
            # An RSA key would also be offered as ssh-rsa (SHA-1) otherwise.
            keypair.host_key_algorithms = [a for a in keypair.host_key_algorithms if a in allowed]
        return list(keypairs)

    def _server_options(self) -> dict[str, Any]:
        login_timeout = self.settings.login_timeout_seconds
        callback = self.rt.config.callback
        if callback is not None:
            # A login held for a callback must not be cut by the login timer while it waits.
            login_timeout = max(login_timeout, callback.timeout_seconds + 30)
        return {
            "server_host_keys": self._host_keys(),
            "server_version": "roamgate",
            "kex_algs": list(algorithms.KEX),
            "encryption_algs": list(algorithms.ENCRYPTION),
            "mac_algs": list(algorithms.MAC),
            "signature_algs": list(algorithms.SIGNATURE),
            "compression_algs": list(algorithms.COMPRESSION),
            "login_timeout": float(login_timeout),
            "keepalive_interval": float(self.settings.keepalive_seconds),
            "keepalive_count_max": self.settings.keepalive_count_max,
            "allow_pty": False,
            "agent_forwarding": False,
            "x11_forwarding": False,
            "password_auth": False,
            "gss_host": None,
            "host_based_auth": False,
        }

    async def start(self) -> None:
        if self.submission is not None:
            # What the tunnel's SMTP sessions may offer in EHLO (8BITMIME, CHUNKING, ...).
            self.submission.spawn(self.submission.probe_upstream(), "submission-probe")
        self.resume.start()  # the grace-period clock, whichever way connections are accepted
        if self.listener.proxy_protocol:
            # asyncssh.listen accepts (and reads) sockets itself, so it cannot skip a PROXY
            # header. Instead ProxyAcceptor accepts, reads exactly the header (peek, then consume
            # that many bytes) and hands the socket, positioned at the client's SSH version
            # line, to asyncssh.run_server, which runs the server side on an already-connected
            # socket with the same options; the client address comes from the header (Origin).
            self._options = asyncssh.SSHServerConnectionOptions(**self._server_options())
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
        self._acceptor = await asyncssh.listen(
            self.listener.host,
            self.listener.port,
            server_factory=lambda: _SshConnection(self),
            **self._server_options(),
        )

    async def _accept_proxied(self, sock: socket.socket, origin: Origin) -> None:
        try:
            # Returns once the client has logged in (or raises when it did not); the
            # connection then lives on in the event loop, owned by its _SshConnection.
            await asyncssh.run_server(
                sock, options=self._options, server_factory=lambda: _SshConnection(self, origin)
            )
        except (asyncssh.Error, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            # The connection's own hooks audited what mattered (refused logins).
            log.debug("ssh connection from %s ended before login: %s", origin.source, exc)

    @property
    def port(self) -> int:
        if self._proxied is not None:
            return self._proxied.port
        assert self._acceptor is not None
        return int(self._acceptor.get_port())

    def spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        """Run bookkeeping from a synchronous asyncssh hook; close() waits for it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        self._drained.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, StoreError):  # the database is unreachable: one line, no traceback
                log.warning("ssh task %s failed: %s", task.get_name(), exc)
            else:
                log.error("ssh task %s failed", task.get_name(), exc_info=exc)
        self._check_drained()

    def reload(self, rt: Runtime) -> None:
        """SIGHUP: limits, delays and forwards for later logins; host keys and keep-alives for
        later connections (asyncssh applies acceptor options to connections accepted after)."""
        assert rt.config.ssh is not None
        self.settings = rt.config.ssh
        self.limiter.total = self.settings.max_connections
        self.limiter.per_source = self.settings.max_connections_per_source
        self.imap.reload(rt)
        if self._acceptor is not None:
            self._acceptor.update(
                server_host_keys=self._host_keys(),
                login_timeout=float(self.settings.login_timeout_seconds),
                keepalive_interval=float(self.settings.keepalive_seconds),
                keepalive_count_max=self.settings.keepalive_count_max,
            )
        if self._proxied is not None:  # behind PROXY protocol: options per accepted socket
            self._options = asyncssh.SSHServerConnectionOptions(**self._server_options())

    async def drain(self, deadline: float) -> DrainCounts:
        """Stop accepting; each connection is closed with a disconnect message once its
        forwards have finished (tunnelled IMAP sessions get their BYE first), or at the deadline."""
        self._closing = True
        if self._acceptor is not None:
            self._acceptor.close()
        if self._proxied is not None:
            await self._proxied.close()
        imap = asyncio.ensure_future(self.imap.drain(deadline))
        waits = [self._drain_connection(conn, deadline) for conn in list(self._connections)]
        await asyncio.gather(*waits)
        counts = await imap
        return counts

    async def _drain_connection(self, conn: _SshConnection, deadline: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.no_channels.wait(), max(0.0, deadline - time.monotonic()))
        if conn.busy():
            self.ssh_cut += 1
        else:
            self.ssh_closed += 1
        conn.shut_down()

    async def close(self) -> None:
        self._closing = True
        if self._acceptor is not None:
            self._acceptor.close()
        if self._proxied is not None:
            await self._proxied.close()
        for conn in list(self._connections):
            conn.shut_down()
        # connection_lost of each connection schedules its closing bookkeeping.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), 10)
        await self.resume.close()
        await self.imap.close()
        if self.submission is not None:
            await self.submission.close()
        if self._acceptor is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acceptor.wait_closed(), 5)


class _SshConnection(asyncssh.SSHServer):
    """One client connection: its login conversation, its channels, its session record."""

    def __init__(self, door: SshDoor, origin: Origin | None = None) -> None:
        self.door = door
        self.origin = origin  # behind a load balancer: the client its PROXY header named
        self.rt = door.rt
        self.settings = door.settings
        self.conn: asyncssh.SSHServerConnection | None = None
        self.source = "?"
        self.port = 0
        self._held: contextlib.ExitStack | None = None
        self._username = ""
        self._password: str | None = None
        self._step = ""
        self._window: TravelWindow | None = None
        self._failures = 0
        self._key_offers = 0
        self._last_key: asyncssh.SSHKey | None = None
        self._proven_keys: list[str] = []  # fingerprints whose signature verified
        self._login_key: str | None = None  # the registered key standing in for the password
        self.user: UserRecord | None = None
        self.factor = ""
        self.session_id: str | None = None
        self._started = 0.0
        self._began = 0.0
        self._channels: set[Counted] = set()
        self.no_channels = asyncio.Event()  # a draining shutdown waits for it
        self.no_channels.set()
        self._starting = 0  # channels accepted whose handler has not run yet
        self.bytes_in = 0  # of channels already closed
        self.bytes_out = 0
        self._watch: asyncio.Task[None] | None = None
        self._ended_by: str | None = None
        # A login held for a callback: its task and the bridge its questions come through.
        self._held_login: asyncio.Task[LoginResult] | None = None
        self._round: KbdRound | None = None

    # -- connection
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        if self.origin is not None:
            self.source, self.port = self.origin.source, self.origin.port
        else:
            peer = conn.get_extra_info("peername") or ("?", 0)
            self.source, self.port = str(peer[0]), int(peer[1])
        refused = self.door.limiter.admit(self.source)
        if refused is not None or self.door._closing:
            self._audit("connection_refused", "fail", reason=refused or "shutting_down")
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "Too many connections")
            return
        self._held = contextlib.ExitStack()
        self._held.enter_context(self.door.limiter.hold(self.source))
        self.door.connection_added(self)
        # The signature check stays asyncssh's; what a verified key means is decided here.
        conn.validate_public_key = self._wrap_key_check(conn.validate_public_key)  # type: ignore[method-assign,assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._password = None
        if self._round is not None:
            self._round.answer(None)
        if self._held_login is not None:
            self._held_login.cancel()
        if self._held is not None:
            self._held.close()
            self._held = None
        self.door.connection_removed(self)
        if self._watch is not None:
            self._watch.cancel()
        if self.session_id is not None:
            reason = self._ended_by or ("connection_lost" if exc is not None else "closed")
            self.door.spawn(self._close_session(reason), f"ssh-close-{self.session_id}")

    def busy(self) -> bool:
        """A forward is open (its channel still carries data)."""
        return bool(self._channels)

    def shut_down(self) -> None:
        if self.conn is not None:
            self._ended_by = self._ended_by or "server_shutdown"
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "Server shutting down")

    def _audit(
        self,
        kind: str,
        result: str,
        *,
        reason: str | None = None,
        detail: dict[str, JsonValue] | None = None,
    ) -> None:
        user = self.user.name if self.user is not None else (self._username or None)
        self.door.spawn(
            self.rt.auditor.record(
                kind,
                result,
                user=user,
                source=self.source,
                door=self.door.name,
                reason=reason,
                detail=detail,
            ),
            f"ssh-audit-{kind}",
        )

    # -- authentication
    def begin_auth(self, username: str) -> bool:
        # Always ask: whether the name exists is not told to the client.
        self._username = username[:128]
        return True

    def password_auth_supported(self) -> bool:
        return False  # one conversation for both factors: keyboard-interactive only

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Any key may be offered so that asyncssh checks its signature; a verified key never
        # ends authentication by itself (see _wrap_key_check).
        self._key_offers += 1
        if self._key_offers > MAX_KEY_OFFERS:
            return False
        self._last_key = key
        return True

    def _wrap_key_check(self, check: _KeyCheck) -> _KeyCheck:
        async def key_check(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
            ok = await check(username, key_data, msg, signature)
            if not msg:
                return ok  # a query ("would you take this key?"): yes, go on and sign
            if ok and self._last_key is not None:
                fingerprint = self._last_key.get_fingerprint("sha256")
                if fingerprint not in self._proven_keys:
                    self._proven_keys.append(fingerprint)
            # Proven or not, the login goes on with keyboard-interactive.
            return False

        return key_check

    def kbdint_auth_supported(self) -> bool:
        return True

    def _devices(self) -> list[str]:
        """The device identities of this client: its proven keys, else its address."""
        return [f"sshkey:{fp}" for fp in self._proven_keys] or [f"addr:{self.source}"]

    async def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Challenge:
        self._password = None
        self._window = None
        self._login_key = await self._registered_key(username)
        if self._login_key is not None:
            self._step = "code_after_key"
            return _challenge(CODE_PROMPT)
        self._step = "password"
        return _challenge(PASSWORD_PROMPT)

    async def _registered_key(self, username: str) -> str | None:
        if not self._proven_keys:
            return None
        try:
            return await self._find_registered_key(username)
        except StoreError as exc:
            log.error("ssh keys of %s not read: %s", username[:128], exc)
            return None  # the password is asked instead; its check fails closed

    async def _find_registered_key(self, username: str) -> str | None:
        user = await self.rt.store.get_user(username)
        if user is None:
            return None
        registered = {k.fingerprint for k in await self.rt.store.list_ssh_keys(user.id)}
        return next((fp for fp in self._proven_keys if fp in registered), None)

    async def validate_kbdint_response(
        self, username: str, responses: Sequence[str]
    ) -> bool | Challenge:
        began = time.monotonic()
        if len(responses) != 1 or len(responses[0]) > 1024:
            return await self._decided(
                username, LoginResult(False, "malformed_answer"), began, audit_malformed=True
            )
        try:
            return await self._answer(username, responses[0], began)
        except StoreError as exc:
            # Fail closed, nothing counted: the store (locks, codes, windows) decides logins.
            log.error("ssh login of %s not decided: %s", username[:128], exc)
            self._password = None
            result = LoginResult(False, "store_unavailable", temporary=True)
            return await self._decided(username, result, began)

    async def _answer(self, username: str, answer: str, began: float) -> bool | Challenge:
        auth = self.rt.authenticator
        step, self._step = self._step, ""
        source, door = self.source, self.door.name
        login: Coroutine[Any, Any, LoginResult] | None = None
        if step == "password":
            self._password = answer
            self._window = await auth.find_window(username, self._devices())
            if self._window is None:
                self._step = "code"
                return _challenge(CODE_PROMPT)
            login = auth.login_in_window(username, answer, self._window, source=source, door=door)
        elif step == "code" and self._password is not None:
            login = auth.login(
                username,
                self._password,
                answer,
                source=source,
                door=door,
                device=self._devices()[0],
            )
        elif step == "code_after_key" and self._login_key is not None:
            login = auth.login_with_key(username, self._login_key, answer, source=source, door=door)
        elif step == "callback" and self._round is not None and self._held_login is not None:
            self._round.answer(answer)
            followed = await self._follow()
            return (
                followed
                if isinstance(followed, tuple)
                else await self._decided(username, followed, began)
            )
        self._password = None
        if login is None:
            return await self._decided(username, LoginResult(False, "out_of_order"), began)
        followed = await self._start_login(login)
        if isinstance(followed, tuple):
            return followed
        return await self._decided(username, followed, began)

    async def _start_login(
        self, login: Coroutine[Any, Any, LoginResult]
    ) -> LoginResult | Challenge:
        """Run the login as a task that a callback may hold; its questions become rounds."""
        self._round = KbdRound()
        client = WAITING_CLIENT.set(self._round)
        device = LOGIN_DEVICE.set(self._devices()[0])
        try:
            # The task copies the context here, with both variables set.
            self._held_login = asyncio.get_running_loop().create_task(login)
        finally:
            WAITING_CLIENT.reset(client)
            LOGIN_DEVICE.reset(device)
        return await self._follow()

    async def _follow(self) -> LoginResult | Challenge:
        """The login's result, or its next question as a challenge."""
        task, bridge = self._held_login, self._round
        assert task is not None and bridge is not None
        question = asyncio.ensure_future(bridge.questions.get())
        try:
            await asyncio.wait({task, question}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not question.done():
                question.cancel()
        if task.done():
            self._held_login = self._round = None
            return task.result()
        instruction, prompt = question.result()
        self._step = "callback"
        return ("roamgate callback", instruction, "", [(prompt, False)])

    async def _decided(
        self, username: str, result: LoginResult, began: float, *, audit_malformed: bool = False
    ) -> bool:
        if audit_malformed:
            await self.rt.auditor.record(
                "auth",
                "fail",
                user=username,
                source=self.source,
                door=self.door.name,
                reason=result.reason,
            )
        if result.ok and result.user is not None:
            self.user = result.user
            self.factor = result.factor or ""
            return True
        if not result.temporary:
            self._failures += 1
            # Answered failure_delay_ms after the answer came in, however long the checks took
            # (an upstream's own failure delay, say), so the time does not tell which factor
            # failed. The delay should exceed the upstream's check time.
            left = began + self.settings.failure_delay_ms / 1000 - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
        if self._failures >= self.settings.max_auth_attempts and self.conn is not None:
            await self.rt.auditor.record(
                "connection_closed",
                "fail",
                user=username,
                source=self.source,
                door=self.door.name,
                reason="too_many_auth_failures",
                detail={"failures": self._failures},
            )
            self.conn.disconnect(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication failures"
            )
        return False

    async def auth_completed(self) -> None:
        assert self.user is not None
        rt = self.rt
        self.session_id = "ses_" + secrets.token_hex(8)
        self._started = rt.clock()
        self._began = time.monotonic()
        device = self._devices()[0]
        await rt.store.open_session(
            SessionRecord(
                id=self.session_id,
                user_name=self.user.name,
                door=self.door.name,
                source=self.source,
                device=device,
                node=rt.config.hostname,
                started_at=self._started,
                last_seen_at=self._started,
            )
        )
        client_version = ""
        if self.conn is not None:
            client_version = str(self.conn.get_extra_info("client_version", ""))[:_MAX_AUDIT_TEXT]
        await rt.auditor.record(
            "session_open",
            "ok",
            user=self.user.name,
            source=self.source,
            door=self.door.name,
            factor=self.factor,
            detail={
                "session_id": self.session_id,
                "device": device,
                "client": client_version,
                "via": self.origin.proxy if self.origin is not None else None,
            },
        )
        self._watch = asyncio.get_running_loop().create_task(
            self._watch_session(), name=f"ssh-watch-{self.session_id}"
        )

    def _totals(self) -> tuple[int, int]:
        live_in = sum(c.bytes_read for c in self._channels)
        live_out = sum(c.bytes_written for c in self._channels)
        return self.bytes_in + live_in, self.bytes_out + live_out

    async def _watch_session(self) -> None:
        """Keep the session record fresh; obey `roamgate session revoke` from any process."""
        assert self.session_id is not None
        while True:
            await asyncio.sleep(self.settings.session_check_seconds)
            record = await self.rt.store.get_session(self.session_id)
            if record is not None and record.end_requested_at is not None:
                self._ended_by = "revoked"
                if self.conn is not None:
                    self.conn.disconnect(
                        asyncssh.DISC_BY_APPLICATION, "Session ended by the administrator"
                    )
                return
            await self.rt.store.touch_session(self.session_id, self.rt.clock(), *self._totals())

    async def _close_session(self, reason: str) -> None:
        assert self.session_id is not None and self.user is not None
        bytes_in, bytes_out = self._totals()
        await self.rt.store.close_session(
            self.session_id, self.rt.clock(), reason, bytes_in, bytes_out
        )
        await self.rt.auditor.record(
            "session_close",
            "ok",
            user=self.user.name,
            source=self.source,
            door=self.door.name,
            reason=reason,
            detail={
                "session_id": self.session_id,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "duration_seconds": round(time.monotonic() - self._began, 3),
            },
        )

    # -- channels and requests: default deny, every refusal audited
    def session_requested(self) -> bool:
        self._audit(
            "ssh_refused",
            "fail",
            reason="session_channel",
            detail={"note": "shell, exec, subsystem, pty, agent and X11 all need one"},
        )
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self._audit(
            "ssh_refused",
            "fail",
            reason="remote_forwarding",
            detail={"listen": f"{listen_host[:_MAX_AUDIT_TEXT]}:{listen_port}"},
        )
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        self._audit("ssh_refused", "fail", reason="unix_socket_forwarding")
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        self._audit("ssh_refused", "fail", reason="unix_socket_channel")
        return False

    def tun_requested(self, unit: int | None) -> bool:
        self._audit("ssh_refused", "fail", reason="tun_forwarding")
        return False

    def tap_requested(self, unit: int | None) -> bool:
        self._audit("ssh_refused", "fail", reason="tap_forwarding")
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Callable[[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]], Awaitable[None]]:
        assert self.user is not None
        asked = f"{dest_host[:_MAX_AUDIT_TEXT]}:{dest_port}"
        smtp = self.rt.config.upstream.smtp
        target = resolve(
            dest_host,
            dest_port,
            self.user.name,
            forwards=self.settings.forwards,
            submission=(smtp.host, smtp.port) if smtp is not None else None,
        )
        resume_off = not self.settings.resume.enabled
        if isinstance(target, Service) and target.kind == "imap-resume" and resume_off:
            target = Refusal("resume_disabled")
        if isinstance(target, Refusal):
            self._audit("forward_refused", "fail", reason=target.reason, detail={"asked": asked})
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "Forwarding there is not allowed"
            )
        # Channels accepted but whose handler has not started yet count too: a client opening
        # a hundred at once would otherwise get them all before the first one is registered.
        if len(self._channels) + self._starting >= self.settings.max_channels_per_connection:
            self._audit(
                "forward_refused", "fail", reason="too_many_channels", detail={"asked": asked}
            )
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, "Too many channels")
        self._starting += 1

        async def handler(
            reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
        ) -> None:
            self._starting -= 1  # _forward registers the channel before it first awaits
            await self._forward(target, asked, Counted(reader, writer))

        return handler

    async def _forward(self, service: Service, asked: str, channel: Counted) -> None:
        assert self.user is not None
        self._channels.add(channel)
        self.no_channels.clear()
        began = time.monotonic()
        detail: dict[str, JsonValue] = {"service": service.name, "asked": asked}
        if service.kind == "tcp":
            detail["target"] = f"{service.host}:{service.port}"
        if self.session_id is not None:
            detail["session_id"] = self.session_id
        await self.rt.auditor.record(
            "forward_open", "ok", user=self.user.name, source=self.source, door=self.door.name,
            detail=detail,
        )  # fmt: skip
        reason = "closed"
        try:
            if service.kind == "imap-resume":
                compression = self.conn.get_extra_info("send_compression") if self.conn else None
                reason = await self.door.resume.serve_channel(
                    channel,
                    self.user.name,
                    self.source,
                    self.port,
                    link_compressed=compression not in (None, "none"),
                )
            elif service.kind == "imap":
                compression = self.conn.get_extra_info("send_compression") if self.conn else None
                await self.door.imap.serve_stream(
                    channel,
                    channel,
                    self.source,
                    self.port,
                    tunnel_user=self.user.name,
                    link_compressed=compression not in (None, "none"),
                )
            elif service.name == SUBMISSION and self.door.submission is not None:
                reason = await self.door.submission.serve_tunnel(
                    channel, self.source, self.port, self.user.name
                )
            else:
                reason = await self._tcp(service, channel)
        except (ConnectionError, OSError):
            reason = "connection_lost"
        finally:
            channel.close()
            if self.door._closing:
                # OpenSSH drops channel data it has not written out yet (an IMAP BYE) when the
                # connection is disconnected: let the client close its side of the channel
                # before the drain disconnects it.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.wait_closed(), 2)
            self._channels.discard(channel)
            if not self._channels:
                self.no_channels.set()
            self.bytes_in += channel.bytes_read
            self.bytes_out += channel.bytes_written
            await self.rt.auditor.record(
                "forward_close",
                "ok" if reason == "closed" else "error",
                user=self.user.name,
                source=self.source,
                door=self.door.name,
                reason=reason,
                detail={
                    **detail,
                    "bytes_in": channel.bytes_read,
                    "bytes_out": channel.bytes_written,
                    "duration_seconds": round(time.monotonic() - began, 3),
                },
            )

    async def _tcp(self, service: Service, channel: Counted) -> str:
        timeout = float(self.rt.config.upstream.imap.timeout_seconds)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(service.host, service.port), timeout
            )
        except (OSError, TimeoutError) as exc:
            log.warning(
                "forward %s to %s:%d failed: %s",
                service.name,
                service.host,
                service.port,
                type(exc).__name__,
            )
            return "connect_failed"
        await relay(channel, reader, writer)
        return "closed"


async def _open_ssh(rt: Runtime, listener: Listener) -> Door:
    door = SshDoor(rt, listener)
    await door.start()
    return door


DOORS["ssh"] = _open_ssh

__all__ = ["CODE_PROMPT", "PASSWORD_PROMPT", "SshDoor"]
