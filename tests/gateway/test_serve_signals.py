"""SIGTERM drains and SIGHUP reloads, against a real `roamgate serve`, Dovecot, imaplib and openssl."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography import x509

from roamgate.demo.dovecot import PrivateDovecot
from roamgate.pki import cert_pem, issue_server_cert, key_pem, load_ca, write_private
from tests.conftest import require_program
from tests.gateway.conftest import PASSWORDS, Gateway, read_line, running_gateway

BIG_BYTES = 6_000_000
USERS = {"bob": PASSWORDS["bob"], "carol": PASSWORDS["carol"], "dave": PASSWORDS["dave"]}


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    """An own Dovecot: bob's INBOX holds one message larger than every socket buffer."""
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot-signals")) as server:
        for user, password in USERS.items():
            server.add_user(user, password)
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "a@example.com", "bob@example.com", "big"
        msg.set_content("x" * 100 + "\n")
        msg.add_attachment(b"\x5a" * BIG_BYTES, maintype="application", subtype="octet-stream")
        server.populate("bob", USERS["bob"], {"INBOX": [msg.as_bytes()]})
        yield server


def wait_audit(
    gw: Gateway, match: Callable[[dict[str, object]], bool], timeout: float = 30
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in gw.audit() if match(e)]
        if found:
            return found[-1]
        time.sleep(0.1)
    pytest.fail(f"no matching audit event; log tail:\n{gw.logs()[-3000:]}")


def login_raw(gw: Gateway, user: str, *, rcvbuf: int | None = None) -> ssl.SSLSocket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # A small receive buffer keeps most of a large FETCH inside the gateway, in flight.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", gw.imaps_port))
    tls = gw.context().wrap_socket(sock, server_hostname="127.0.0.1")
    assert read_line(tls).startswith(b"* OK")
    tls.sendall(b'a1 LOGIN %s "%s"\r\n' % (user.encode(), (USERS[user] + gw.code(user)).encode()))
    assert read_until(tls, b"a1 ").startswith(b"a1 OK"), "login failed"
    tls.sendall(b"a2 SELECT INBOX\r\n")
    assert read_until(tls, b"a2 ").startswith(b"a2 OK")
    return tls


def read_until(sock: ssl.SSLSocket, tag: bytes) -> bytes:
    while True:
        line = read_line(sock)
        if not line or line.startswith(tag):
            return line


def test_sigterm_drains_idle_and_in_flight_sessions(mail: PrivateDovecot, tmp_path: Path) -> None:
    with running_gateway(mail, tmp_path / "gw", users=USERS) as gw:
        idle = gw.imaps()
        idle.login("carol", USERS["carol"] + gw.code("carol"))
        idle.select("INBOX")
        fetcher = login_raw(gw, "bob", rcvbuf=32 * 1024)
        fetcher.sendall(b"f1 FETCH 1 BODY.PEEK[]\r\n")
        header = read_line(fetcher)
        assert header.startswith(b"* 1 FETCH") and header.rstrip().endswith(b"}"), header
        size = int(re.search(rb"\{(\d+)\}\r\n$", header).group(1))  # type: ignore[union-attr]
        assert size > BIG_BYTES

        # The transfer is in flight (mostly still in the gateway) when SIGTERM comes.
        received = bytearray()
        done = threading.Event()

        def slow_reader() -> None:
            while len(received) < size:
                chunk = fetcher.recv(min(32 * 1024, size - len(received)))
                if not chunk:
                    break
                received.extend(chunk)
                time.sleep(0.01)  # ~3 MB/s: several seconds for the message
            done.set()

        signalled = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)
        reader = threading.Thread(target=slow_reader, daemon=True)
        reader.start()

        # The idle imaplib client is told BYE between commands, at once.
        assert idle.readline() == b"* BYE roamgate: server shutting down\r\n"
        # New connections are refused while the transfer drains.
        time.sleep(0.3)
        assert gw.process.poll() is None, "serve exited before the FETCH finished"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gw.imaps_port), timeout=5).close()
        assert done.wait(60), "the FETCH did not complete"
        assert len(received) == size
        rest = read_line(fetcher)  # the end of the FETCH line
        assert rest.endswith(b")\r\n"), rest
        assert read_line(fetcher).startswith(b"f1 OK")
        assert read_line(fetcher) == b"* BYE roamgate: server shutting down\r\n"
        assert fetcher.recv(100) == b""
        fetcher.close()
        idle.shutdown()
        assert gw.process.wait(40) == 0
        elapsed = time.monotonic() - signalled
        assert elapsed > 1.0, "the drain did not wait for the transfer"
        stop = [e for e in gw.audit() if e["kind"] == "serve_stop"][-1]
        detail = stop["detail"]
        assert isinstance(detail, dict)
        assert detail["signal"] == "SIGTERM" and detail["drain"] is True
        assert detail["sessions_drained"] == 2 and detail["sessions_cut"] == 0
        closes = {e["user"]: e["reason"] for e in gw.audit() if e["kind"] == "session_close"}
        assert closes == {"bob": "server_shutdown", "carol": "server_shutdown"}


