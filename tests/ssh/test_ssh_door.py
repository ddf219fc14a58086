"""The SSH door with the OpenSSH client: password and code, then IMAP and SMTP through the tunnel."""

from __future__ import annotations

import imaplib
import json
import re
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

from roamgate.demo.dovecot import free_port
from tests.ssh.conftest import SSH_USERS, SshGateway


def _events(ssh: SshGateway, kind: str, user: str, since: int = 0) -> list[dict[str, object]]:
    """Audit events of one kind for one user from line `since` on, with their detail merged in.

    The gateway is shared by the package's modules (and their order differs under xdist), so
    a test looks only at the lines written after it began.
    """
    out = []
    for e in ssh.gw.audit()[since:]:
        if e["kind"] == kind and e.get("user") == user:
            detail = e.get("detail")
            out.append({**e, **(detail if isinstance(detail, dict) else {})})
    return out


def _prompts(answers: Path) -> list[str]:
    """The prompts askpass was shown, without the "(user@host) " OpenSSH puts before them."""
    return [re.sub(r"^\(\S+@\S+\) ", "", p) for p in (answers / "prompts").read_text().splitlines()]


def _wait_for(predicate: object, timeout: float = 15) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_openssh_tunnel_with_password_and_code_then_imap_with_the_password_alone(
    ssh_gw: SshGateway,
) -> None:
    start = len(ssh_gw.gw.audit())
    local = free_port()
    code = ssh_gw.gw.code("bob")
    with ssh_gw.openssh_tunnel("bob", SSH_USERS["bob"], code, f"127.0.0.1:{local}:imap:143") as (
        _proc,
        answers,
    ):
        # The prompts are exactly these, so that scripts and askpass helpers can answer them.
        assert _prompts(answers) == ["Password: ", "One-time code: "]
        client = imaplib.IMAP4("127.0.0.1", local, timeout=30)
        # The tunnel is encrypted already: LOGIN is offered, STARTTLS is not.
        assert "STARTTLS" not in client.capabilities and "AUTH=PLAIN" in client.capabilities
        assert client.login("bob", SSH_USERS["bob"])[0] == "OK"  # no new code in the tunnel
        status, _data = client.select("INBOX", readonly=True)
        assert status == "OK"
        status, parts = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        first = parts[0]
        assert isinstance(first, tuple) and b"via ssh" in first[1]
        client.logout()

    # The tunnelled IMAP session closes first; the SSH session's record and both forwards'
    # (the readiness probe's and the session's) come when ssh exits, in no fixed order.
    def ssh_closes() -> list[dict[str, object]]:
        return [e for e in _events(ssh_gw, "session_close", "bob", start) if e["door"] == "ssh"]

    _wait_for(lambda: ssh_closes() and len(_events(ssh_gw, "forward_close", "bob", start)) >= 2)
    auth = _events(ssh_gw, "auth", "bob", start)
    assert [(e["result"], e["door"], e["factor"]) for e in auth][:1] == [
        ("ok", "ssh", "password+hotp")
    ]
    assert any(e["door"] == "ssh-imap" and e["factor"] == "password+ssh" for e in auth)
    opened = _events(ssh_gw, "forward_open", "bob", start)
    assert opened and all(e["service"] == "imap" and e["asked"] == "imap:143" for e in opened)
    # One forward was the readiness probe (connect, close); the other carried the session.
    closed = max(
        _events(ssh_gw, "forward_close", "bob", start), key=lambda e: int(str(e["bytes_in"]))
    )
    assert int(str(closed["bytes_in"])) > 20 and int(str(closed["bytes_out"])) > 100
    assert int(str(ssh_closes()[-1]["bytes_out"])) >= int(str(closed["bytes_out"]))


def test_submission_forward_reaches_the_corporate_smtp_server(ssh_gw: SshGateway) -> None:
    local = free_port()
    code = ssh_gw.gw.code("carol")
    with ssh_gw.openssh_tunnel(
        "carol", SSH_USERS["carol"], code, f"127.0.0.1:{local}:submission:587"
    ):
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "carol@example.com", "x@example.com", "sent"
        msg.set_content("from the road")
        with smtplib.SMTP("127.0.0.1", local, timeout=30) as smtp:
            smtp.send_message(msg)
    assert any(
        m[0] == "carol@example.com" and b"from the road" in m[2] for m in ssh_gw.smtp.messages
    )
    opened = _events(ssh_gw, "forward_open", "carol")
    assert opened and opened[-1]["target"] == f"127.0.0.1:{ssh_gw.smtp_port}"


