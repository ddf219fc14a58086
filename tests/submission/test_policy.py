"""The submission policy on its own: owned addresses, limits, the header check, the Received line."""

from __future__ import annotations

import pytest

from roamgate.config import SubmissionSettings, SubmissionUser
from roamgate.gateway.submission_policy import (
    FROM_MISSING,
    FROM_NOT_OWNED,
    HEADER_TOO_LARGE,
    MAX_HEADER_BYTES,
    NO_OWNED_ADDRESS,
    SENDER_NOT_OWNED,
    HeaderScanner,
    check_sender,
    received_header,
    rules_for,
)
from roamgate.store.base import UserRecord


def _user(name: str, email: str | None = None) -> UserRecord:
    return UserRecord(1, name, email, True, "lan", None, 0.0, 0.0)


SETTINGS = SubmissionSettings(
    sender_domain="example.com",
    users={"alice": SubmissionUser(senders=("Sales@Example.com",), max_recipients=200)},
)


def test_owned_addresses_default_to_the_users_own() -> None:
    assert rules_for(_user("bob"), SETTINGS).addresses == {"bob@example.com"}
    # An address of record wins over the domain rule.
    assert rules_for(_user("bob", "Robert@Corp.example"), SETTINGS).addresses == {
        "robert@corp.example"
    }
    alice = rules_for(_user("alice"), SETTINGS)
    assert alice.addresses == {"alice@example.com", "sales@example.com"}
    assert alice.max_recipients == 200 and alice.max_messages_per_hour == 100
    assert check_sender(alice, "<SALES@example.com>") is None
    assert check_sender(alice, "boss@example.com") == SENDER_NOT_OWNED
    # No address of record and no domain: the user owns nothing and sends nothing.
    assert check_sender(rules_for(_user("eve"), SubmissionSettings()), "eve@x") == NO_OWNED_ADDRESS


def _scan(message: bytes, *, one_byte_at_a_time: bool = False) -> HeaderScanner:
    scanner = HeaderScanner()
    if one_byte_at_a_time:
        for i in range(len(message)):
            scanner.feed(message[i : i + 1])
    else:
        scanner.feed(message)
    return scanner


@pytest.mark.parametrize("bytewise", [False, True])
def test_the_from_header_must_be_owned(bytewise: bool) -> None:
    rules = rules_for(_user("bob"), SETTINGS)
    good = b"Subject: x\r\nFrom: Bob\r\n <bob@example.com>\r\n\r\nFrom: boss@example.com\r\n"
    assert _scan(good, one_byte_at_a_time=bytewise).check(rules) is None
    forged = b"From: =?utf-8?q?Bob?= <boss@example.com>\r\n\r\nbody\r\n"
    assert _scan(forged, one_byte_at_a_time=bytewise).check(rules) == FROM_NOT_OWNED
    two = b"From: bob@example.com\r\nFrom: boss@example.com\r\n\r\n"
    assert _scan(two, one_byte_at_a_time=bytewise).check(rules) == FROM_MISSING
    group = b"From: bob@example.com, boss@example.com\r\n\r\n"
    assert _scan(group).check(rules) == FROM_NOT_OWNED
    sender = b"From: bob@example.com\r\nSender: boss@example.com\r\n\r\n"
    assert _scan(sender).check(rules) == FROM_NOT_OWNED
    assert _scan(b"Subject: no from\r\n\r\n").check(rules) == FROM_MISSING
    assert _scan(b"From: bob@example.com\n\nbare LF\n").check(rules) is None


def test_a_header_section_without_end_is_capped() -> None:
    rules = rules_for(_user("bob"), SETTINGS)
    scanner = HeaderScanner()
    for _ in range(MAX_HEADER_BYTES // 1000 + 2):
        scanner.feed(b"X-Filler: " + b"a" * 988 + b"\r\n")
    assert scanner.check(rules) == HEADER_TOO_LARGE


def test_the_received_line_names_user_and_session_only() -> None:
    line = received_header(
        helo="evil\r\nBcc: x@y",
        source="192.0.2.7",
        hostname="gw.example.com",
        protocol="ESMTPSA",
        session_id="smtp_0123",
        user="bob",
        when=0,
    )
    assert line == (
        b"Received: from evilBcc:xy ([192.0.2.7])\r\n"
        b"\tby gw.example.com (roamgate) with ESMTPSA id smtp_0123\r\n"
        b"\t(authenticated user bob); Thu, 01 Jan 1970 00:00:00 -0000\r\n"
    )