def test_drain_deadline_cuts_a_stalled_transfer(mail: PrivateDovecot, tmp_path: Path) -> None:
    with running_gateway(
        mail, tmp_path / "gw", users=USERS, replace={"hostname:": "drain_seconds: 2\nhostname:"}
    ) as gw:
        stalled = login_raw(gw, "bob", rcvbuf=16 * 1024)
        stalled.sendall(b"f1 FETCH 1 BODY.PEEK[]\r\n")
        read_line(stalled)  # then never read again: the transfer cannot finish
        signalled = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(30) == 0
        assert 1.5 < time.monotonic() - signalled < 20
        stop = [e for e in gw.audit() if e["kind"] == "serve_stop"][-1]
        detail = stop["detail"]
        assert isinstance(detail, dict)
        assert detail["sessions_cut"] == 1 and detail["sessions_drained"] == 0
        closes = [e for e in gw.audit() if e["kind"] == "session_close"]
        assert [e["reason"] for e in closes] == ["drain_timeout"]
        stalled.close()


def _serial_of(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_reloads_the_certificate_and_survives_a_broken_config(
    mail: PrivateDovecot, tmp_path: Path
) -> None:
    openssl = require_program("openssl")
    with running_gateway(mail, tmp_path / "gw", users=USERS) as gw:
        old = gw.imaps()
        old.login("dave", USERS["dave"] + gw.code("dave"))
        old.select("INBOX")
        sock = old.sock
        assert isinstance(sock, ssl.SSLSocket)
        old_der = sock.getpeercert(binary_form=True)
        assert old_der is not None
        old_serial = _serial_of(old_der)

        ca_key, ca_cert = load_ca(gw.dir / "tls" / "ca.pem", gw.dir / "tls" / "ca.key")
        key, cert = issue_server_cert(ca_key, ca_cert, "localhost", [])
        write_private(gw.dir / "tls" / "server.key", key_pem(key))
        (gw.dir / "tls" / "server.pem").write_bytes(cert_pem(cert))
        gw.process.send_signal(signal.SIGHUP)
        wait_audit(gw, lambda e: e["kind"] == "config_reload" and e["result"] == "ok")

        # A new connection (Python's ssl, then openssl s_client) sees the new certificate.
        with gw.raw() as fresh:
            assert isinstance(fresh, ssl.SSLSocket)
            der = fresh.getpeercert(binary_form=True)
            assert der is not None and _serial_of(der) == cert.serial_number != old_serial
        shown = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{gw.imaps_port}", "-CAfile",
             str(gw.ca_file), "-verify_return_error"],
            input=b"", capture_output=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        serial = subprocess.run(
            [openssl, "x509", "-noout", "-serial"],
            input=shown,
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout.decode()
        assert int(serial.strip().removeprefix("serial="), 16) == cert.serial_number, serial
        # The old connection keeps its session (and its certificate).
        assert old.noop()[0] == "OK"
        assert old.select("INBOX")[0] == "OK"

        # A broken config: reported with file, line and key; the running config stays.
        config_text = gw.config.read_text()
        gw.config.write_text(
            config_text.replace("imap_proxy:\n", "imap_proxy:\n  max_connections: lots\n")
        )
        gw.process.send_signal(signal.SIGHUP)
        bad = wait_audit(gw, lambda e: e["kind"] == "config_reload" and e["result"] == "fail")
        reason = str(bad["reason"])
        assert "roamgate.yaml:" in reason and "imap_proxy.max_connections" in reason, reason
        assert "imap_proxy.max_connections" in gw.logs()
        client = gw.login("bob")  # still serving, with the good config
        assert client.select("INBOX")[0] == "OK"
        client.logout()
        assert old.noop()[0] == "OK"

        # A key that needs a restart is named, and its running value kept.
        gw.config.write_text(config_text.replace(f"port: {gw.imap_port}", "port: 1"))
        gw.process.send_signal(signal.SIGHUP)

        def reloads() -> list[dict[str, object]]:
            return [e for e in gw.audit() if e["kind"] == "config_reload" and e["result"] == "ok"]

        wait_audit(gw, lambda e: len(reloads()) >= 2)
        detail = reloads()[-1]["detail"]
        assert isinstance(detail, dict) and detail["restart_needed"] == "listeners", detail
        gw.imap_plain().logout()  # the STARTTLS door still listens on its old port
        old.logout()
