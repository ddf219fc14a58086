"""What the TLS door refuses, and how: fixed answers, nothing leaked, the connection survives."""

from __future__ import annotations

import imaplib
import json
import socket
import ssl
import time

import pytest

from tests.gateway.conftest import PASSWORDS, Gateway, read_line, read_until_tagged

FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed."


def _login_reply(gateway: Gateway, user: str, secret: str) -> bytes:
    """The tagged answer to a LOGIN with a literal password (any byte, no quoting issues)."""
    sock = gateway.raw()
    try:
        data = secret.encode()
        sock.sendall(b"L1 LOGIN " + user.encode() + b" {%d}\r\n" % len(data))
        assert read_line(sock).startswith(b"+")
        sock.sendall(data + b"\r\n")
        return read_until_tagged(sock, b"L1")[-1].rstrip(b"\r\n")
    finally:
        sock.close()


def _audit_reasons(gateway: Gateway, user: str) -> list[object]:
    return [e.get("reason") for e in gateway.audit() if e["kind"] == "auth" and e["user"] == user]


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


def test_wrong_code_and_wrong_password_look_the_same_from_outside(gateway: Gateway) -> None:
    code = gateway.code("carol")
    gateway.counters["carol"] -= 1  # not used up: the next test step uses it
    assert _login_reply(gateway, "carol", PASSWORDS["carol"] + _wrong(code)) == b"L1 " + FAILED
    assert _login_reply(gateway, "carol", "not-her-password" + code) == b"L1 " + FAILED
    assert _login_reply(gateway, "nobody", "whatever123456") == b"L1 " + FAILED
    reasons = _audit_reasons(gateway, "carol")
    assert reasons[-2:] == ["bad_code:wrong", "bad_password"], reasons
    # The wrong password did not burn the good code.
    assert _login_reply(gateway, "carol", PASSWORDS["carol"] + gateway.code("carol")).startswith(
        b"L1 OK [CAPABILITY "
    )


def test_replayed_code_is_refused_once_the_travel_window_is_revoked(gateway: Gateway) -> None:
    code = gateway.code("carol")
    assert _login_reply(gateway, "carol", PASSWORDS["carol"] + code).startswith(b"L1 OK")
    revoked = gateway.cli("session", "revoke", "--user", "carol")
    assert revoked.returncode == 0, revoked.stderr
    assert _login_reply(gateway, "carol", PASSWORDS["carol"] + code) == b"L1 " + FAILED
    assert _audit_reasons(gateway, "carol")[-1] == "bad_code:replay"


def test_login_before_starttls_is_refused_on_the_plain_port(gateway: Gateway) -> None:
    client = gateway.imap_plain()
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login("bob", PASSWORDS["bob"] + "123456")
    sock = gateway.raw(tls=False)
    sock.sendall(b"A1 AUTHENTICATE PLAIN AGJvYgBwdw==\r\n")
    assert read_line(sock).startswith(b"A1 NO [PRIVACYREQUIRED]")
    sock.sendall(b"A2 LOGOUT\r\n")
    assert read_until_tagged(sock, b"A2")[-1].startswith(b"A2 OK")
    sock.close()
    client.shutdown()


def test_commands_before_login_get_bad_and_change_nothing(gateway: Gateway) -> None:
    sock = gateway.raw()
    for i, command in enumerate(
        [b"SELECT INBOX", b'LIST "" *', b"APPEND INBOX {3+}\r\nabc", b"ENABLE UTF8=ACCEPT"]
    ):
        tag = b"C%d" % i
        sock.sendall(tag + b" " + command + b"\r\n")
        assert read_line(sock) == tag + b" BAD Command not allowed before login.\r\n"
    sock.sendall(b"C9 NOOP\r\n")
    assert read_line(sock) == b"C9 OK NOOP completed.\r\n"
    sock.close()


def test_oversized_literal_before_login_is_refused_without_reading_it(gateway: Gateway) -> None:
    sock = gateway.raw()
    sock.sendall(b"O1 LOGIN bob {100000}\r\n")
    reply = read_line(sock)
    assert reply.startswith(b"O1 BAD"), reply
    sock.sendall(b"O2 NOOP\r\n")
    assert read_line(sock) == b"O2 OK NOOP completed.\r\n"
    sock.close()


