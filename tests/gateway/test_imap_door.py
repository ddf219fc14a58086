"""The TLS front door end to end: imaplib and imapclient through roamgate to a real Dovecot."""

from __future__ import annotations

import email
import threading
import time
from collections.abc import Sequence

from imapclient import IMAPClient

from tests.gateway.conftest import (
    PASSWORDS,
    TOTP_USER,
    Gateway,
    read_line,
    read_until_tagged,
)


def _ok(result: tuple[str, Sequence[object]]) -> list[object]:
    status, data = result
    assert status == "OK", (status, data)
    return list(data)


def test_imaps_login_with_password_and_hotp_code_then_work_as_on_the_server(
    gateway: Gateway,
) -> None:
    client = gateway.imaps()
    assert "AUTH=PLAIN" in client.capabilities
    assert "STARTTLS" not in client.capabilities
    status, _ = client.login("bob", PASSWORDS["bob"] + gateway.code("bob"))
    assert status == "OK"
    # After login: the upstream's capabilities, filtered, and the proxy's own COMPRESS=DEFLATE.
    caps = _ok(client.capability())[0]
    assert isinstance(caps, bytes)
    assert b"IDLE" in caps and b"AUTH=" not in caps
    assert caps.split().count(b"COMPRESS=DEFLATE") == 1
    folders = b"\n".join(x for x in _ok(client.list()) if isinstance(x, bytes))
    for name in (b"INBOX", b"Sent", b"Projects"):
        assert name in folders
    exists = _ok(client.select("INBOX"))[0]
    assert isinstance(exists, bytes)
    count = int(exists)
    assert count == 35
    found = _ok(client.search(None, "SUBJECT", "budget"))[0]
    assert isinstance(found, bytes)
    direct = gateway.dovecot
    with direct.imap("bob", PASSWORDS["bob"]) as d:
        d.select("INBOX", readonly=True)
        assert _ok(d.search(None, "SUBJECT", "budget"))[0] == found
        _, direct_body = d.fetch("3", "(BODY.PEEK[])")
    _, body = client.fetch("3", "(BODY.PEEK[])")
    first = body[0]
    assert isinstance(first, tuple)
    d_first = direct_body[0]
    assert isinstance(d_first, tuple)
    assert first[1] == d_first[1]  # byte for byte what the server holds
    _ok(client.store("3", "+FLAGS", "(\\Flagged)"))
    flags = _ok(client.fetch("3", "(FLAGS)"))[0]
    assert isinstance(flags, bytes) and b"\\Flagged" in flags
    _ok(client.store("3", "-FLAGS", "(\\Flagged)"))
    assert client.logout()[0] == "BYE"  # imaplib reports the server's BYE on LOGOUT


def test_append_with_a_synchronising_literal_end_to_end(gateway: Gateway) -> None:
    client = gateway.login("bob")
    message = (
        b"From: bob@example.com\r\nTo: bob@example.com\r\nSubject: appended through roamgate\r\n"
        b"Message-ID: <append-1@roamgate.test>\r\n\r\n" + b"line of text\r\n" * 2000
    )
    # imaplib sends `{n}` and waits for the continuation: the upstream's `+` reaches it.
    _ok(client.append("Sent", "(\\Seen)", None, message))
    client.select("Sent")
    uids = _ok(client.search(None, "HEADER", "Message-ID", "<append-1@roamgate.test>"))[0]
    assert isinstance(uids, bytes) and uids.strip()
    fetched = _ok(client.fetch(uids.split()[-1].decode(), "(BODY.PEEK[])"))[0]
    assert isinstance(fetched, tuple)
    assert fetched[1] == message
    client.logout()


