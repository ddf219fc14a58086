"""Faults under a real gateway: Dovecot killed, the database locked, the audit disk full, the
client's link dropped mid-FETCH and mid-APPEND. No hang, clear errors, a complete audit trail."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roamgate.demo import dovecot as dovecot_module
from roamgate.demo.dovecot import PrivateDovecot
from tests.gateway.conftest import Gateway, read_line, read_until_tagged, running_gateway

USERS = {"hank": "hank-pw", "ivy": "ivy-pw", "jon": "jon-pw"}
BIG = 24 * 1024 * 1024


def _message(size: int) -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345678\r\n"
    body = line * (size // len(line) + 1)
    return b"From: a@example.com\r\nSubject: big\r\n\r\n" + body[:size]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Its own Dovecot (killed below) and a gateway whose audit file sits on a 256 KiB tmpfs."""
    base = tmp_path_factory.mktemp("faults")
    auditfs = base / "auditfs"
    auditfs.mkdir()
    mounted = False
    if shutil.which("mount") and os.geteuid() == 0:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(auditfs)],
            capture_output=True,
            timeout=30,
        )
        mounted = r.returncode == 0
    try:
        with PrivateDovecot(base / "dovecot") as server:
            for user, password in USERS.items():
                server.add_user(user, password)
            server.deliver("hank", _message(BIG))
            server.deliver("ivy", b"From: a@example.com\r\nSubject: small\r\n\r\nhello\r\n")
            with running_gateway(
                server,
                base / "gw",
                users=USERS,
                replace={"file: audit.jsonl": f"file: {auditfs}/audit.jsonl"},
            ) as gw:
                link = gw.dir / "audit.jsonl"
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
                link.symlink_to(auditfs / "audit.jsonl")
                gw.counters["mounted"] = int(mounted)
                yield gw
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(auditfs)], capture_output=True, timeout=30)


def _login(gw: Gateway, user: str) -> ssl.SSLSocket:
    sock = gw.raw()
    assert isinstance(sock, ssl.SSLSocket)
    secret = (USERS[user] + gw.code(user)).encode()
    sock.sendall(b"L1 LOGIN " + user.encode() + b" {%d}\r\n" % len(secret))
    assert read_line(sock).startswith(b"+")
    sock.sendall(secret + b"\r\n")
    reply = read_until_tagged(sock, b"L1")[-1]
    assert reply.startswith(b"L1 OK"), reply
    return sock


def _login_reply(gw: Gateway, user: str) -> bytes:
    sock = gw.raw()
    sock.settimeout(90)  # a locked store makes each write wait out its busy timeout
    try:
        secret = (USERS[user] + gw.code(user)).encode()
        sock.sendall(b"L1 LOGIN " + user.encode() + b" {%d}\r\n" % len(secret))
        assert read_line(sock).startswith(b"+")
        sock.sendall(secret + b"\r\n")
        return read_until_tagged(sock, b"L1")[-1]
    finally:
        sock.close()


def _reset(sock: socket.socket) -> None:
    """Drop the link the hard way: RST, no FIN, as a dead line looks to the gateway."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _wait(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _closes(gw: Gateway, user: str) -> list[dict[str, object]]:
    return [e for e in gw.audit() if e["kind"] == "session_close" and e["user"] == user]


def _dovecot_ends(gw: Gateway, user: str) -> int:
    """Dovecot's own log lines saying a session of the user ended."""
    text = gw.dovecot.log_file.read_text(errors="replace")
    return sum(
        1
        for line in text.splitlines()
        if f"imap({user})" in line and ("Disconnected" in line or "Logged out" in line)
    )


