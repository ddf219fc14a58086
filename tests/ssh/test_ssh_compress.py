"""COMPRESS=DEFLATE inside the SSH tunnel: the same relay, reached through `ssh -L`."""

from __future__ import annotations

import socket

from roamgate.demo.dovecot import free_port
from tests.gateway.test_imap_compress import Client
from tests.ssh.conftest import SSH_USERS, SshGateway


def test_compress_deflate_works_inside_the_ssh_tunnel(ssh_gw: SshGateway) -> None:
    local = free_port()
    code = ssh_gw.gw.code("bob")
    with ssh_gw.openssh_tunnel("bob", SSH_USERS["bob"], code, f"127.0.0.1:{local}:imap:143"):
        client = Client(socket.create_connection(("127.0.0.1", local), timeout=30))
        assert client.line().startswith(b"* OK")
        login = client.command(b'LOGIN bob "%s"' % SSH_USERS["bob"].encode())[-1]
        assert b"COMPRESS=DEFLATE" in login.split(b"]")[0].split(), login
        assert client.command(b"COMPRESS DEFLATE") == [b"t2 OK DEFLATE active\r\n"]
        client.compress()
        assert client.command(b"EXAMINE INBOX")[-1].startswith(b"t3 OK")
        fetched = client.command(b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert fetched[-1].startswith(b"t4 OK") and b"via ssh" in fetched[0]
        assert client.command(b"LOGOUT")[0].startswith(b"* BYE")
        client.until_closed()
    # Leave no travel window behind: other tests expect bob to be asked for a code.
    assert ssh_gw.gw.cli("session", "revoke", "--user", "bob").returncode == 0


def test_inside_a_compressed_tunnel_compress_is_neither_offered_nor_accepted(
    ssh_gw: SshGateway,
) -> None:
    local = free_port()
    code = ssh_gw.gw.code("bob")
    tunnel = ssh_gw.openssh_tunnel(
        "bob", SSH_USERS["bob"], code, f"127.0.0.1:{local}:imap:143", extra=("-C",)
    )
    with tunnel:
        client = Client(socket.create_connection(("127.0.0.1", local), timeout=30))
        assert client.line().startswith(b"* OK")
        login = client.command(b'LOGIN bob "%s"' % SSH_USERS["bob"].encode())[-1]
        assert b"OK" in login and b"COMPRESS=DEFLATE" not in login, login
        caps = client.command(b"CAPABILITY")
        assert b"IMAP4rev1" in caps[0] and b"COMPRESS" not in caps[0], caps
        assert client.command(b"COMPRESS DEFLATE")[-1].startswith(b"t3 BAD")
        assert client.command(b"LOGOUT")[0].startswith(b"* BYE")
    assert ssh_gw.gw.cli("session", "revoke", "--user", "bob").returncode == 0
