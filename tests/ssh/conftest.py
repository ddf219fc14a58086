"""The SSH door against real clients: OpenSSH's ssh with an askpass helper, and asyncssh."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from roamgate.demo.dovecot import PrivateDovecot, free_port
from tests.conftest import require_program
from tests.gateway.conftest import PASSWORDS, Gateway, running_gateway

SSH_USERS = {name: PASSWORDS[name] for name in ("bob", "carol", "dave", "erin")}

ASKPASS = """#!/bin/sh
# Answers OpenSSH's keyboard-interactive prompts from files, and notes each prompt it was shown.
printf '%s\\n' "$1" >> "$ROAMGATE_ASKPASS_DIR/prompts"
case "$1" in
  *assword*) cat "$ROAMGATE_ASKPASS_DIR/password" ;;
  *code*) cat "$ROAMGATE_ASKPASS_DIR/code" ;;
  *) echo "askpass: unexpected prompt" >&2; exit 1 ;;
esac
"""


class Mailbox:
    """The upstream submission server's received messages (a real SMTP server: aiosmtpd)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        with self.lock:
            self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return "250 OK queued"


@dataclass
class SshGateway:
    gw: Gateway
    smtp: Mailbox
    smtp_port: int
    known_hosts: Path
    tmp: Path
    _n: list[int] = field(default_factory=lambda: [0])

    @property
    def port(self) -> int:
        return self.gw.ssh_port

    def askpass_dir(self, password: str, code: str) -> Path:
        self._n[0] += 1
        d = self.tmp / f"askpass-{self._n[0]}"
        d.mkdir()
        (d / "password").write_text(password + "\n")
        (d / "code").write_text(code + "\n")
        (d / "prompts").write_text("")
        return d

    def ssh_command(self, user: str, *forwards: str, extra: tuple[str, ...] = ()) -> list[str]:
        cmd = [
            require_program("ssh"),
            "-F", "/dev/null", "-N", "-p", str(self.port),
            *extra,  # first: for ssh the first value of an option wins
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "PreferredAuthentications=keyboard-interactive",
            "-o", "PubkeyAuthentication=no",
            "-o", "ExitOnForwardFailure=yes",
            "-o", "ConnectTimeout=10",
            "-o", "NumberOfPasswordPrompts=1",
        ]  # fmt: skip
        for spec in forwards:
            cmd += ["-L", spec]
        return [*cmd, f"{user}@127.0.0.1"]

    @contextlib.contextmanager
    def openssh_tunnel(
        self, user: str, password: str, code: str, *forwards: str, extra: tuple[str, ...] = ()
    ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
        """`ssh -N -L ...` answered by askpass; yields once every local port listens."""
        answers = self.askpass_dir(password, code)
        env = {
            **os.environ,
            "SSH_ASKPASS": str(self.tmp / "askpass"),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
            "ROAMGATE_ASKPASS_DIR": str(answers),
        }
        log = answers / "ssh.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["setsid", *self.ssh_command(user, *forwards, extra=extra)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            ports = [int(spec.split(":")[1]) for spec in forwards]
            deadline = time.monotonic() + 30
            for port in ports:
                while True:
                    if proc.poll() is not None:
                        break
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            pytest.fail(f"ssh forward did not come up: {log.read_text()}")
                        time.sleep(0.1)
            yield proc, answers
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


@pytest.fixture(scope="package")
def ssh_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    require_program("oathtool")
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot-ssh")) as server:
        for user, password in SSH_USERS.items():
            server.add_user(user, password)
        server.deliver("bob", b"From: boss@example.com\r\nSubject: via ssh\r\n\r\nhello bob\r\n")
        yield server


@pytest.fixture(scope="package")
def ssh_gw(
    ssh_dovecot: PrivateDovecot, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SshGateway]:
    require_program("ssh")
    tmp = tmp_path_factory.mktemp("ssh")
    (tmp / "askpass").write_text(ASKPASS)
    (tmp / "askpass").chmod(0o755)
    mailbox = Mailbox()
    smtp_port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    try:
        with running_gateway(
            ssh_dovecot,
            tmp / "gw",
            users=SSH_USERS,
            extra_init=(
                "--upstream-smtp",
                f"127.0.0.1:{smtp_port}",
                "--submission-port",
                str(free_port()),
                "--submission-starttls-port",
                str(free_port()),
            ),
            replace={
                # The tunnel's `submission` ends in the gateway's own submission code, which
                # relays to this plain aiosmtpd (loopback) without logging in to it; carol
                # owns carol@example.com.
                f"    port: {smtp_port}\n    tls: starttls\n": f"    port: {smtp_port}\n    tls: none\n",
                "upstream_login: passthrough      # passthrough | relay": "upstream_login: none #",
                "# sender_domain: example.com ": "sender_domain: example.com ",
                # `wiki` is any internal TCP service: here Dovecot's plain IMAP port.
                "forwards: {}": "forwards: {wiki: {target: "
                f'"127.0.0.1:{ssh_dovecot.imap_port}", users: [carol]}}}}',
                "keepalive_seconds: 30": "keepalive_seconds: 30\n  failure_delay_ms: 100"
                "\n  max_channels_per_connection: 8\n  session_check_seconds: 1",
            },
        ) as gw:
            pub = (gw.dir / "ssh_host_ed25519_key.pub").read_text().split()
            known_hosts = tmp / "known_hosts"
            known_hosts.write_text(f"[127.0.0.1]:{gw.ssh_port} {pub[0]} {pub[1]}\n")
            yield SshGateway(gw, mailbox, smtp_port, known_hosts, tmp)
    finally:
        controller.stop()
