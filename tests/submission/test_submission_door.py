"""The submission doors against real peers: smtplib and curl as clients, Postfix behind."""

from __future__ import annotations

import re
import subprocess
from email import message_from_bytes
from pathlib import Path

from tests.conftest import require_program
from tests.submission.conftest import SUB_USERS, SubmissionGateway, message, tmp_file


def _received_by_gateway(delivered: bytes) -> list[str]:
    msg = message_from_bytes(delivered)
    return [h for h in msg.get_all("Received") or [] if "(roamgate)" in h]


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
