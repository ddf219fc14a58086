"""The submission doors against real peers: smtplib and curl as clients, Postfix behind."""

from __future__ import annotations

import base64
import smtplib
import socket
import subprocess
import time
from email import message_from_bytes
from pathlib import Path

from tests.conftest import require_program
from tests.submission.conftest import (
    DAVE_MAX_BYTES,
    ERIN_PER_HOUR,
    FRANK_PER_HOUR,
    MAX_RECIPIENTS,
    SUB_USERS,
    SubmissionGateway,
    message,
    tmp_file,
)


def _received_by_gateway(delivered: bytes) -> list[str]:
    msg = message_from_bytes(delivered)
    received = [str(h) for h in msg.get_all("Received") or []]
    return [h for h in received if "(roamgate)" in h]


def test_smtps_relays_to_postfix_and_says_who_sent(sub_gw: SubmissionGateway) -> None:
    with sub_gw.login("carol") as client:
        ehlo = client.ehlo()[1].decode()
        refused = client.sendmail(
            "carol@example.com",
            ["x@example.com"],
            message("carol@example.com", "x@example.com", "first smtps", "hello from the road"),
        )
    assert refused == {}
    assert "AUTH" in ehlo and "SIZE" in ehlo
    delivered = sub_gw.postfix.wait_for(b"hello from the road")
    ours = _received_by_gateway(delivered)
    assert len(ours) == 1, delivered[:2000]
    assert "authenticated user carol" in ours[0] and "ESMTPSA" in ours[0]
    sent = sub_gw.events("submission_message", "carol")[-1]
    assert sent["result"] == "ok" and sent["door"] == "submissions"
    assert sent["sender"] == "carol@example.com" and sent["recipients"] == 1
    assert isinstance(sent["size"], int) and sent["size"] > 50
    assert isinstance(sent["queue_id"], str) and sent["queue_id"]
    assert str(sent["session_id"]) in ours[0]


def test_a_dotted_line_and_bdat_arrive_unchanged(sub_gw: SubmissionGateway) -> None:
    body = "line one\r\n.a line that starts with a dot\r\n..two dots\r\nend of dotted"
    with sub_gw.login("carol") as client:
        client.sendmail(
            "carol@example.com",
            ["x@example.com"],
            message("carol@example.com", "x@example.com", "dotted", body),
        )
        # CHUNKING is offered because Postfix offers it; BDAT bytes are taken as they are.
        assert client.has_extn("chunking")
        assert client.mail("carol@example.com")[0] == 250
        assert client.rcpt("x@example.com")[0] == 250
        msg = message("carol@example.com", "x@example.com", "bdat", ".chunked body, 8 bit: é")
        first, rest = msg[:40], msg[40:]
        client.send(f"BDAT {len(first)}\r\n".encode() + first)
        assert client.getreply()[0] == 250
        client.send(f"BDAT {len(rest)} LAST\r\n".encode() + rest)
        code, text = client.getreply()
        assert code == 250 and b"queued as" in text
    delivered = sub_gw.postfix.wait_for(b"end of dotted").replace(b"\r\n", b"\n")
    assert body.replace("\r\n", "\n").encode() in delivered
    chunked = sub_gw.postfix.wait_for(b".chunked body")
    assert ".chunked body, 8 bit: é".encode() in chunked


def test_a_new_ehlo_drops_the_chunks_of_an_unfinished_bdat(sub_gw: SubmissionGateway) -> None:
    # EHLO resets the transaction (RFC 5321 4.1.4): its chunks must not join the next message.
    with sub_gw.login("carol") as client:
        assert client.mail("carol@example.com")[0] == 250
        assert client.rcpt("x@example.com")[0] == 250
        stale = b"X-Stale: from-an-abandoned-bdat\r\n"
        client.send(f"BDAT {len(stale)}\r\n".encode() + stale)
        assert client.getreply()[0] == 250
        assert client.ehlo()[0] == 250
        assert client.mail("carol@example.com")[0] == 250
        assert client.rcpt("x@example.com")[0] == 250
        msg = message("carol@example.com", "x@example.com", "fresh", "fresh-after-ehlo")
        client.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
        code, text = client.getreply()
        assert code == 250 and b"queued as" in text, (code, text)
    delivered = sub_gw.postfix.wait_for(b"fresh-after-ehlo")
    assert b"from-an-abandoned-bdat" not in delivered


