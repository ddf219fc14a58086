"""The upstream SMTP client's DATA path (dot-stuffing, replies) against a real aiosmtpd server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from roamgate.config import UpstreamServer
from roamgate.demo.dovecot import free_port
from roamgate.gateway.smtp_upstream import Reply, UpstreamSmtp, UpstreamSmtpError
from roamgate.gateway.submission_spool import Spool
from tests.submission.conftest import SubmissionGateway


class _Inbox:
    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550-5.1.1 <nobody@example.com>: no such user\r\n550 5.1.1 try another address"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.contents.append(envelope.original_content or b"")
        return "250 2.0.0 Ok: queued as ABC123"


@pytest.fixture
def inbox() -> Iterator[tuple[_Inbox, int]]:
    handler = _Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def _spool(data: bytes, tmp_path: Path, pieces: int) -> Spool:
    spool = Spool(memory_bytes=16, directory=tmp_path, limit=1 << 20)
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        spool.write(data[i : i + step])
    return spool


@pytest.mark.parametrize("pieces", [1, 7, 200])
async def test_data_is_dot_stuffed_and_arrives_as_sent(
    inbox: tuple[_Inbox, int], tmp_path: Path, pieces: int
) -> None:
    handler, port = inbox
    server = UpstreamServer(host="127.0.0.1", port=port, tls="none")
    conn = await UpstreamSmtp.connect(server, "gw.test")
    assert not conn.has("CHUNKING") and conn.has("8BITMIME")
    message = b"From: a@example.com\r\n\r\n.leading dot\r\n..two\r\n.\r\nend without newline"
    spool = _spool(message, tmp_path, pieces)
    try:
        assert (await conn.command("MAIL FROM:<a@example.com>")).code == 250
        refused = await conn.command("RCPT TO:<nobody@example.com>")
        assert refused == Reply(
            550, ("5.1.1 <nobody@example.com>: no such user", "5.1.1 try another address")
        )
        assert (await conn.command("RCPT TO:<b@example.com>")).ok
        reply = await conn.send_message(b"Received: by test\r\n", spool, spool.size)
    finally:
        spool.close()
        await conn.quit()
    assert reply.code == 250 and reply.wire() == "250 2.0.0 Ok: queued as ABC123"
    assert handler.contents == [b"Received: by test\r\n" + message + b"\r\n"]


def test_a_multi_line_reply_goes_back_whole() -> None:
    reply = Reply(250, ("first", "second", "last"))
    assert reply.wire() == "250-first\r\n250-second\r\n250 last"
    assert reply.ok and not Reply(452, ("x",)).ok


async def test_the_upstream_certificate_is_verified(sub_gw: SubmissionGateway) -> None:
    port = sub_gw.postfix.port
    good = UpstreamServer(
        host="127.0.0.1", port=port, tls="starttls", ca_file=sub_gw.gw.dovecot.ca_file
    )
    conn = await UpstreamSmtp.connect(good, "gw.test")
    assert conn.has("AUTH") and conn.has("CHUNKING")  # AUTH only after Postfix's STARTTLS
    await conn.quit()
    # The gateway's own CA did not sign Postfix's certificate: no connection, no credentials.
    wrong = UpstreamServer(host="127.0.0.1", port=port, tls="starttls", ca_file=sub_gw.gw.ca_file)
    with pytest.raises(UpstreamSmtpError, match="TLS failed"):
        await UpstreamSmtp.connect(wrong, "gw.test")
