"""SIGTERM at the SSH door: the tunnelled IMAP client is told BYE, then OpenSSH is disconnected."""

from __future__ import annotations

import imaplib
import signal
from pathlib import Path

from roamgate.demo.dovecot import PrivateDovecot, free_port
from tests.conftest import require_program
from tests.gateway.conftest import running_gateway
from tests.ssh.conftest import ASKPASS, SSH_USERS, Mailbox, SshGateway


def test_sigterm_byes_the_tunnelled_session_then_disconnects_ssh(
    ssh_dovecot: PrivateDovecot, tmp_path: Path
) -> None:
    require_program("ssh")
    (tmp_path / "askpass").write_text(ASKPASS)
    (tmp_path / "askpass").chmod(0o755)
    with running_gateway(
        ssh_dovecot,
        tmp_path / "gw",
        users={"bob": SSH_USERS["bob"]},
        replace={"keepalive_seconds: 30": "keepalive_seconds: 30\n  failure_delay_ms: 100"},
    ) as gw:
        pub = (gw.dir / "ssh_host_ed25519_key.pub").read_text().split()
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{gw.ssh_port} {pub[0]} {pub[1]}\n")
        ssh_gw = SshGateway(gw, Mailbox(), 0, known_hosts, tmp_path)
        local = free_port()
        code = gw.code("bob")
        with ssh_gw.openssh_tunnel(
            "bob", SSH_USERS["bob"], code, f"127.0.0.1:{local}:imap:143"
        ) as (ssh, _answers):
            client = imaplib.IMAP4("127.0.0.1", local, timeout=30)
            try:
                client.login("bob", SSH_USERS["bob"])
                assert client.select("INBOX")[0] == "OK"
                gw.process.send_signal(signal.SIGTERM)
                assert client.readline() == b"* BYE roamgate: server shutting down\r\n"
            finally:
                client.shutdown()
            assert ssh.wait(30) is not None  # the SSH connection was closed by the gateway
            assert gw.process.wait(40) == 0
        stop = [e for e in gw.audit() if e["kind"] == "serve_stop"][-1]
        detail = stop["detail"]
        assert isinstance(detail, dict)
        assert detail["signal"] == "SIGTERM"
        assert detail["ssh_closed"] == 1 and detail["ssh_cut"] == 0
        assert detail["sessions_drained"] == 1
        closes = [e for e in gw.audit() if e["kind"] == "session_close" and e["door"] == "ssh"]
        assert [e["reason"] for e in closes] == ["server_shutdown"]
