"""A user disabled after AUTH sends nothing more: the next MAIL FROM is refused and the line closed."""

from __future__ import annotations

import smtplib

import pytest

from tests.submission.conftest import SubmissionGateway, message


def test_a_user_disabled_mid_connection_sends_no_further_message(sub_gw: SubmissionGateway) -> None:
    with sub_gw.login("bob") as client:
        client.sendmail("bob@example.com", ["x@example.com"], message(
            "bob@example.com", "x@example.com", "before", "before-disable-marker"
        ))  # fmt: skip
        assert sub_gw.gw.cli("user", "disable", "bob").returncode == 0
        try:
            code, text = client.mail("bob@example.com")
            assert code == 421 and b"disabled" in text
            # The gateway closed the line after its reply.
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.rcpt("x@example.com")
        finally:
            assert sub_gw.gw.cli("user", "enable", "bob").returncode == 0
    sub_gw.postfix.wait_for(b"before-disable-marker")
    refused = sub_gw.wait_for_event("submission", "user_disabled")
    assert refused["user"] == "bob" and refused["door"] == "submissions"
    # Enabled again, bob sends as before (the shared gateway's other tests rely on it).
    with sub_gw.login("bob") as client:
        assert client.mail("bob@example.com")[0] == 250