def test_within_the_travel_window_the_password_alone_is_asked(ssh_gw: SshGateway) -> None:
    start = len(ssh_gw.gw.audit())
    local = free_port()
    code = ssh_gw.gw.code("dave")
    with ssh_gw.openssh_tunnel("dave", SSH_USERS["dave"], code, f"127.0.0.1:{local}:imap:143"):
        pass
    with ssh_gw.openssh_tunnel(
        "dave", SSH_USERS["dave"], "000000", f"127.0.0.1:{local}:imap:143"
    ) as (
        _proc,
        answers,
    ):
        assert _prompts(answers) == ["Password: "]
        client = imaplib.IMAP4("127.0.0.1", local, timeout=30)
        assert client.login("dave", SSH_USERS["dave"])[0] == "OK"
        client.logout()
    factors = [e["factor"] for e in _events(ssh_gw, "auth", "dave", start) if e["door"] == "ssh"]
    assert factors[:2] == ["password+hotp", "password+window"]
    # Outside the window (revoked) the code is asked again.
    assert ssh_gw.gw.cli("session", "revoke", "--user", "dave").returncode == 0
    with ssh_gw.openssh_tunnel(
        "dave", SSH_USERS["dave"], ssh_gw.gw.code("dave"), f"127.0.0.1:{local}:imap:143"
    ) as (_proc, answers):
        assert _prompts(answers) == ["Password: ", "One-time code: "]


def test_revoking_the_session_ends_the_ssh_connection(ssh_gw: SshGateway) -> None:
    start = len(ssh_gw.gw.audit())
    local = free_port()
    code = ssh_gw.gw.code("erin")
    with ssh_gw.openssh_tunnel("erin", SSH_USERS["erin"], code, f"127.0.0.1:{local}:imap:143") as (
        proc,
        _answers,
    ):
        opened = [e for e in _events(ssh_gw, "session_open", "erin", start) if e["door"] == "ssh"]
        session_id = str(opened[-1]["session_id"])
        assert ssh_gw.gw.cli("session", "revoke", session_id).returncode == 0
        proc.wait(timeout=20)  # the gateway hung up within session_check_seconds
    _wait_for(
        lambda: any(
            e["reason"] == "revoked" for e in _events(ssh_gw, "session_close", "erin", start)
        )
    )


def test_too_many_answers_on_one_connection_end_it(ssh_gw: SshGateway) -> None:
    before = len(_events(ssh_gw, "auth", "carol"))
    answers = ssh_gw.askpass_dir("wrong password", "123456")
    env = {
        "PATH": "/usr/bin:/bin",
        "SSH_ASKPASS": str(ssh_gw.tmp / "askpass"),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": ":0",
        "ROAMGATE_ASKPASS_DIR": str(answers),
    }
    cmd = ssh_gw.ssh_command("carol", extra=("-o", "NumberOfPasswordPrompts=20"))
    out = subprocess.run(
        ["setsid", *cmd], stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=60
    )
    assert out.returncode != 0
    prompts = _prompts(answers)
    assert prompts.count("Password: ") == 6  # the 7th attempt is never offered
    fails = _events(ssh_gw, "auth", "carol")[before:]
    assert len(fails) == 6 and all(e["result"] == "fail" for e in fails)
    closed = [e for e in ssh_gw.gw.audit() if e["kind"] == "connection_closed"]
    assert closed and closed[-1]["reason"] == "too_many_auth_failures"
    assert b"wrong password" not in out.stdout + out.stderr


def test_ssh_audit_finds_no_failures(ssh_gw: SshGateway) -> None:
    ssh_audit = Path(sys.executable).parent / "ssh-audit"
    out = subprocess.run(
        [str(ssh_audit), "-j", "-n", "--skip-rate-test", "-p", str(ssh_gw.port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # ssh-audit: 0 good, 2 warnings only, 3 failures.
    report = json.loads(out.stdout)
    failures = [
        (section, a["algorithm"], a["notes"]["fail"])
        for section in ("kex", "key", "enc", "mac")
        for a in report.get(section, [])
        if a.get("notes", {}).get("fail")
    ]
    assert failures == [] and out.returncode in (0, 2), (out.returncode, failures)
    assert report.get("cves") == []
    # What remains are warnings that curve25519 and DH are not post-quantum; the hybrid
    # mlkem768x25519 is offered first, for clients that have it (OpenSSH >= 9.9).
    warned = {a["algorithm"] for a in report.get("kex", []) if a.get("notes", {}).get("warn")}
    assert "mlkem768x25519-sha256" not in warned
    offered = [a["algorithm"] for a in report["kex"]]
    assert offered[0] == "mlkem768x25519-sha256"
    assert {a["algorithm"] for a in report["key"]} == {
        "ssh-ed25519",
        "rsa-sha2-512",
        "rsa-sha2-256",
    }
