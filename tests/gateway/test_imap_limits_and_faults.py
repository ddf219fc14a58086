"""Client certificates, connection caps, the login grace time and an upstream that goes away."""

from __future__ import annotations

import hashlib
import imaplib
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from roamgate import pki
from roamgate.demo.dovecot import UNTRUSTED_SOURCE, PrivateDovecot
from tests.gateway.conftest import Gateway, read_line, read_until_tagged, running_gateway

USERS = {"frank": "frank-pw", "gina": "gina-pw"}


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Its own Dovecot (the faults below stop it) and a gateway with tight limits."""
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot-faults")) as server:
        for user, password in USERS.items():
            server.add_user(user, password)
        with running_gateway(
            server,
            tmp_path_factory.mktemp("strict") / "gw",
            users=USERS,
            proxy_settings={"login_grace_seconds": 10, "max_connections_per_source": 3},
            replace={"client_certificates: none": "client_certificates: optional"},
        ) as gw:
            yield gw


def _device_context(gw: Gateway, tmp: Path) -> tuple[ssl.SSLContext, str]:
    ca_key, ca_cert = pki.load_ca(gw.dir / "tls" / "ca.pem", gw.dir / "tls" / "ca.key")
    key, cert = pki.issue_client_cert(ca_key, ca_cert, "frank's PDA")
    (tmp / "dev.pem").write_bytes(pki.cert_pem(cert) + pki.key_pem(key))
    ctx = gw.context()
    ctx.load_cert_chain(str(tmp / "dev.pem"))
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ctx, fingerprint


def test_a_client_certificate_is_the_device_for_the_travel_window(
    strict: Gateway, tmp_path: Path
) -> None:
    ctx, fingerprint = _device_context(strict, tmp_path)
    client = imaplib.IMAP4_SSL("127.0.0.1", strict.imaps_port, ssl_context=ctx, timeout=30)
    client.login("frank", USERS["frank"] + strict.code("frank"))
    listed = json.loads(strict.cli("session", "list", "--user", "frank", "--json").stdout)
    assert [w["device"] for w in listed["windows"]] == ["cert:" + fingerprint]
    assert listed["sessions"][0]["device"] == "cert:" + fingerprint
    client.logout()
    # Same certificate: the password alone is enough within the window.
    again = imaplib.IMAP4_SSL("127.0.0.1", strict.imaps_port, ssl_context=ctx, timeout=30)
    assert again.login("frank", USERS["frank"])[0] == "OK"
    again.logout()
    # Without the certificate, from the same address, it is another device: a code is needed.
    bare = strict.imaps()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        bare.login("frank", USERS["frank"])
    bare.shutdown()


def test_connections_over_the_per_source_cap_are_refused(strict: Gateway) -> None:
    held = [strict.raw() for _ in range(3)]
    try:
        extra = strict.raw_unchecked()
        assert read_line(extra) == b"* BYE Too many connections, try again later.\r\n"
        assert read_line(extra) == b""
        extra.close()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    strict.raw().close()  # a slot is free again
    assert any(
        e["kind"] == "connection_refused" and e["reason"] == "source_connection_limit"
        for e in strict.audit()
    )


def test_login_grace_time_ends_a_connection_that_never_logs_in(strict: Gateway) -> None:
    sock = strict.raw()
    sock.settimeout(30)
    started = time.monotonic()
    assert read_line(sock) == b"* BYE Login grace time exceeded.\r\n"
    assert 8 <= time.monotonic() - started <= 20
    assert read_line(sock) == b""
    sock.close()


def test_upstream_failure_gives_bye_and_then_unavailable(strict: Gateway) -> None:
    sock = strict.raw()
    secret = (USERS["gina"] + strict.code("gina")).encode()
    sock.sendall(b"L1 LOGIN gina {%d}\r\n" % len(secret))
    assert read_line(sock).startswith(b"+")
    sock.sendall(secret + b"\r\n")
    assert read_until_tagged(sock, b"L1")[-1].startswith(b"L1 OK")
    sock.sendall(b"S1 SELECT INBOX\r\n")
    assert read_until_tagged(sock, b"S1")[-1].startswith(b"S1 OK")
    strict.dovecot.stop()
    try:
        sock.settimeout(15)
        rest = []
        while (line := read_line(sock)) != b"":
            rest.append(line)
        # One BYE, then the close: Dovecot's own ("Server shutting down.") if it sent one
        # before closing, else the proxy's.
        assert len(rest) == 1 and rest[0] in (
            b"* BYE The mail server closed the connection.\r\n",
            b"* BYE Server shutting down.\r\n",
        ), rest
        sock.close()
        # With the server down, a login cannot be decided: a temporary failure, nothing counted.
        sock = strict.raw()
        sock.sendall(b'L2 LOGIN "gina" "' + USERS["gina"].encode() + b'"\r\n')
        reply = read_line(sock)
        assert reply.startswith(b"L2 NO [UNAVAILABLE]"), reply
        sock.close()
    finally:
        sock.close()
        strict.dovecot.start()
    closes = strict.wait_for_audit(lambda e: e["kind"] == "session_close" and e["user"] == "gina")
    assert closes and closes[-1]["reason"] == "upstream_closed"
    # Back up: the next login works at once (spare connections made before the restart are
    # dead and must not cost the user a failed login).
    client = strict.imaps()
    assert client.login("gina", USERS["gina"] + strict.code("gina"))[0] == "OK"
    client.logout()


def test_the_mail_server_sees_the_clients_address_not_the_gateways(strict: Gateway) -> None:
    # The client connects from 127.0.0.2; the gateway itself reaches Dovecot from 127.0.0.1.
    raw = socket.create_connection(
        ("127.0.0.1", strict.imaps_port), timeout=15, source_address=(UNTRUSTED_SOURCE, 0)
    )
    sock = strict.context().wrap_socket(raw, server_hostname="127.0.0.1")
    assert read_line(sock).startswith(b"* OK")
    secret = (USERS["frank"] + strict.code("frank")).encode()
    sock.sendall(b"L1 LOGIN frank {%d}\r\n" % len(secret))
    assert read_line(sock).startswith(b"+")
    sock.sendall(secret + b"\r\n")
    assert read_until_tagged(sock, b"L1")[-1].startswith(b"L1 OK")
    sock.sendall(b"L2 LOGOUT\r\n")
    read_until_tagged(sock, b"L2")
    sock.close()
    logins = [
        line
        for line in strict.dovecot.log_file.read_text(errors="replace").splitlines()
        if "Login: user=<frank>" in line
    ]
    assert logins and f"rip={UNTRUSTED_SOURCE}" in logins[-1], logins