def _kill_dovecot(server: PrivateDovecot) -> None:
    """SIGKILL Dovecot's master and every process it started (the mail server crashes)."""
    process = server._process
    assert process is not None
    pids = [process.pid, *dovecot_module._descendants(process.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)
    server.stop()  # reaps, and removes its run directory


def test_dovecot_killed_mid_session_gives_bye_and_logins_work_after_restart(
    faulty: Gateway,
) -> None:
    sock = _login(faulty, "ivy")
    sock.sendall(b"S1 SELECT INBOX\r\n")
    assert read_until_tagged(sock, b"S1")[-1].startswith(b"S1 OK")
    _kill_dovecot(faulty.dovecot)
    try:
        sock.settimeout(30)
        rest = []
        while line := read_line(sock):
            rest.append(line)
        assert rest == [b"* BYE The mail server closed the connection.\r\n"], rest
        sock.close()
        assert b"NO [UNAVAILABLE]" in _login_reply(faulty, "ivy")
    finally:
        faulty.dovecot.start()
    assert _closes(faulty, "ivy")[-1]["reason"] == "upstream_closed"
    client = faulty.imaps()
    assert client.login("ivy", USERS["ivy"] + faulty.code("ivy"))[0] == "OK"
    assert client.select("INBOX")[0] == "OK"
    client.logout()
    assert "Traceback" not in faulty.logs()


def test_a_locked_database_fails_logins_closed_with_a_clear_reason(faulty: Gateway) -> None:
    db = sqlite3.connect(faulty.dir / "roamgate.db", isolation_level=None, timeout=30)
    try:
        db.execute("BEGIN EXCLUSIVE")  # another process holds the write lock (a stuck backup)
        began = time.monotonic()
        reply = _login_reply(faulty, "jon")
        assert reply == (
            b"L1 NO [UNAVAILABLE] Authentication service unavailable, try again later.\r\n"
        )
        assert time.monotonic() - began < 90
    finally:
        db.execute("ROLLBACK")
        db.close()
    logs = faulty.logs()
    assert "login of jon not decided: database" in logs and "locked" in logs
    assert "Traceback" not in logs
    # The store is back: the next login works, and nothing was counted against jon.
    client = faulty.imaps()
    assert client.login("jon", USERS["jon"] + faulty.code("jon"))[0] == "OK"
    client.logout()


def test_a_full_audit_disk_fails_logins_closed(faulty: Gateway) -> None:
    if not faulty.counters["mounted"]:
        pytest.skip("no tmpfs for the audit file: mounting needs root (CAP_SYS_ADMIN)")
    filler = Path(os.readlink(faulty.dir / "audit.jsonl")).parent / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    try:
        # The audit file's last page still has room: failed logins of unknown names fill it
        # until the gateway says it cannot write the file.
        for i in range(40):
            if "not written: No space left on device" in faulty.logs():
                break
            sock = faulty.raw()
            sock.sendall(b"X1 LOGIN nobody%d wrong-password123456\r\n" % i)
            read_until_tagged(sock, b"X1")
            sock.close()
        reply = _login_reply(faulty, "jon")
        assert reply == (
            b"L1 NO [UNAVAILABLE] Authentication service unavailable, try again later.\r\n"
        )
        assert "login of jon refused: the audit trail cannot be written" in faulty.logs()
    finally:
        filler.unlink()
    # No line of the audit file was left half written by the full disk.
    assert faulty.audit()
    # The store kept the refusal with its reason.
    out = faulty.cli("audit", "--user", "jon", "--kind", "auth", "--json")
    assert out.returncode == 0, out.stderr
    assert '"reason": "audit_unavailable"' in out.stdout
    # Space again: logins work.
    client = faulty.imaps()
    assert client.login("jon", USERS["jon"] + faulty.code("jon"))[0] == "OK"
    client.logout()


def test_the_link_dropped_mid_fetch_ends_the_upstream_session_and_is_audited(
    faulty: Gateway,
) -> None:
    before = len(_closes(faulty, "hank"))
    ended = _dovecot_ends(faulty, "hank")
    sock = _login(faulty, "hank")
    sock.sendall(b"S1 SELECT INBOX\r\n")
    assert read_until_tagged(sock, b"S1")[-1].startswith(b"S1 OK")
    sock.sendall(b"F1 FETCH 1 BODY.PEEK[]\r\n")
    got = 0
    while got < 256 * 1024:
        got += len(sock.recv(65536))
    _reset(sock)
    _wait(lambda: len(_closes(faulty, "hank")) > before)
    close = _closes(faulty, "hank")[-1]
    assert close["reason"] in ("connection_lost", "client_closed"), close
    detail = close["detail"]
    assert isinstance(detail, dict) and 0 < int(str(detail["bytes_out"])) < BIG
    # Dovecot's session for it ended too (the gateway closed its upstream connection).
    _wait(lambda: _dovecot_ends(faulty, "hank") > ended)


def test_the_link_dropped_mid_append_leaves_no_partial_message(faulty: Gateway) -> None:
    def count() -> int:
        with faulty.dovecot.imap("ivy", USERS["ivy"]) as direct:
            typ, data = direct.select("INBOX", readonly=True)
            assert typ == "OK" and data[0] is not None
            return int(data[0])

    messages = count()
    before = len(_closes(faulty, "ivy"))
    sock = _login(faulty, "ivy")
    size = 4 * 1024 * 1024
    sock.sendall(b"A1 APPEND INBOX {%d}\r\n" % size)
    assert read_line(sock).startswith(b"+")
    sock.sendall(_message(size)[: size // 3])
    time.sleep(0.5)
    _reset(sock)
    _wait(lambda: len(_closes(faulty, "ivy")) > before)
    assert _closes(faulty, "ivy")[-1]["reason"] in ("connection_lost", "client_closed")
    time.sleep(1)
    assert count() == messages
    # And the user can append for real afterwards.
    client = faulty.imaps()
    client.login("ivy", USERS["ivy"] + faulty.code("ivy"))
    assert client.append("INBOX", None, None, _message(1000))[0] == "OK"
    client.logout()
    assert count() == messages + 1