def test_oversized_append_after_login_is_refused_and_the_session_goes_on(gateway: Gateway) -> None:
    sock = gateway.raw()
    secret = (PASSWORDS["erin"] + gateway.code("erin")).encode()
    sock.sendall(b"L1 LOGIN erin {%d}\r\n" % len(secret))
    assert read_line(sock).startswith(b"+")
    sock.sendall(secret + b"\r\n")
    assert read_until_tagged(sock, b"L1")[-1].startswith(b"L1 OK")
    sock.sendall(b"A1 APPEND INBOX {99999999999}\r\n")
    reply = read_until_tagged(sock, b"A1")[-1]
    assert reply.startswith((b"A1 BAD", b"A1 NO")), reply
    sock.sendall(b"A2 NOOP\r\n")
    assert read_until_tagged(sock, b"A2")[-1].startswith(b"A2 OK")
    sock.close()


def test_garbage_gets_bad_and_an_endless_line_gets_bye(gateway: Gateway) -> None:
    sock = gateway.raw()
    for junk in [b"\x00\xff\xfe", b"((((((", b"*", b"A1 LOGIN", b'A2 ID ("a" "b"']:
        sock.sendall(junk + b"\r\n")
        reply = read_line(sock)
        assert b" BAD " in reply, (junk, reply)
        assert b"Traceback" not in reply
    sock.sendall(b"X " + b"A" * 20000 + b"\r\n")
    lines = [read_line(sock), read_line(sock)]
    assert any(line.startswith(b"* BYE") for line in lines), lines
    sock.close()
    assert "Traceback" not in gateway.logs()


def test_oversized_id_is_refused(gateway: Gateway) -> None:
    sock = gateway.raw()
    pairs = b" ".join(b'"k%d" "v"' % i for i in range(40))
    sock.sendall(b"I1 ID (" + pairs + b")\r\n")
    assert read_line(sock).startswith(b"I1 BAD")
    sock.sendall(b'I2 ID ("name" "pda" "x-originating-ip" "10.9.9.9")\r\n')
    assert read_until_tagged(sock, b"I2")[-1] == b"I2 OK ID completed.\r\n"
    sock.close()


def test_commands_pipelined_after_starttls_are_discarded(gateway: Gateway) -> None:
    sock = socket.create_connection(("127.0.0.1", gateway.imap_port), timeout=15)
    assert read_line(sock).startswith(b"* OK")
    # The classic injection: a plaintext command right behind STARTTLS in the same packet.
    sock.sendall(b"S1 STARTTLS\r\nS2 CAPABILITY\r\nS3 LOGOUT\r\n")
    assert read_line(sock) == b"S1 OK Begin TLS negotiation now.\r\n"
    tls = gateway.context().wrap_socket(sock, server_hostname="127.0.0.1")
    tls.sendall(b"S4 NOOP\r\n")
    # The first thing under TLS answers S4; S2 and S3 were never executed.
    assert read_line(tls) == b"S4 OK NOOP completed.\r\n"
    tls.close()


def test_too_many_failed_logins_on_one_connection_end_it(gateway: Gateway) -> None:
    sock = gateway.raw()
    for i in range(3):
        sock.sendall(b'F%d LOGIN "dave" "wrong-password-%d"\r\n' % (i, i))
        assert read_line(sock) == b"F%d " % i + FAILED + b"\r\n"
    assert read_line(sock) == b"* BYE Too many failed logins.\r\n"
    assert read_line(sock) == b""
    sock.close()


def test_admin_revoke_ends_a_live_session_with_bye(gateway: Gateway) -> None:
    start = len(gateway.audit())  # the gateway is shared: only this test's lines count
    client = gateway.login("erin")
    client.select("INBOX")
    listed = gateway.cli("session", "list", "--user", "erin", "--json")
    sessions = json.loads(listed.stdout)["sessions"]
    assert len(sessions) == 1 and sessions[0]["door"] == "imaps"
    assert sessions[0]["device"] == "addr:127.0.0.1"
    r = gateway.cli("session", "revoke", sessions[0]["id"])
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    try:
        with pytest.raises((imaplib.IMAP4.abort, OSError, ssl.SSLError)):
            while time.monotonic() < deadline:
                client.noop()
                time.sleep(0.2)
    finally:
        client.shutdown()
    assert gateway.wait_for_audit(
        lambda e: e["kind"] == "session_close" and e["reason"] == "revoked" and e["user"] == "erin",
        since=start,
    )
