"""A real gateway in front of a real Dovecot: `roamgate serve` as a process, clients from imaplib."""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from roamgate.config import load_config
from roamgate.demo.dovecot import PrivateDovecot, free_port
from roamgate.demo.mailbox import sample_mailbox
from tests.conftest import require_program, run_cli

# Upstream passwords; the gateway stores none of them.
PASSWORDS = {
    "bob": "bob's Secret pass",
    "carol": "carol-pw-77",
    "dave": "dave pw",
    "erin": "erin-pass",
}
TOTP_USER = "alice"
PASSWORDS[TOTP_USER] = "alice-pw"


@dataclass
class Gateway:
    """A running `roamgate serve` and what a test needs to talk to it."""

    dir: Path
    config: Path
    dovecot: PrivateDovecot
    imaps_port: int
    imap_port: int
    log_file: Path
    process: subprocess.Popen[bytes]
    secrets: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    handed_out: list[str] = field(default_factory=list)
    ssh_port: int = 0

    @property
    def ca_file(self) -> Path:
        return self.dir / "tls" / "ca.pem"

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return ctx

    def code(self, user: str) -> str:
        """The user's next HOTP code, computed by oathtool (independent of pyotp)."""
        counter = self.counters[user]
        self.counters[user] = counter + 1
        out = subprocess.run(
            [require_program("oathtool"), "--hotp", "-b", "-c", str(counter), self.secrets[user]],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        code = out.stdout.strip()
        self.handed_out.append(code)
        return code

    def totp(self, user: str, offset_steps: int = 0) -> str:
        now = int(time.time()) + 30 * offset_steps
        out = subprocess.run(
            [require_program("oathtool"), "--totp", "-b", f"--now=@{now}", self.secrets[user]],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        code = out.stdout.strip()
        self.handed_out.append(code)
        return code

    def imaps(self) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL(
            "127.0.0.1", self.imaps_port, ssl_context=self.context(), timeout=30
        )

    def imap_plain(self) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)

    def login(self, user: str) -> imaplib.IMAP4_SSL:
        client = self.imaps()
        client.login(user, PASSWORDS[user] + self.code(user))
        return client

    def raw_unchecked(self, *, tls: bool = True) -> socket.socket:
        """A raw client socket (TLS unless told otherwise), nothing read yet."""
        sock = socket.create_connection(
            ("127.0.0.1", self.imaps_port if tls else self.imap_port), timeout=15
        )
        if tls:
            sock = self.context().wrap_socket(sock, server_hostname="127.0.0.1")
        return sock

    def raw(self, *, tls: bool = True) -> socket.socket:
        """A raw client socket (TLS unless told otherwise), greeting already read."""
        sock = self.raw_unchecked(tls=tls)
        greeting = read_line(sock)
        assert greeting.startswith(b"* OK"), greeting
        return sock

    def audit(self) -> list[dict[str, object]]:
        path = self.dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_for_audit(
        self,
        match: Callable[[dict[str, object]], bool],
        *,
        since: int = 0,
        timeout: float = 15,
    ) -> list[dict[str, object]]:
        """The audit records from index `since` on that match, once there is one; an empty
        list after `timeout`. A door writes some records (session_close) just after the
        connection has closed, so a client may see the end before the record is there."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.audit()[since:] if match(e)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "-c", str(self.config))


def read_line(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    data = bytearray()
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
        assert len(data) < limit
    return bytes(data)


def read_until_tagged(sock: socket.socket, tag: bytes) -> list[bytes]:
    lines = []
    while True:
        line = read_line(sock)
        lines.append(line)
        if not line or line.startswith(tag + b" "):
            return lines


def wait_for_port(port: int, process: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"roamgate serve exited: {log_file.read_text(errors='replace')[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail("roamgate serve did not open its port within 30 s")


def start_serve(config: Path, log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "roamgate", "serve", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop_serve(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        return -9


@pytest.fixture(scope="package")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    require_program("oathtool")
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot")) as server:
        for user, password in PASSWORDS.items():
            server.add_user(user, password)
        server.populate("bob", PASSWORDS["bob"], sample_mailbox(large_attachment_bytes=200_000))
        yield server


def init_gateway(
    dovecot: PrivateDovecot,
    d: Path,
    proxy_settings: dict[str, object] | None = None,
    replace: dict[str, str] | None = None,
    extra_init: tuple[str, ...] = (),
) -> tuple[Path, int, int]:
    imaps_port, imap_port = free_port(), free_port()
    r = run_cli(
        "init",
        "--dir",
        str(d),
        "--upstream-imap",
        f"127.0.0.1:{dovecot.imap_port}",
        "--upstream-tls",
        "starttls",
        "--upstream-ca",
        str(dovecot.ca_file),
        "--imaps-port",
        str(imaps_port),
        "--imap-port",
        str(imap_port),
        "--ssh-port",
        str(free_port()),
        "--web-port",
        str(free_port()),
        *extra_init,
    )
    assert r.returncode == 0, r.stderr
    config = d / "roamgate.yaml"
    text = config.read_text()
    # Tests fail many logins from 127.0.0.1 on purpose; the per-source lock is tested elsewhere.
    text = text.replace("ip_threshold: 20", "ip_threshold: 10000")
    text = text.replace("level: info", "level: debug")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    proxy: dict[str, object] = {
        "failure_delay_ms": 100,
        "session_check_seconds": 1,
        **(proxy_settings or {}),
    }
    for key, value in proxy.items():
        # Keys the template already has are replaced in place (a duplicate key is an error).
        text, n = re.subn(rf"(?m)^  {key}: .*$", f"  {key}: {value}", text)
        if n == 0:
            text = text.replace("imap_proxy:\n", f"imap_proxy:\n  {key}: {value}\n")
    config.write_text(text)
    r = run_cli("check-config", "-c", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    return config, imaps_port, imap_port


@contextlib.contextmanager
def running_gateway(
    dovecot: PrivateDovecot,
    d: Path,
    users: dict[str, str] | None = None,
    proxy_settings: dict[str, object] | None = None,
    replace: dict[str, str] | None = None,
    extra_init: tuple[str, ...] = (),
) -> Iterator[Gateway]:
    """init + user add + token enroll (HOTP; TOTP for TOTP_USER) + serve, stopped on exit."""
    config, imaps_port, imap_port = init_gateway(dovecot, d, proxy_settings, replace, extra_init)
    ssh = load_config(config).listeners.ssh
    ssh_port = ssh.port if ssh is not None else 0
    gw_secrets: dict[str, str] = {}
    for user in users if users is not None else PASSWORDS:
        assert run_cli("user", "add", user, "-c", str(config)).returncode == 0
        kind = "totp" if user == TOTP_USER else "hotp"
        r = run_cli("token", "enroll", user, "--type", kind, "--json", "-c", str(config))
        assert r.returncode == 0, r.stderr
        gw_secrets[user] = json.loads(r.stdout)["secret"]
    log_file = d / "serve.log"
    process = start_serve(config, log_file)
    try:
        wait_for_port(imaps_port, process, log_file)
        wait_for_port(imap_port, process, log_file)
        if ssh_port:
            wait_for_port(ssh_port, process, log_file)
        yield Gateway(
            d,
            config,
            dovecot,
            imaps_port,
            imap_port,
            log_file,
            process,
            gw_secrets,
            dict.fromkeys(gw_secrets, 0),
            ssh_port=ssh_port,
        )
    finally:
        stop_serve(process)


@pytest.fixture(scope="package")
def gateway(dovecot: PrivateDovecot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(dovecot, tmp_path_factory.mktemp("gateway") / "gw") as gw:
        yield gw
