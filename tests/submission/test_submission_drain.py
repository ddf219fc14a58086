"""SIGTERM drains the submission door: an idle client hears 421, a message being sent is delivered."""

from __future__ import annotations

import signal
import smtplib
from pathlib import Path

from roamgate.demo.dovecot import free_port
from tests.gateway.conftest import running_gateway, wait_for_port
from tests.submission.conftest import SUB_USERS, SubmissionGateway, message


def test_sigterm_lets_a_message_in_data_finish_and_tells_idle_clients(
    sub_gw: SubmissionGateway, tmp_path: Path
) -> None:
    smtps_port = free_port()
    with running_gateway(
        sub_gw.gw.dovecot,
        tmp_path / "gw",
        users={"bob": SUB_USERS["bob"], "carol": SUB_USERS["carol"]},
        extra_init=(
            "--upstream-smtp", f"127.0.0.1:{sub_gw.postfix.port}",
            "--submission-port", str(smtps_port),
            "--submission-starttls-port", str(free_port()),
        ),
        replace={"  # sender_domain: example.com ": "  sender_domain: example.com "},
    ) as gw:  # fmt: skip
        wait_for_port(smtps_port, gw.process, gw.log_file)

        def client(user: str) -> smtplib.SMTP_SSL:
            c = smtplib.SMTP_SSL("127.0.0.1", smtps_port, context=gw.context(), timeout=60)
            c.login(user, SUB_USERS[user] + gw.code(user))
            return c

        idle, sending = client("bob"), client("carol")
        assert sending.mail("carol@example.com")[0] == 250
        assert sending.rcpt("someone@example.com")[0] == 250
        sending.putcmd("data")
        assert sending.getreply()[0] == 354
        body = message("carol@example.com", "someone@example.com", "drained", "sent in a drain")
        head, tail = body[: len(body) // 2], body[len(body) // 2 :]
        sending.send(head)

        gw.process.send_signal(signal.SIGTERM)
        # The idle client is told at once why its line closes.
        code, text = idle.getreply()
        assert code == 421 and b"shutting down" in text
        # The message in DATA completes and is accepted, then that client is told too.
        sending.send(tail + b"\r\n.\r\n")
        assert sending.getreply()[0] == 250
        code, text = sending.getreply()
        assert code == 421 and b"shutting down" in text
        idle.close()
        sending.close()
        assert gw.process.wait(40) == 0
    assert b"sent in a drain" in sub_gw.postfix.wait_for(b"sent in a drain")
