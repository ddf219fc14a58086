"""Link profiles through the SSH door: `carol#phs` as the IMAP login inside carol's tunnel."""

from __future__ import annotations

import imaplib
import time

import pytest

from roamgate.demo.dovecot import free_port
from tests.ssh.conftest import SSH_USERS, SshGateway


def _opens(ssh: SshGateway) -> list[dict[str, object]]:
    return [e for e in ssh.gw.audit() if e["kind"] == "session_open" and e["door"] == "ssh-imap"]


def test_a_profile_suffix_works_inside_the_tunnel(ssh_gw: SshGateway) -> None:
    local = free_port()
    code = ssh_gw.gw.code("carol")
    before = len(_opens(ssh_gw))
    with ssh_gw.openssh_tunnel("carol", SSH_USERS["carol"], code, f"127.0.0.1:{local}:imap:143"):
        client = imaplib.IMAP4("127.0.0.1", local, timeout=30)
        # Someone else's name with a good suffix: still not the tunnel's user.
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login("bob#phs", SSH_USERS["bob"])
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login("carol#nosuch", SSH_USERS["carol"])
        assert client.login("carol#phs", SSH_USERS["carol"])[0] == "OK"
        assert client.select("INBOX", readonly=True)[0] == "OK"
        deadline = time.monotonic() + 10
        while len(_opens(ssh_gw)) == before:
            assert time.monotonic() < deadline, "no session_open"
            time.sleep(0.05)
        client.logout()
    opened = _opens(ssh_gw)[-1]
    assert opened["user"] == "carol"
    detail = opened["detail"]
    assert isinstance(detail, dict)
    assert (detail["profile"], detail["profile_source"], detail["tunnel"]) == (
        "phs",
        "login",
        "ssh",
    )
    fails = [
        (e["user"], e["reason"])
        for e in ssh_gw.gw.audit()
        if e["kind"] == "auth" and e["door"] == "ssh-imap" and e["result"] == "fail"
    ]
    assert fails[-2:] == [("bob", "tunnel_user_mismatch"), ("carol", "unknown_profile")]
    # Leave no travel window behind for tests that expect carol to be asked for a code.
    assert ssh_gw.gw.cli("session", "revoke", "--user", "carol").returncode == 0