def test_smtputf8_and_8bitmime_as_the_upstream_offers_them(sub_gw: SubmissionGateway) -> None:
    with sub_gw.login("carol") as client:
        for extension in ("8bitmime", "smtputf8", "chunking", "size", "enhancedstatuscodes"):
            assert client.has_extn(extension), extension
        body = "From: carol@example.com\r\nTo: José <josé@example.com>\r\n"
        body += "Subject: Grüße aus Zürich\r\n\r\nutf8-marker: 日本語のメール\r\n"
        refused = client.sendmail(
            "carol@example.com",
            ["josé@example.com"],
            body.encode(),
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )
        assert refused == {}
    delivered = sub_gw.postfix.wait_for("utf8-marker: 日本語のメール".encode())
    assert "Subject: Grüße aus Zürich".encode() in delivered


def test_a_signed_message_keeps_a_valid_signature(
    sub_gw: SubmissionGateway, tmp_path: Path
) -> None:
    openssl = require_program("openssl")
    key, cert = tmp_path / "signer.key", tmp_path / "signer.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=Carol/emailAddress=carol@example.com",
         "-addext", "subjectAltName=email:carol@example.com",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    content = tmp_file(tmp_path, "report.txt", b"Quarterly numbers: signed on the road.\n" * 20)
    signed = subprocess.run(
        [openssl, "smime", "-sign", "-in", str(content), "-signer", str(cert),
         "-inkey", str(key), "-from", "carol@example.com", "-to", "x@example.com",
         "-subject", "signed report"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    with sub_gw.login("carol") as client:
        client.sendmail("carol@example.com", ["x@example.com"], signed.replace(b"\n", b"\r\n"))
    delivered = sub_gw.postfix.wait_for(b"signed report")
    assert len(_received_by_gateway(delivered)) == 1
    copy = tmp_file(tmp_path, "delivered.eml", delivered)

    def verify(path: Path) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [openssl, "smime", "-verify", "-in", str(path), "-CAfile", str(cert),
             "-purpose", "any", "-out", "/dev/null"],
            capture_output=True, timeout=60,
        )  # fmt: skip

    checked = verify(copy)
    assert checked.returncode == 0, checked.stderr
    assert b"Verification successful" in checked.stderr
    # The check can fail: one changed byte in the signed text and it does.
    tampered = tmp_file(tmp_path, "tampered.eml", delivered.replace(b"Quarterly", b"Quarterlx", 1))
    assert verify(tampered).returncode != 0


def test_starttls_port_wants_tls_before_auth_and_mail(sub_gw: SubmissionGateway) -> None:
    with sub_gw.starttls() as client:
        code, caps = client.ehlo()
        assert code == 250 and b"STARTTLS" in caps and b"AUTH" not in caps
        blob = base64.b64encode(f"\0carol\0{SUB_USERS['carol']}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {blob}")
        assert code == 530 and b"STARTTLS" in text
        assert client.mail("carol@example.com")[0] == 530
        client.starttls(context=sub_gw.gw.context())
        code, caps = client.ehlo()
        assert b"AUTH LOGIN PLAIN" in caps
        # AUTH LOGIN this time (PLAIN above), the password and code in one field.
        client.user, client.password = "carol", SUB_USERS["carol"] + sub_gw.gw.code("carol")
        assert client.auth("LOGIN", client.auth_login)[0] == 235
        client.sendmail(
            "carol@example.com",
            ["x@example.com"],
            message("carol@example.com", "x@example.com", "over starttls", "via 587"),
        )
    sub_gw.postfix.wait_for(b"via 587")
    assert sub_gw.wait_for_event("submission", "auth_before_tls")["door"] == "submission"
    assert [e for e in sub_gw.events("submission_message", "carol") if e["door"] == "submission"]


def test_curl_sends_over_smtps(sub_gw: SubmissionGateway, tmp_path: Path) -> None:
    curl = require_program("curl")
    mail = tmp_file(
        tmp_path,
        "mail.txt",
        message("Carol <carol@example.com>", "y@example.com", "from curl", "curl was here"),
    )
    done = subprocess.run(
        [curl, "-sS", "--url", f"smtps://127.0.0.1:{sub_gw.smtps_port}",
         "--cacert", str(sub_gw.gw.ca_file), "--mail-from", "carol@example.com",
         "--mail-rcpt", "y@example.com", "--upload-file", str(mail),
         "--user", f"carol:{SUB_USERS['carol']}{sub_gw.gw.code('carol')}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"curl was here" in sub_gw.postfix.wait_for(b"curl was here")


def test_no_auth_no_mail(sub_gw: SubmissionGateway) -> None:
    with sub_gw.smtps() as client:
        client.ehlo()
        code, text = client.mail("carol@example.com")
        assert code == 530 and b"5.7.0 Authentication required" in text
    events = [e for e in sub_gw.events("submission") if e["reason"] == "not_authenticated"]
    assert any(e["result"] == "fail" and e["door"] == "submissions" for e in events)


def test_a_wrong_code_is_refused(sub_gw: SubmissionGateway) -> None:
    # Inside a travel window a saved stale code is let in by design; a login by an earlier
    # test on this worker's gateway (test_submission_disabled's) may have opened bob's.
    assert sub_gw.gw.cli("session", "revoke", "--user", "bob").returncode == 0
    with sub_gw.smtps() as client:
        try:
            client.login("bob", SUB_USERS["bob"] + "000000")
        except smtplib.SMTPAuthenticationError as exc:
            assert exc.smtp_code == 535 and b"5.7.8" in exc.smtp_error
        else:
            raise AssertionError("a wrong code was accepted")
        assert client.mail("bob@example.com")[0] == 530
    fails = [e for e in sub_gw.events("auth", "bob") if e["door"] == "submissions"]
    assert fails and fails[-1]["result"] == "fail"
    assert str(fails[-1]["reason"]).startswith("bad_code")


def test_forged_senders_are_refused(sub_gw: SubmissionGateway) -> None:
    with sub_gw.login("carol") as client:
        code, text = client.mail("boss@example.com")
        assert code == 553 and b"5.7.1" in text and b"not owned" in text
        client.rset()
        forged = message("The Boss <boss@example.com>", "x@example.com", "forged", "forged-body")
        try:
            client.sendmail("carol@example.com", ["x@example.com"], forged)
        except smtplib.SMTPDataError as exc:
            assert exc.smtp_code == 550 and b"From: header" in exc.smtp_error
        else:
            raise AssertionError("a forged From: was relayed")
    assert sub_gw.wait_for_event("submission", "sender_not_owned")["sender"] == "boss@example.com"
    assert sub_gw.wait_for_event("submission_message", "from_not_owned")["user"] == "carol"
    time.sleep(2)
    assert not [m for m in sub_gw.postfix.delivered() if b"forged-body" in m]


def test_recipients_beyond_the_limit_and_refused_upstream(sub_gw: SubmissionGateway) -> None:
    to = [f"r{i}@example.com" for i in range(MAX_RECIPIENTS + 1)]
    with sub_gw.login("carol") as client:
        refused = client.sendmail(
            "carol@example.com", to, message("carol@example.com", to[0], "many", "to many")
        )
        assert list(refused) == [to[-1]]
        code, text = refused[to[-1]]
        assert code == 452 and b"4.5.3 Too many recipients" in text
        # A recipient the upstream refuses is refused with the upstream's own words.
        assert client.mail("carol@example.com")[0] == 250
        code, text = client.rcpt("nobody@example.com")
        assert code == 554 or code == 550, text
        assert b"No such user here" in text
        client.rset()
    delivered = sub_gw.postfix.wait_for(b"to many")
    assert message_from_bytes(delivered)["Subject"] == "many"
    assert (
        sub_gw.wait_for_event("submission", "too_many_recipients")["recipients"] == MAX_RECIPIENTS
    )


def test_oversized_messages_are_refused(sub_gw: SubmissionGateway) -> None:
    big = message("dave@example.com", "x@example.com", "big", "oversized-body " + "x" * 76 + "\r\n")
    big += (b"y" * 998 + b"\r\n") * (DAVE_MAX_BYTES // 1000 + 5)
    with sub_gw.login("dave") as client:
        assert f"SIZE {DAVE_MAX_BYTES}".encode() in client.ehlo()[1]
        # smtplib declares SIZE=: refused at MAIL FROM.
        try:
            client.sendmail("dave@example.com", ["x@example.com"], big)
        except smtplib.SMTPSenderRefused as exc:
            assert exc.smtp_code == 552 and b"5.3.4" in exc.smtp_error
        else:
            raise AssertionError("an oversized SIZE= was accepted")
        client.rset()
        # Without SIZE=: read to the end, kept to the limit, refused after the final dot.
        assert client.mail("dave@example.com")[0] == 250
        assert client.rcpt("x@example.com")[0] == 250
        code, text = client.data(big)
        assert code == 552 and b"5.3.4" in text
    events = [e for e in sub_gw.events("submission", "dave") if e["reason"] == "message_too_large"]
    assert events and events[-1]["size"] == len(big)
    too_large = sub_gw.wait_for_event("submission_message", "message_too_large")
    assert too_large["user"] == "dave" and int(str(too_large["size"])) <= DAVE_MAX_BYTES
    time.sleep(2)
    assert not [m for m in sub_gw.postfix.delivered() if b"oversized-body" in m]


def test_a_client_that_stops_mid_data_sends_nothing(sub_gw: SubmissionGateway) -> None:
    code = sub_gw.gw.code("bob")
    raw = socket.create_connection(("127.0.0.1", sub_gw.smtps_port), timeout=30)
    with (
        sub_gw.gw.context().wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        sock.makefile("rb") as stream,
    ):

        def say(line: bytes) -> bytes:
            sock.sendall(line + b"\r\n")
            reply = stream.readline()
            while reply[3:4] == b"-":
                reply = stream.readline()
            return reply

        assert stream.readline().startswith(b"220")
        assert say(b"EHLO road").startswith(b"250")
        blob = base64.b64encode(f"\0bob\0{SUB_USERS['bob']}{code}".encode())
        assert say(b"AUTH PLAIN " + blob).startswith(b"235")
        assert say(b"MAIL FROM:<bob@example.com>").startswith(b"250")
        assert say(b"RCPT TO:<x@example.com>").startswith(b"250")
        assert say(b"DATA").startswith(b"354")
        sock.sendall(message("bob@example.com", "x@example.com", "cut", "cut-off-marker")[:-2])
        sock.sendall(b"more of the message, and then the line drops\r\n" * 500)
    event = sub_gw.wait_for_event("submission_message", "client_disconnected_in_data")
    assert event["user"] == "bob" and int(str(event["size"])) > 10_000
    time.sleep(3)
    assert not [m for m in sub_gw.postfix.delivered() if b"cut-off-marker" in m]


def test_messages_per_hour_are_limited(sub_gw: SubmissionGateway) -> None:
    with sub_gw.login("erin") as client:
        for n in range(ERIN_PER_HOUR):
            body = f"erin message {n}"
            client.sendmail("erin@example.com", ["x@example.com"], message(
                "erin@example.com", "x@example.com", f"erin {n}", body
            ))  # fmt: skip
        code, text = client.mail("erin@example.com")
        assert code == 450 and b"4.7.1" in text and b"hour" in text
    assert sub_gw.wait_for_event("submission", "rate_limited")["user"] == "erin"


def test_parallel_connections_cannot_race_the_hourly_limit(sub_gw: SubmissionGateway) -> None:
    # Every connection is past MAIL FROM before any message is sent: the messages begun count.
    clients = [sub_gw.login("frank") for _ in range(FRANK_PER_HOUR + 2)]
    try:
        answers = [c.mail("frank@example.com") for c in clients]
        codes = [code for code, _ in answers]
        assert codes == [250] * FRANK_PER_HOUR + [450, 450], answers
        # A message given up frees its place for another connection: by RSET, by a new EHLO,
        # by a line dropped in the middle of DATA.
        assert clients[0].rset()[0] == 250
        assert clients[2].mail("frank@example.com")[0] == 250
        assert clients[1].ehlo()[0] == 250
        assert clients[3].mail("frank@example.com")[0] == 250
        assert clients[2].rcpt("x@example.com")[0] == 250
        clients[2].putcmd("data")
        assert clients[2].getreply()[0] == 354
        clients[2].send(message("frank@example.com", "x@example.com", "cut", "frank-cut-off"))
        cut = clients[2].sock
        assert cut is not None
        cut.shutdown(socket.SHUT_RDWR)  # no QUIT, no end of data: the line is gone
        assert sub_gw.gw.wait_for_audit(
            lambda e: (
                e["kind"] == "submission_message"
                and e["user"] == "frank"
                and e["reason"] == "client_disconnected_in_data"
            )
        ), "the dropped line was not audited"
        assert clients[0].mail("frank@example.com")[0] == 250
        for n, client in enumerate([clients[0], clients[3]]):
            assert client.rcpt("x@example.com")[0] == 250
            body = f"frank-parallel-{n}"
            msg = message("frank@example.com", "x@example.com", body, body)
            assert client.data(msg)[0] == 250
        # The hour's messages are sent: no connection begins another.
        for client in (clients[0], clients[1], clients[3]):
            code, text = client.mail("frank@example.com")
            assert code == 450 and b"hour" in text, (code, text)
    finally:
        for client in clients:
            client.close()
    for n in range(FRANK_PER_HOUR):
        sub_gw.postfix.wait_for(f"frank-parallel-{n}".encode())
    sent = [e for e in sub_gw.events("submission_message", "frank") if e["result"] == "ok"]
    assert len(sent) == FRANK_PER_HOUR
    assert not [m for m in sub_gw.postfix.delivered() if b"frank-cut-off" in m]
    refused = [e for e in sub_gw.events("submission", "frank") if e["reason"] == "rate_limited"]
    assert len(refused) == 2 + 3 and refused[0]["in_flight"] == FRANK_PER_HOUR


def test_the_session_stays_usable_after_a_reset_or_a_refused_message(
    sub_gw: SubmissionGateway,
) -> None:
    with sub_gw.login("carol") as client:
        # A new EHLO mid-transaction resets it here and upstream alike.
        assert client.mail("carol@example.com")[0] == 250
        assert client.rcpt("x@example.com")[0] == 250
        assert client.ehlo()[0] == 250
        # A line over 1000 octets (RFC 5321 4.5.3.1.6) ends the message with 500, nothing sent.
        assert client.mail("carol@example.com")[0] == 250
        assert client.rcpt("x@example.com")[0] == 250
        long_line = message("carol@example.com", "x@example.com", "long", "z" * 1200)
        code, text = client.data(long_line + b"long-line-marker\r\n")
        assert code == 500 and b"Line too long" in text
        client.sendmail(
            "carol@example.com",
            ["x@example.com"],
            message("carol@example.com", "x@example.com", "after", "after-reset-marker"),
        )
    sub_gw.postfix.wait_for(b"after-reset-marker")
    assert sub_gw.wait_for_event("submission_message", "line_too_long")["user"] == "carol"
    assert not [m for m in sub_gw.postfix.delivered() if b"long-line-marker" in m]


def test_no_secret_reaches_a_log(sub_gw: SubmissionGateway) -> None:
    # Every password, code and AUTH blob the tests above sent is looked for.
    with sub_gw.login("carol") as client:
        client.noop()
    logs = sub_gw.gw.logs()
    audit = (sub_gw.gw.dir / "audit.jsonl").read_text()
    assert "submission" in logs and "authenticated" in logs
    for secret in sub_gw.secrets_seen():
        assert secret not in logs and secret not in audit, secret
    for user, password in SUB_USERS.items():
        for code in sub_gw.gw.handed_out:
            blob = base64.b64encode(f"\0{user}\0{password}{code}".encode()).decode()
            assert blob not in logs and blob not in audit
    for delivered in sub_gw.postfix.delivered():
        for line in _received_by_gateway(delivered):
            assert not any(s in line for s in sub_gw.secrets_seen())


def test_connections_beyond_the_per_source_cap_are_refused(sub_gw: SubmissionGateway) -> None:
    held = []
    try:
        for _ in range(10):  # submission.max_connections_per_source (default 10)
            client = sub_gw.smtps()
            held.append(client)
        raw = socket.create_connection(("127.0.0.1", sub_gw.smtps_port), timeout=30)
        with (
            sub_gw.gw.context().wrap_socket(raw, server_hostname="127.0.0.1") as sock,
            sock.makefile("rb") as stream,
        ):
            assert stream.readline().startswith(b"421 4.7.0 Too many connections")
    finally:
        for client in held:
            client.close()
    refused = [e for e in sub_gw.events("connection_refused") if e["door"] == "submissions"]
    assert refused and refused[-1]["reason"] == "source_connection_limit"
