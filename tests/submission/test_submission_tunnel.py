"""The SSH door's `submission` service ends in the submission door's own session and relay."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import asyncssh

from tests.submission.conftest import SUB_USERS, SubmissionGateway, message


class _Client(asyncssh.SSHClient):
    def __init__(self, password: str, code: str) -> None:
        self.answers = {"Password: ": password, "One-time code: ": code}

    def kbdint_auth_requested(self) -> str | None:
        return ""

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str]:
        return [self.answers.get(p, "") for p, _echo in prompts]


async def _reply(reader: asyncssh.SSHReader[bytes]) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        assert line, "the gateway closed the channel"
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def test_the_tunnel_takes_the_password_alone_and_relays(sub_gw: SubmissionGateway) -> None:
    gw = sub_gw.gw
    pub = (gw.dir / "ssh_host_ed25519_key.pub").read_text().split()
    known = gw.dir / "known_hosts_test"
    known.write_text(f"[127.0.0.1]:{gw.ssh_port} {pub[0]} {pub[1]}\n")
    client = _Client(SUB_USERS["carol"], gw.code("carol"))
    conn, _ = await asyncssh.create_connection(
        lambda: client,
        "127.0.0.1",
        gw.ssh_port,
        username="carol",
        known_hosts=str(known),
        agent_path=None,
        preferred_auth="keyboard-interactive",
        connect_timeout=15,
    )
    async with conn:
        reader, writer = await conn.open_connection("submission", 587)

        async def say(line: bytes) -> tuple[int, bytes]:
            writer.write(line + b"\r\n")
            return await _reply(reader)

        assert (await _reply(reader))[0] == 220
        code, ehlo = await say(b"EHLO laptop")
        assert code == 250 and b"AUTH" in ehlo and b"STARTTLS" not in ehlo
        assert b"CHUNKING" in ehlo and b"8BITMIME" in ehlo  # as Postfix offers them
        # Passthrough to the upstream needs the user's password: the tunnel alone is not enough.
        assert (await say(b"MAIL FROM:<carol@example.com>"))[0] == 530
        # Another user's name in carol's tunnel is refused; carol's password alone is enough.
        bob = base64.b64encode(f"\0bob\0{SUB_USERS['bob']}".encode())
        assert (await say(b"AUTH PLAIN " + bob))[0] == 535
        carol = base64.b64encode(f"\0carol\0{SUB_USERS['carol']}".encode())
        assert (await say(b"AUTH PLAIN " + carol))[0] == 235
        assert (await say(b"MAIL FROM:<carol@example.com>"))[0] == 250
        assert (await say(b"RCPT TO:<x@example.com>"))[0] == 250
        assert (await say(b"DATA"))[0] == 354
        body = message("carol@example.com", "x@example.com", "tunnel", "through the tunnel")
        code, text = await say(body + b".")
        assert code == 250 and b"queued as" in text
        assert (await say(b"QUIT"))[0] == 221
        writer.close()
    delivered = sub_gw.postfix.wait_for(b"through the tunnel")
    assert b"with ESMTPA id smtp_" in delivered and b"(authenticated user carol)" in delivered
    sent = [
        e for e in sub_gw.events("submission_message", "carol") if e["door"] == "ssh-submission"
    ]
    assert sent and sent[-1]["result"] == "ok" and sent[-1]["queue_id"]
    mismatch = [e for e in sub_gw.events("auth", "bob") if e["door"] == "ssh-submission"]
    assert mismatch and mismatch[-1]["reason"] == "tunnel_user_mismatch"
