"""What the SSH door refuses, with asyncssh as a second client: each refusal clean and audited."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import asyncssh
import pytest

from tests.ssh.conftest import SSH_USERS, SshGateway


class _Client(asyncssh.SSHClient):
    """Answers keyboard-interactive prompts from a table and remembers which were asked."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.prompts: list[str] = []
        self.tries = 0

    def kbdint_auth_requested(self) -> str | None:
        # One conversation only (asyncssh's client would try again after a failure).
        self.tries += 1
        return "" if self.tries == 1 else None

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str]:
        self.prompts += [p for p, _echo in prompts]
        return [self.answers.get(p, "") for p, _echo in prompts]


async def _connect(
    ssh: SshGateway,
    user: str,
    password: str,
    code: str,
    *,
    keys: Sequence[asyncssh.SSHKey] = (),
    seen: list[_Client] | None = None,
) -> tuple[asyncssh.SSHClientConnection, _Client]:
    client = _Client({"Password: ": password, "One-time code: ": code})
    if seen is not None:
        seen.append(client)
    conn, _ = await asyncssh.create_connection(
        lambda: client,
        "127.0.0.1",
        ssh.port,
        username=user,
        known_hosts=str(ssh.known_hosts),
        client_keys=list(keys) or None,
        agent_path=None,
        preferred_auth="publickey,keyboard-interactive" if keys else "keyboard-interactive",
        connect_timeout=15,
    )
    return conn, client


def _events(ssh: SshGateway, kind: str) -> list[dict[str, object]]:
    out = []
    for e in ssh.gw.audit():
        if e["kind"] == kind:
            detail = e.get("detail")
            out.append({**e, **(detail if isinstance(detail, dict) else {})})
    return out


async def _refused(ssh: SshGateway, reason: str, before: int, count: int = 1) -> dict[str, object]:
    # Refusals are audited from asyncssh's synchronous hooks by a task: give it a moment.
    found: list[dict[str, object]] = []
    for _ in range(100):
        found = [e for e in _events(ssh, "forward_refused") + _events(ssh, "ssh_refused")]
        found = [e for e in found if int(str(e["id"])) > before and e["reason"] == reason]
        if len(found) >= count:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(found)} audited refusals {reason!r}, expected {count}")


def _last_id(ssh: SshGateway) -> int:
    events = ssh.gw.audit()
    return int(str(events[-1]["id"])) if events else 0


async def test_forwards_other_than_the_named_services_are_refused(ssh_gw: SshGateway) -> None:
    conn, _ = await _connect(ssh_gw, "bob", SSH_USERS["bob"], ssh_gw.gw.code("bob"))
    async with conn:
        before = _last_id(ssh_gw)
        dovecot_port = ssh_gw.gw.dovecot.imaps_port
        # The mail server itself, by address: only `imap` (the proxy) reaches it.
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", dovecot_port)
        event = await _refused(ssh_gw, "destination_not_allowed", before)
        assert event["asked"] == f"127.0.0.1:{dovecot_port}" and event["user"] == "bob"
        # `wiki` is a forward for carol only.
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("wiki", 80)
        await _refused(ssh_gw, "forward_not_allowed_for_user", before)
        # Remote forwarding (the gateway listening for the client) is never allowed.
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
        await _refused(ssh_gw, "remote_forwarding", before)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_unix_connection("/run/dovecot/stats-writer")
        await _refused(ssh_gw, "unix_socket_channel", before)


async def test_exec_and_shell_are_refused(ssh_gw: SshGateway) -> None:
    conn, _ = await _connect(ssh_gw, "carol", SSH_USERS["carol"], ssh_gw.gw.code("carol"))
    async with conn:
        before = _last_id(ssh_gw)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.run("id", check=True)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process()  # a shell
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.start_sftp_client()  # a subsystem
        await _refused(ssh_gw, "session_channel", before, count=3)
        # The forward that is allowed still works on this connection.
        reader, writer = await conn.open_connection("wiki", 143)
        assert (await reader.readline()).startswith(b"* OK")
        writer.close()


async def test_wrong_code_wrong_password_and_unknown_user_look_the_same(
    ssh_gw: SshGateway,
) -> None:
    assert ssh_gw.gw.cli("session", "revoke", "--user", "dave").returncode == 0
    clients: list[_Client] = []
    for user, password, code in (
        ("dave", SSH_USERS["dave"], "000000"),  # wrong code
        ("dave", "not dave's password", ssh_gw.gw.code("dave")),  # wrong password
        ("nobody", "whatever", "123456"),  # unknown user
    ):
        with pytest.raises(asyncssh.PermissionDenied):
            await _connect(ssh_gw, user, password, code, seen=clients)
    # The same two prompts each time: nothing tells which answer was wrong.
    assert [c.prompts for c in clients] == [["Password: ", "One-time code: "]] * 3
    fails = [e for e in _events(ssh_gw, "auth") if e["result"] == "fail" and e["door"] == "ssh"]
    reasons = [e["reason"] for e in fails[-3:]]
    assert reasons == ["bad_code:wrong", "bad_password", "unknown_user"]


async def test_a_replayed_code_is_refused(ssh_gw: SshGateway) -> None:
    assert ssh_gw.gw.cli("session", "revoke", "--user", "erin").returncode == 0
    code = ssh_gw.gw.code("erin")
    conn, client = await _connect(ssh_gw, "erin", SSH_USERS["erin"], code)
    conn.close()
    assert client.prompts == ["Password: ", "One-time code: "]
    # Without the travel window (revoked), the same code again:
    assert ssh_gw.gw.cli("session", "revoke", "--user", "erin").returncode == 0
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(ssh_gw, "erin", SSH_USERS["erin"], code)
    fails = [
        e for e in _events(ssh_gw, "auth") if e.get("user") == "erin" and e["result"] == "fail"
    ]
    assert fails[-1]["reason"] == "bad_code:replay"


