"""The SSH link to the gateway: pinned host key, password and code, reconnects with back-off.

The password is asked once and kept in memory for reconnects; a one-time code is asked only
when the gateway asks for one (outside the travel window), never cached. A device key (made on
first use) identifies this laptop to the gateway, so its travel window survives a new address
after a dial-up or hotel line reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncssh

from roamgate_connect.profile import Profile

log = logging.getLogger("roamgate_connect")

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
# A link that carried stream bytes (see note_progress) is tried again this soon after it drops:
# on a line that drops every few minutes, a resumable stream should not wait out a back-off.
AFTER_USEFUL_DROP = 0.2
MAX_AUTH_FAILURES = 3  # in a row; then stop rather than help lock the account


class FatalLinkError(Exception):
    """Retrying cannot help (wrong host key, refused credentials): the connector stops."""


class Prompter:
    """Asks the user for a password or a code: on the terminal, or through an askpass command."""

    def __init__(self, askpass: str | None) -> None:
        self.askpass = shlex.split(askpass) if askpass else None

    async def ask(self, prompt: str) -> str:
        if self.askpass is not None:
            proc = await asyncio.create_subprocess_exec(
                *self.askpass,
                prompt,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise FatalLinkError(f"the askpass command failed (exit {proc.returncode})")
            return out.decode("utf-8", "replace").rstrip("\r\n")
        if not sys.stdin.isatty():
            raise FatalLinkError("no terminal to ask on: use --askpass CMD")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, getpass.getpass, prompt)


def load_device_key(path: Path) -> tuple[asyncssh.SSHKey, bool]:
    """The laptop's device key, made (0600, Ed25519) on first use. True if it was made now."""
    if path.exists():
        return asyncssh.read_private_key(str(path)), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="roamgate-connect device key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key("openssh"))
    return key, True


class _Client(asyncssh.SSHClient):
    """One connection attempt: checks the host key, answers the login conversation."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.kbdint_tries = 0
        self.host_key_seen: str | None = None
        self.used_cached_password = False

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.host_key_seen = key.get_fingerprint("sha256")
        return self.host_key_seen in self.link.profile.host_keys

    def kbdint_auth_requested(self) -> str | None:
        self.kbdint_tries += 1
        return "" if self.kbdint_tries == 1 else None

    async def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str]:
        answers = []
        for prompt, _echo in prompts:
            if "code" in prompt.lower():
                self.link.status("the gateway asks for a one-time code")
                answers.append(await self.link.prompter.ask(prompt))
            elif "password" in prompt.lower():
                if self.link.password is None:
                    self.link.password = await self.link.prompter.ask(prompt)
                else:
                    self.used_cached_password = True
                answers.append(self.link.password)
            else:
                answers.append(await self.link.prompter.ask(prompt))
        return answers

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost(exc)


class Link:
    """Keeps one SSH connection to the gateway up until stop() is called."""

    def __init__(
        self,
        profile: Profile,
        prompter: Prompter,
        device_key: asyncssh.SSHKey,
        *,
        status: Callable[[str], None],
        keepalive_seconds: float = 15.0,
        connect_timeout: float = 20.0,
    ) -> None:
        self.profile = profile
        self.prompter = prompter
        self.device_key = device_key
        self.status = status
        self.keepalive_seconds = keepalive_seconds
        self.connect_timeout = connect_timeout
        self.password: str | None = None
        self.conn: asyncssh.SSHClientConnection | None = None
        self.up = asyncio.Event()
        self._stop = asyncio.Event()
        self._closed = asyncio.Event()
        self._attempt: _Client | None = None
        self.connects = 0
        self.progress = 0  # stream bytes received over any link (note_progress)

    def stop(self) -> None:
        self._stop.set()
        if self.conn is not None:
            self.conn.close()

    def note_progress(self) -> None:
        """A stream received bytes over the current link: a drop of it is retried at once."""
        self.progress += 1

    def lost(self, exc: Exception | None) -> None:
        self.up.clear()
        self._closed.set()

    async def _connect_once(self) -> _Client:
        client = self._attempt = _Client(self)
        self._closed.clear()
        conn, _ = await asyncio.wait_for(
            asyncssh.create_connection(
                lambda: client,
                self.profile.host,
                self.profile.port,
                username=self.profile.user,
                config=None,  # ~/.ssh/config is for OpenSSH; this connection is the profile's
                known_hosts=([], [], []),  # none trusted: validate_host_public_key decides
                # Ed25519 first: its fingerprint is the one `roamgate init` prints first.
                server_host_key_algs=["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"],
                client_keys=[self.device_key],
                agent_path=None,
                preferred_auth="publickey,keyboard-interactive",
                keepalive_interval=self.keepalive_seconds,
                keepalive_count_max=3,
                compression_algs=["zlib@openssh.com", "none"],
            ),
            self.connect_timeout,
        )
        self.conn = conn
        return client

    async def run(self) -> None:
        """Connect, wait for the drop, reconnect with back-off; until stop()."""
        delay = BACKOFF_START
        auth_failures = 0
        while not self._stop.is_set():
            try:
                await self._connect_once()
            except asyncssh.HostKeyNotVerifiable:
                seen = self._attempt.host_key_seen if self._attempt else None
                raise FatalLinkError(
                    f"the gateway's host key ({seen or 'unknown'}) is not the pinned one"
                    f" ({', '.join(self.profile.host_keys)}): not connecting"
                ) from None
            except asyncssh.PermissionDenied:
                auth_failures += 1
                self.password = None  # perhaps it changed: ask again next time
                if auth_failures >= MAX_AUTH_FAILURES:
                    raise FatalLinkError(
                        f"the gateway refused the login {auth_failures} times in a row"
                    ) from None
                self.status("login refused; try again")
                continue
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                self.status(f"link down: {_why(exc)}; reconnecting in {delay:.0f} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay * random.uniform(0.8, 1.2))  # noqa: S311
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            auth_failures = 0
            self.connects += 1
            began = time.monotonic()
            progress_at_up = self.progress
            self.up.set()
            self.status(
                f"link up to {self.profile.gateway} as {self.profile.user}"
                + (" (reconnected)" if self.connects > 1 else "")
            )
            stop_wait = asyncio.create_task(self._stop.wait())
            closed_wait = asyncio.create_task(self._closed.wait())
            await asyncio.wait({stop_wait, closed_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            closed_wait.cancel()
            self.up.clear()
            if self.conn is not None:
                self.conn.close()
                with contextlib.suppress(Exception):
                    await self.conn.wait_closed()
                self.conn = None
            if self._stop.is_set():
                return
            # The gateway took the login, so the line works: failures from here on back off
            # from the start. A link that carried mail is tried again at once (a resumable
            # stream waits for it); one that did not, after the first back-off step.
            delay = BACKOFF_START
            pause = AFTER_USEFUL_DROP if self.progress != progress_at_up else BACKOFF_START
            up_for = time.monotonic() - began
            self.status(f"link down after {up_for:.0f} s; reconnecting in {pause:.1f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause * random.uniform(0.8, 1.2))  # noqa: S311

    async def open(
        self, service: str, port: int, hold: float
    ) -> tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]:
        """A channel to a gateway service, waiting up to `hold` seconds for the link."""
        await asyncio.wait_for(self.up.wait(), hold)
        assert self.conn is not None
        return await self.conn.open_connection(service, port)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip()
    return text or type(exc).__name__
