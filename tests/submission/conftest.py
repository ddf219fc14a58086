"""A real gateway with its submission doors in front of a real Postfix that authenticates by Dovecot."""

from __future__ import annotations

import json
import os
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from roamgate.demo.dovecot import PrivateDovecot, free_port
from tests.conftest import require_program
from tests.gateway.conftest import PASSWORDS, Gateway, running_gateway, wait_for_port
from tests.submission.postfix import PrivatePostfix

SUB_USERS = {name: PASSWORDS[name] for name in ("bob", "carol", "dave", "erin")}
SUB_USERS["frank"] = "frank's pass 5"  # the hourly limit raced over parallel connections
MAX_RECIPIENTS = 3
DAVE_MAX_BYTES = 100_000
ERIN_PER_HOUR = 2
FRANK_PER_HOUR = 2
SPOOL_MAX_BYTES = 30_000_000  # above the default 25 MiB message, as check-config wants


@dataclass
class SubmissionGateway:
    gw: Gateway
    postfix: PrivatePostfix
    smtps_port: int
    starttls_port: int
    spool_dir: Path

    def smtps(self) -> smtplib.SMTP_SSL:
        return smtplib.SMTP_SSL("127.0.0.1", self.smtps_port, context=self.gw.context(), timeout=60)

    def starttls(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.starttls_port, timeout=60)

    def login(self, user: str) -> smtplib.SMTP_SSL:
        client = self.smtps()
        client.login(user, SUB_USERS[user] + self.gw.code(user))
        return client

    def events(self, kind: str, user: str | None = None) -> list[dict[str, object]]:
        return [
            {**e, **dict(e["detail"])}  # type: ignore[call-overload]
            for e in self.gw.audit()
            if e["kind"] == kind and (user is None or e["user"] == user)
        ]

    def wait_for_event(self, kind: str, reason: str, timeout: float = 20) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events(kind):
                if event["reason"] == reason:
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no {kind} event with reason {reason}")

    def secrets_seen(self) -> list[str]:
        """Every password and code a client sent, to be found in no log."""
        return [*SUB_USERS.values(), *self.gw.handed_out]


@pytest.fixture(scope="package")
def sub_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SubmissionGateway]:
    require_program("oathtool")
    require_program("postfix")
    if os.geteuid() != 0:
        pytest.skip("the private Postfix needs root (its daemons switch to the postfix user)")
    postfix = PrivatePostfix(free_port(), size_limit=40_000_000)
    tmp = tmp_path_factory.mktemp("submission")
    try:
        with PrivateDovecot(tmp / "dovecot", sasl_socket=postfix.sasl_socket) as dovecot:
            for user, password in SUB_USERS.items():
                dovecot.add_user(user, password)
            postfix.install_certificate(dovecot.cert_file, dovecot.key_file)
            postfix.start()
            try:
                smtps_port, starttls_port = free_port(), free_port()
                spool_dir = tmp / "spool"
                spool_dir.mkdir()
                users = json.dumps(
                    {
                        "erin": {"max_messages_per_hour": ERIN_PER_HOUR},
                        "frank": {"max_messages_per_hour": FRANK_PER_HOUR},
                        "dave": {"max_message_bytes": DAVE_MAX_BYTES},
                    }
                )
                with running_gateway(
                    dovecot,
                    tmp / "gw",
                    users=SUB_USERS,
                    extra_init=(
                        "--upstream-smtp",
                        f"127.0.0.1:{postfix.port}",
                        "--submission-port",
                        str(smtps_port),
                        "--submission-starttls-port",
                        str(starttls_port),
                    ),
                    replace={
                        "  # sender_domain: example.com ": "  sender_domain: example.com ",
                        "  max_recipients: 50 ": f"  failure_delay_ms: 100\n"
                        f"  spool_memory_bytes: 65536\n  spool_dir: {json.dumps(str(spool_dir))}\n"
                        f"  spool_max_bytes: {SPOOL_MAX_BYTES}\n  max_recipients: {MAX_RECIPIENTS} ",
                        "  users: {} ": f"  users: {users} ",
                    },
                ) as gw:
                    wait_for_port(smtps_port, gw.process, gw.log_file)
                    wait_for_port(starttls_port, gw.process, gw.log_file)
                    yield SubmissionGateway(gw, postfix, smtps_port, starttls_port, spool_dir)
            finally:
                postfix.stop()
    finally:
        postfix.remove()


def message(sender: str, to: str, subject: str, body: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.com>\r\n\r\n{body}\r\n"
    ).encode()


def tmp_file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path