async def test_a_registered_key_replaces_the_password_never_the_code(
    ssh_gw: SshGateway, tmp_path: Path
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="erin@laptop")
    (tmp_path / "erin.pub").write_bytes(key.export_public_key("openssh"))
    r = ssh_gw.gw.cli("user", "key", "add", "erin", str(tmp_path / "erin.pub"))
    assert r.returncode == 0, r.stderr
    listed = ssh_gw.gw.cli("user", "key", "list", "erin").stdout
    assert key.get_fingerprint("sha256") in listed and "erin@laptop" in listed
    assert ssh_gw.gw.cli("session", "revoke", "--user", "erin").returncode == 0
    conn, client = await _connect(ssh_gw, "erin", "", ssh_gw.gw.code("erin"), keys=[key])
    conn.close()
    assert client.prompts == ["One-time code: "]
    auth = [e for e in _events(ssh_gw, "auth") if e.get("user") == "erin" and e["door"] == "ssh"]
    assert auth[-1]["factor"] == "key+hotp" and auth[-1]["key"] == key.get_fingerprint("sha256")
    # The key with a wrong code: refused. The key opens no travel window either.
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(ssh_gw, "erin", "", "000000", keys=[key])
    conn, client = await _connect(ssh_gw, "erin", "", ssh_gw.gw.code("erin"), keys=[key])
    conn.close()
    assert client.prompts == ["One-time code: "]
    assert (
        ssh_gw.gw.cli("user", "key", "remove", "erin", key.get_fingerprint("sha256")).returncode
        == 0
    )


async def test_an_unregistered_key_is_the_device_of_the_travel_window(ssh_gw: SshGateway) -> None:
    device = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    assert ssh_gw.gw.cli("session", "revoke", "--user", "bob").returncode == 0
    conn, client = await _connect(
        ssh_gw, "bob", SSH_USERS["bob"], ssh_gw.gw.code("bob"), keys=[device]
    )
    conn.close()
    assert client.prompts == ["Password: ", "One-time code: "]
    conn, client = await _connect(ssh_gw, "bob", SSH_USERS["bob"], "", keys=[device])
    conn.close()
    assert client.prompts == ["Password: "]  # the same device: the window holds
    # Another key from the same address is another device: the code is asked.
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(ssh_gw, "bob", SSH_USERS["bob"], "", keys=[other])
    opened = [e for e in _events(ssh_gw, "session_open") if e.get("user") == "bob"]
    assert opened[-1]["device"] == f"sshkey:{device.get_fingerprint('sha256')}"


async def test_the_tunnel_logs_in_only_its_own_user(ssh_gw: SshGateway) -> None:
    conn, _ = await _connect(ssh_gw, "carol", SSH_USERS["carol"], ssh_gw.gw.code("carol"))
    async with conn:
        reader, writer = await conn.open_connection("imap", 143)
        assert (await reader.readline()).startswith(b"* OK")
        writer.write(b'a1 LOGIN bob "%s"\r\n' % SSH_USERS["bob"].encode())
        line = await reader.readline()
        assert line.startswith(b"a1 NO [AUTHENTICATIONFAILED]"), line
        writer.write(b'a2 LOGIN carol "%s"\r\n' % SSH_USERS["carol"].encode())
        assert (await reader.readline()).startswith(b"a2 OK")
        writer.write(b"a3 LOGOUT\r\n")
        writer.close()
    fails = [
        e for e in _events(ssh_gw, "auth") if e["door"] == "ssh-imap" and e["result"] == "fail"
    ]
    assert fails[-1]["reason"] == "tunnel_user_mismatch" and fails[-1]["user"] == "bob"


async def test_channels_per_connection_are_capped(ssh_gw: SshGateway) -> None:
    conn, _ = await _connect(ssh_gw, "carol", SSH_USERS["carol"], ssh_gw.gw.code("carol"))
    async with conn:
        before = _last_id(ssh_gw)
        open_ones = []
        for _ in range(8):  # max_channels_per_connection in this gateway
            _reader, writer = await conn.open_connection("wiki", 143)
            open_ones.append(writer)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("wiki", 143)
        await _refused(ssh_gw, "too_many_channels", before)
        for writer in open_ones:
            writer.close()


async def test_a_backup_code_answers_the_code_prompt_once(ssh_gw: SshGateway) -> None:
    assert ssh_gw.gw.cli("session", "revoke", "--user", "dave").returncode == 0
    sheet = ssh_gw.gw.cli("backup-codes", "dave", "--json")
    assert sheet.returncode == 0, sheet.stderr
    code = json.loads(sheet.stdout)["codes"][0]
    conn, client = await _connect(ssh_gw, "dave", SSH_USERS["dave"], code)
    conn.close()
    assert client.prompts == ["Password: ", "One-time code: "]
    auth = [e for e in _events(ssh_gw, "auth") if e.get("user") == "dave" and e["door"] == "ssh"]
    assert auth[-1]["result"] == "ok" and auth[-1]["factor"] == "password+backup"
    assert ssh_gw.gw.cli("session", "revoke", "--user", "dave").returncode == 0
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(ssh_gw, "dave", SSH_USERS["dave"], code)
