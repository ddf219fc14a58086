"""`make demo` end to end: the demo starts, a real IMAP client logs in through it, Ctrl-C stops all."""

from __future__ import annotations

import imaplib
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from roamgate.demo.dovecot import free_port
from tests.conftest import require_program


class _Output:
    """Collects the demo's output in a thread, so the test can wait for a line with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.text = ""
        threading.Thread(target=self._pump, args=(process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.text:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} within {timeout} s:\n{self.text[-4000:]}"
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"the demo exited:\n{self.text[-4000:]}"
            self.text += line
        return self.text

    def rest(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                continue
            if line is None:
                break
            self.text += line
        return self.text


def _ssh_login(tmp: Path, ssh_port: int, known_hosts: str) -> None:
    askpass = tmp / "askpass"
    askpass.write_text('#!/bin/sh\necho "$1" >> "$0.prompts"\necho demo-password\n')
    askpass.chmod(0o755)
    local = free_port()
    ssh = subprocess.Popen(
        ["setsid", require_program("ssh"), "-F", "/dev/null", "-N", "-p", str(ssh_port),
         "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:imap:143", "demo@127.0.0.1"],
        stdin=subprocess.DEVNULL,
        env={**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = imaplib.IMAP4("127.0.0.1", local, timeout=30)
                break
            except OSError:
                assert time.monotonic() < deadline and ssh.poll() is None, "no SSH tunnel"
                time.sleep(0.2)
        assert client.login("demo", "demo-password")[0] == "OK"
        assert client.select("INBOX", readonly=True) == ("OK", [b"35"])
        client.logout()
        assert Path(f"{askpass}.prompts").read_text().split("\n")[0].endswith("Password: ")
    finally:
        ssh.terminate()
        ssh.wait(timeout=10)


def test_make_demo_serves_a_real_login_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    oathtool = require_program("oathtool")
    process = subprocess.Popen(
        [sys.executable, "-m", "roamgate.demo", "--dir", str(tmp_path / "demo"), "--auto-ports"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = _Output(process)
    try:
        output.until("Admin commands", 100)
        out = output.until("=====", 10)
        assert "sample corporate mailbox for 'demo': 46 messages" in out
        assert "otpauth://totp/" in out  # the URI, with the QR code printed around it
        secret = re.search(r"oathtool --totp -b ([A-Z2-7]+)", out)
        port = re.search(r"IMAPS \(TLS from the first byte\)\s+127\.0\.0\.1:(\d+)", out)
        ca = re.search(r"CA certificate:\s+(\S+)", out)
        assert secret and port and ca, out
        code = subprocess.run(
            [oathtool, "--totp", "-b", secret.group(1)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        ctx = ssl.create_default_context(cafile=ca.group(1))
        client = imaplib.IMAP4_SSL("127.0.0.1", int(port.group(1)), ssl_context=ctx, timeout=30)
        assert client.login("demo", "demo-password" + code)[0] == "OK"
        status, data = client.select("INBOX", readonly=True)
        assert status == "OK" and data == [b"35"]
        client.logout()
        # The SSH door, with the OpenSSH command the demo printed: this address has a travel
        # window now (the login above), so only the password is asked.
        ssh_line = re.search(r"ssh -N -p (\d+) -o UserKnownHostsFile=(\S+) -L", out)
        assert ssh_line and "roamgate-connect --gateway 127.0.0.1:" in out, out
        _ssh_login(tmp_path, int(ssh_line.group(1)), ssh_line.group(2))
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        process.wait(timeout=60)
    rest = output.rest(10)
    assert process.stdout is not None
    process.stdout.close()
    assert process.returncode == 0, rest
    assert "demo stopped" in rest
    # Everything it started is gone: nothing listens on the gateway's port any more.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(port.group(1)))) != 0
    assert "Traceback" not in out + rest