def test_imapclient_idle_sees_a_message_delivered_to_dovecot(gateway: Gateway) -> None:
    client = IMAPClient("127.0.0.1", port=gateway.imaps_port, ssl_context=gateway.context())
    client.login("bob", PASSWORDS["bob"] + gateway.code("bob"))
    client.select_folder("INBOX")
    client.idle()
    timer = threading.Timer(
        1.0,
        gateway.dovecot.deliver,
        args=(
            "bob",
            b"From: ceo@example.com\r\nSubject: idle wake-up\r\n\r\nhello\r\n",
        ),
    )
    timer.start()
    responses: list[tuple[object, ...]] = []
    deadline = time.monotonic() + 20
    try:
        # Keep-alive lines (`* OK Still here`) may come first; wait for the EXISTS.
        while time.monotonic() < deadline and not any(
            len(r) > 1 and r[1] == b"EXISTS" for r in responses
        ):
            responses += client.idle_check(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        timer.join()
        client.idle_done()
    assert any(r[1] == b"EXISTS" for r in responses if len(r) > 1), responses
    uids = client.search(["SUBJECT", "idle wake-up"])
    assert uids
    msg = client.fetch(uids, ["RFC822"])[uids[0]][b"RFC822"]
    assert email.message_from_bytes(msg)["Subject"] == "idle wake-up"
    client.logout()


def test_starttls_then_login_with_a_totp_code_from_oathtool(gateway: Gateway) -> None:
    client = gateway.imap_plain()
    assert "LOGINDISABLED" in client.capabilities and "STARTTLS" in client.capabilities
    client.starttls(ssl_context=gateway.context())
    assert "AUTH=PLAIN" in client.capabilities
    assert "LOGINDISABLED" not in client.capabilities
    client.login(TOTP_USER, PASSWORDS[TOTP_USER] + gateway.totp(TOTP_USER))
    assert client.state == "AUTH"
    _ok(client.select("INBOX", readonly=True))
    client.logout()


def test_authenticate_plain_with_sasl_ir(gateway: Gateway) -> None:
    client = gateway.imaps()
    secret = PASSWORDS["dave"] + gateway.code("dave")
    blob = b"\0dave\0" + secret.encode()
    status, _ = client.authenticate("PLAIN", lambda _c: blob)
    assert status == "OK"
    _ok(client.noop())
    client.logout()


def test_pipelined_commands_keep_their_tags(gateway: Gateway) -> None:
    client = gateway.login("bob")
    client.logout()
    sock = gateway.raw()
    secret = PASSWORDS["bob"].encode() + b"123456"
    sock.sendall(b"a1 LOGIN bob {%d}\r\n" % len(secret))
    cont = read_line(sock)
    assert cont.startswith(b"+")
    sock.sendall(secret + b"\r\n")  # a stale code, but bob's travel window is open
    lines = read_until_tagged(sock, b"a1")
    assert lines[-1].startswith(b"a1 OK"), lines
    sock.sendall(b"p1 SELECT INBOX\r\np2 NOOP\r\np3 FETCH 1:3 (UID FLAGS)\r\np4 LOGOUT\r\n")
    seen: list[bytes] = []
    data = b""
    while b"p4 OK" not in data and len(seen) < 100:
        line = read_line(sock)
        if not line:
            break
        seen.append(line)
        data += line
    done = [line.split(b" ")[:2] for line in seen if not line.startswith(b"*")]
    # The server may complete pipelined commands in any order; each must come back once, OK.
    assert sorted(done) == [[b"p1", b"OK"], [b"p2", b"OK"], [b"p3", b"OK"], [b"p4", b"OK"]], seen
    assert sum(1 for line in seen if b" FETCH (UID " in line) == 3
    sock.close()


def test_session_is_audited_with_bytes_and_duration(gateway: Gateway) -> None:
    # The package's gateway is shared with other modules (their order differs under xdist):
    # only the lines written after this test began count.
    start = len(gateway.audit())
    client = gateway.login("erin")
    client.select("INBOX")
    client.logout()
    closes = gateway.wait_for_audit(
        lambda e: e["kind"] == "session_close" and e.get("user") == "erin", since=start
    )
    assert closes, "no session_close event"
    event = closes[-1]
    detail = event["detail"]
    assert isinstance(detail, dict)
    assert event["door"] == "imaps" and event["source"] == "127.0.0.1"
    assert event["reason"] == "logout"
    assert int(detail["bytes_in"]) > 20 and int(detail["bytes_out"]) > 100
    assert float(detail["duration_seconds"]) >= 0
    opens = [
        e
        for e in gateway.audit()[start:]
        if e["kind"] == "session_open" and e.get("user") == "erin"
    ]
    assert opens


def test_no_secret_appears_in_logs_or_audit(gateway: Gateway) -> None:
    # Runs after the others in this file (pytest keeps file order): everything so far counts.
    logs = gateway.logs()
    audit = (gateway.dir / "audit.jsonl").read_text()
    for secret in list(PASSWORDS.values()) + list(gateway.secrets.values()):
        assert secret not in logs and secret not in audit
    for code in gateway.handed_out:
        assert code not in audit, code
        assert f" {code}" not in logs and f"{code}\n" not in logs
    assert "Traceback" not in logs


def test_only_capabilities_the_proxy_can_relay_are_announced(gateway: Gateway) -> None:
    with gateway.dovecot.imap("bob", PASSWORDS["bob"]) as direct:
        upstream_caps = set(direct.capability()[1][0].decode().upper().split())
    client = gateway.login("bob")
    typ, data = client.capability()
    client.logout()
    assert typ == "OK"
    through = set(data[0].decode().upper().split())
    # The proxy's own COMPRESS=DEFLATE (tests/gateway/test_imap_compress.py) comes on top.
    assert "COMPRESS=DEFLATE" in through
    through.discard("COMPRESS=DEFLATE")
    assert through <= upstream_caps
    # What changes the byte stream or the login never passes; the ordinary extensions do.
    for withheld in ("STARTTLS", "LOGINDISABLED", "NOTIFY", "AUTH=PLAIN"):
        assert withheld not in through
    assert {"IMAP4REV1", "IDLE", "UIDPLUS", "MOVE", "LITERAL+"} <= through
    # The private Dovecot offers COMPRESS when its zlib plugin is installed; the upstream's is
    # withheld either way (the proxy compresses toward the client, not the upstream's stream).
    assert gateway.dovecot.compress == ("COMPRESS=DEFLATE" in upstream_caps)
