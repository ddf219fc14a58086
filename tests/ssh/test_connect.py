"""roamgate-connect against the real gateway, over a line the test cuts."""

from __future__ import annotations

import imaplib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncssh
import pytest

from roamgate.demo.dovecot import free_port
from tests.line import Line
from tests.ssh.conftest import SSH_USERS, SshGateway

USER = "carol"


def _fingerprint(ssh: SshGateway) -> str:
    key = asyncssh.read_public_key(str(ssh.gw.dir / "ssh_host_ed25519_key.pub"))
    return str(key.get_fingerprint("sha256"))


class Connector:
    def __init__(
        self, proc: subprocess.Popen[bytes], log: Path, answers: Path, imap_port: int
    ) -> None:
        self.proc = proc
        self.log = log
        self.answers = answers
        self.imap_port = imap_port

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.output().count(text) < count:
            if self.proc.poll() is not None:
                pytest.fail(f"roamgate-connect exited {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} x{count} from roamgate-connect: {self.output()}")
            time.sleep(0.05)

    def prompts(self) -> list[str]:
        return (self.answers / "prompts").read_text().splitlines()

    def imap_works(self) -> None:
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        assert client.login(USER, SSH_USERS[USER])[0] == "OK"
        assert client.select("INBOX", readonly=True)[0] == "OK"
        client.logout()


@contextmanager
def connector(
    ssh: SshGateway, gateway_port: int, tmp: Path, *, code: str, host_key: str | None = None
) -> Iterator[Connector]:
    answers = ssh.askpass_dir(SSH_USERS[USER], code)
    imap_port = free_port()
    log = tmp / "connect.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roamgate_connect",
                "--gateway",
                f"127.0.0.1:{gateway_port}",
                "--user",
                USER,
                "--host-key",
                host_key or _fingerprint(ssh),
                "--imap-port",
                str(imap_port),
                "--submission-port",
                str(free_port()),
                "--askpass",
                str(ssh.tmp / "askpass"),
                "--device-key",
                str(tmp / "device.key"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ROAMGATE_ASKPASS_DIR": str(answers)},
        )
    try:
        yield Connector(proc, log, answers, imap_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_the_connector_reconnects_after_the_line_drops_without_a_new_code(
    ssh_gw: SshGateway, tmp_path: Path
) -> None:
    assert ssh_gw.gw.cli("session", "revoke", "--user", USER).returncode == 0
    with (
        Line(ssh_gw.port) as line,
        connector(ssh_gw, line.port, tmp_path, code=ssh_gw.gw.code(USER)) as c,
    ):
        c.wait_for("link up")
        assert "made a device key" in c.output()
        c.imap_works()
        # The line drops: the connector notices, reconnects by itself, the port stays bound.
        line.cut()
        c.wait_for("link up", count=2)
        assert "(reconnected)" in c.output()
        c.imap_works()
        # A longer outage: a mail client connecting meanwhile is held, not refused.
        line.down()
        c.wait_for("link down", count=2)
        result: list[object] = []
        probe = threading.Thread(target=lambda: result.append(_try(c.imap_works)))
        probe.start()
        time.sleep(1.5)
        line.up()
        probe.join(timeout=40)
        assert result == [None], result
        # The password was asked once; the code once: reconnects stayed in the travel window.
        assert c.prompts() == ["Password: ", "One-time code: "]
        c.proc.send_signal(signal.SIGINT)
        assert c.proc.wait(timeout=20) == 0
    assert "stopped" in c.output()
    assert SSH_USERS[USER] not in c.output()
    # The gateway saw one device across the reconnects: the connector's key.
    opens = [
        e
        for e in ssh_gw.gw.audit()
        if e["kind"] == "session_open" and e.get("user") == USER and e["door"] == "ssh"
    ]
    assert len(opens) >= 3
    devices = {str(e["detail"]["device"]) for e in opens[-3:] if isinstance(e["detail"], dict)}
    assert len(devices) == 1 and devices.pop().startswith("sshkey:SHA256:")


def _try(fn: object) -> object:
    assert callable(fn)
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 (reported to the test's assertion)
        return exc
    return None


def test_a_gateway_with_another_host_key_gets_nothing(ssh_gw: SshGateway, tmp_path: Path) -> None:
    wrong = "SHA256:" + "A" * 43
    with connector(ssh_gw, ssh_gw.port, tmp_path, code="000000", host_key=wrong) as c:
        assert c.proc.wait(timeout=30) == 1
    assert "is not the pinned one" in c.output()
    assert c.prompts() == []  # no password was asked, let alone sent


def test_profile_problems_are_reported_at_once(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(
        "gateway: gw.example.com\nuser: alice\nhost_key: abc\nimap_port: 0\ncolour: red\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "roamgate_connect", "--profile", str(profile)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "unknown key 'colour'" in out.stderr
    profile.write_text("gateway: gw.example.com\nuser: alice\nhost_key: abc\nimap_port: 0\n")
    out = subprocess.run(
        [sys.executable, "-m", "roamgate_connect", "--profile", str(profile)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert any("gateway: expected HOST:PORT" in ln for ln in lines)
    assert any("host_key: expected SHA256:" in ln for ln in lines)
    assert any("imap_port: expected a port" in ln for ln in lines)
    assert "Traceback" not in out.stderr
