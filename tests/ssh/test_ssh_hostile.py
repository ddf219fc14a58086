"""Hostile SSH clients (asyncssh) while a legitimate user tunnels IMAP with OpenSSH's ssh.

Attackers connect from 127.0.0.2 so the per-source connection cap that stops them does not
also stop the legitimate user on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import imaplib
import sqlite3
from collections.abc import Sequence

import asyncssh
import pytest

from roamgate.demo.dovecot import free_port
from tests.ssh.conftest import SSH_USERS, SshGateway

ATTACKER = "127.0.0.2"


class _Answers(asyncssh.SSHClient):
    def __init__(self, password: str, code: str) -> None:
        self.answers = {"Password: ": password, "One-time code: ": code}
        self.tries = 0

    def kbdint_auth_requested(self) -> str | None:
        self.tries += 1
        return "" if self.tries == 1 else None

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str]:
        return [self.answers.get(p, "") for p, _echo in prompts]


async def _connect(
    ssh: SshGateway, user: str, password: str, code: str
) -> asyncssh.SSHClientConnection:
    conn, _ = await asyncssh.create_connection(
        lambda: _Answers(password, code),
        "127.0.0.1",
        ssh.port,
        username=user,
        known_hosts=str(ssh.known_hosts),
        client_keys=None,
        agent_path=None,
        preferred_auth="keyboard-interactive",
        local_addr=(ATTACKER, 0),
        connect_timeout=30,
    )
    return conn


def _legitimate_fetch(ssh: SshGateway) -> None:
    """OpenSSH tunnel with password and code, then IMAP through it with the password alone."""
    local = free_port()
    code = ssh.gw.code("bob")
    with ssh.openssh_tunnel("bob", SSH_USERS["bob"], code, f"127.0.0.1:{local}:imap:143"):
        client = imaplib.IMAP4("127.0.0.1", local, timeout=60)
        assert client.login("bob", SSH_USERS["bob"])[0] == "OK"
        assert client.select("INBOX", readonly=True)[0] == "OK"
        status, parts = client.fetch("1", "(BODY.PEEK[])")
        assert status == "OK" and isinstance(parts[0], tuple)
        client.logout()


async def test_a_hundred_channels_on_one_connection_are_capped_and_others_still_work(
    ssh_gw: SshGateway,
) -> None:
    conn = await _connect(ssh_gw, "carol", SSH_USERS["carol"], ssh_gw.gw.code("carol"))
    async with conn:
        opened = await asyncio.gather(
            *(conn.open_connection("wiki", 143) for _ in range(100)), return_exceptions=True
        )
        ok = [o for o in opened if not isinstance(o, BaseException)]
        refused = [o for o in opened if isinstance(o, asyncssh.ChannelOpenError)]
        assert len(ok) == 8 and len(refused) == 92, opened[:3]
        await asyncio.to_thread(_legitimate_fetch, ssh_gw)
        for _reader, writer in ok:
            writer.close()
    assert ssh_gw.gw.process.poll() is None


async def test_an_authentication_flood_from_many_ports_spares_the_legitimate_user(
    ssh_gw: SshGateway,
) -> None:
    async def attempt(i: int) -> str:
        try:
            conn = await _connect(ssh_gw, f"flood{i}", "wrong password", "000000")
        except asyncssh.PermissionDenied:
            return "denied"
        except (asyncssh.DisconnectError, OSError) as exc:
            return type(exc).__name__
        conn.close()
        return "accepted"

    flood = asyncio.gather(*(attempt(i) for i in range(40)))
    await asyncio.sleep(1)
    await asyncio.to_thread(_legitimate_fetch, ssh_gw)
    results = await asyncio.wait_for(flood, 180)
    assert "accepted" not in results
    assert results.count("denied") >= 1, results
    # Past the per-source cap the flood is turned away at once, audited.
    refused = [
        e
        for e in ssh_gw.gw.audit()
        if e["kind"] == "connection_refused" and e.get("source") == ATTACKER
    ]
    assert refused and all(e["reason"] == "source_connection_limit" for e in refused)
    assert ssh_gw.gw.process.poll() is None


async def test_a_locked_database_refuses_ssh_logins_with_a_clear_reason(ssh_gw: SshGateway) -> None:
    db = sqlite3.connect(ssh_gw.gw.dir / "roamgate.db", isolation_level=None, timeout=30)
    try:
        db.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        code = ssh_gw.gw.code("dave")
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncio.wait_for(_connect(ssh_gw, "dave", SSH_USERS["dave"], code), 120)
    finally:
        db.execute("ROLLBACK")
        db.close()
    logs = ssh_gw.gw.logs()
    assert "ssh login of dave not decided: database" in logs
    assert "Traceback" not in logs
    # The store is back: the same code was never used, a fresh one logs in.
    conn = await _connect(ssh_gw, "dave", SSH_USERS["dave"], ssh_gw.gw.code("dave"))
    conn.close()
