"""upstream_login: relay: the gateway logs in to Postfix with its own relay account."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

from roamgate.demo.dovecot import free_port
from tests.gateway.conftest import running_gateway, wait_for_port
from tests.submission.conftest import SUB_USERS, SubmissionGateway, message

RELAY_USER = "relaybot"
RELAY_PASSWORD = "relay account pass 42"


def test_a_relay_account_sends_for_the_user(sub_gw: SubmissionGateway, tmp_path: Path) -> None:
    dovecot = sub_gw.gw.dovecot
    dovecot.add_user(RELAY_USER, RELAY_PASSWORD)
    secret = tmp_path / "relay-password"
    secret.write_text(RELAY_PASSWORD + "\n")
    secret.chmod(0o600)
    smtps_port = free_port()
    relay = (
        f"upstream_login: relay\n  relay_user: {RELAY_USER}\n"
        f"  relay_password_file: {json.dumps(str(secret))}\n  #"
    )
    with running_gateway(
        dovecot,
        tmp_path / "gw",
        users={"carol": SUB_USERS["carol"]},
        extra_init=(
            "--upstream-smtp", f"127.0.0.1:{sub_gw.postfix.port}",
            "--submission-port", str(smtps_port),
            "--submission-starttls-port", str(free_port()),
        ),
        replace={
            "upstream_login: passthrough      # passthrough | relay": relay,
            "  # sender_domain: example.com ": "  sender_domain: example.com ",
        },
    ) as gw:  # fmt: skip
        wait_for_port(smtps_port, gw.process, gw.log_file)
        with smtplib.SMTP_SSL("127.0.0.1", smtps_port, context=gw.context(), timeout=60) as c:
            c.login("carol", SUB_USERS["carol"] + gw.code("carol"))
            c.sendmail(
                "carol@example.com",
                ["x@example.com"],
                message("carol@example.com", "x@example.com", "relayed", "via the relay account"),
            )
            # The relay account does not widen what carol may send as.
            code, _text = c.mail("relaybot@example.com")
            assert code == 553
        logs = gw.logs()
        audit = (gw.dir / "audit.jsonl").read_text()
    delivered = sub_gw.postfix.wait_for(b"via the relay account")
    assert b"(authenticated user carol)" in delivered
    # Postfix logs which SASL account it accepted: the relay account, not carol.
    assert f"sasl_username={RELAY_USER}" in sub_gw.postfix.log_tail(400)
    for text in (logs, audit):
        assert RELAY_PASSWORD not in text and SUB_USERS["carol"] not in text
