"""The directory behind a real gateway: slapd decides, Dovecot serves (master login), imaplib logs in."""

from __future__ import annotations

import imaplib
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roamgate.demo.dovecot import PrivateDovecot
from tests.conftest import run_cli
from tests.gateway.conftest import Gateway, init_gateway, start_serve, stop_serve, wait_for_port
from tests.ldap.conftest import MEMBERS_GROUP, PASSWORDS, ldap_yaml
from tests.ldap.slapd import PEOPLE, SERVICE_PW, PrivateSlapd

pytestmark = pytest.mark.peer

MASTER, MASTER_PASSWORD = "roamgate-master", "master pass 41"
SYNC_SECONDS = 2  # how soon a user who left the group is shut out (the sync interval)
SESSION_CHECK_SECONDS = 1


class DirectoryGateway(Gateway):
    sync_report: dict[str, object]

    def login_as(self, user: str, password: str | None = None) -> imaplib.IMAP4_SSL:
        client = self.imaps()
        pw = PASSWORDS[user] if password is None else password
        client.login(user, pw + self.code(user))
        return client

    def events(self, kind: str, user: str | None = None) -> list[dict[str, object]]:
        return [
            e for e in self.audit() if e["kind"] == kind and (user is None or e["user"] == user)
        ]


@pytest.fixture(scope="module")
def gw(slapd: PrivateSlapd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectoryGateway]:
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot-ldap")) as server:
        for user in ("alice", "bob", "carol", "erin"):
            server.add_user(user, f"{user}'s mail-server password, unknown to the gateway")
        server.add_master_user(MASTER, MASTER_PASSWORD)
        d = tmp_path_factory.mktemp("ldap-gw") / "gw"
        d.parent.mkdir(parents=True, exist_ok=True)
        master_file, service_file = d.parent / "master.pw", d.parent / "ldap.pw"
        for path, secret in ((master_file, MASTER_PASSWORD), (service_file, SERVICE_PW)):
            path.write_text(secret + "\n")
            path.chmod(0o600)
        config, imaps_port, imap_port = init_gateway(
            server,
            d,
            proxy_settings={
                "upstream_login": "master",
                "master_user": MASTER,
                "master_password_file": str(master_file),
                "session_check_seconds": SESSION_CHECK_SECONDS,
            },
        )
        text = config.read_text().replace("password_verifier: upstream", "password_verifier: ldap")
        config.write_text(text + ldap_yaml(slapd, service_file, sync_seconds=SYNC_SECONDS))
        r = run_cli("check-config", "-c", str(config))
        assert r.returncode == 0, r.stdout + r.stderr
        # carol is added by hand although she is not in the group: the sync disables her.
        assert run_cli("user", "add", "carol", "-c", str(config)).returncode == 0
        r = run_cli("user", "sync", "--json", "-c", str(config))
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        secrets: dict[str, str] = {}
        for user in ("alice", "bob", "carol", "erin"):
            r = run_cli("token", "enroll", user, "--type", "hotp", "--json", "-c", str(config))
            assert r.returncode == 0, r.stderr
            secrets[user] = json.loads(r.stdout)["secret"]
        log_file = d / "serve.log"
        process = start_serve(config, log_file)
        try:
            wait_for_port(imaps_port, process, log_file)
            gateway = DirectoryGateway(
                d, config, server, imaps_port, imap_port, log_file, process,
                secrets, dict.fromkeys(secrets, 0),
            )  # fmt: skip
            gateway.sync_report = report
            yield gateway
        finally:
            stop_serve(process)


def test_sync_creates_group_members_and_disables_the_rest(gw: DirectoryGateway) -> None:
    report = gw.sync_report
    # dave is in the group but disabled in the directory: never created.
    assert sorted(report["created"]) == ["alice", "bob", "erin"]  # type: ignore[call-overload]
    assert report["disabled"] == {"carol": "not_in_group"}
    users = {u["user"]: u for u in json.loads(gw.cli("user", "list", "--json").stdout)}
    assert users["bob"]["profile"] == "phs"  # travellers -> phs
    assert users["alice"]["email"] == "alice@example.test"
    assert not users["carol"]["enabled"]
    r = gw.cli("callback", "list", "alice", "--json")
    assert [c["address"] for c in json.loads(r.stdout)["callbacks"]] == ["+15550100"]
    disables = gw.events("user_disable", "carol")
    assert disables[-1]["actor"] == "directory-sync" and disables[-1]["reason"] == "not_in_group"
    shown = gw.cli("user", "directory", "alice")
    assert shown.returncode == 0, shown.stderr
    assert "may use the gateway" in shown.stdout and "CN=Alice Example" in shown.stdout


def test_doctor_checks_the_directory(gw: DirectoryGateway) -> None:
    r = gw.cli("doctor")
    line = next(x for x in r.stdout.splitlines() if "directory:" in x)
    assert line.startswith("OK") and "certificate verified, service bind ok" in line, r.stdout


def test_directory_password_and_code_open_the_mailbox(gw: DirectoryGateway) -> None:
    client = gw.login_as("alice")
    assert client.select("INBOX")[0] == "OK"
    client.logout()
    ok = gw.events("auth", "alice")[-1]
    assert ok["result"] == "ok" and ok["detail"]["verifier"] == "ldap"  # type: ignore[index]


def test_a_nested_group_member_logs_in(gw: DirectoryGateway) -> None:
    client = gw.login_as("bob")
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def _refused(gw: DirectoryGateway, user: str, password: str) -> dict[str, object]:
    client = gw.imaps()
    try:
        with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED|UNAVAILABLE"):
            # Quoted by hand: imaplib leaves a name like *)(uid=* bare, which IMAP refuses.
            client.login(f'"{user}"', password)
    finally:
        client.shutdown()
    return [e for e in gw.audit() if e["kind"] == "auth" and e["user"] == user][-1]


def test_wrong_directory_password_and_outsiders_are_refused(gw: DirectoryGateway) -> None:
    assert _refused(gw, "alice", "wrong" + gw.code("alice"))["reason"] == "bad_password"
    # carol is outside the group: the sync disabled her, the door refuses her.
    assert _refused(gw, "carol", PASSWORDS["carol"] + gw.code("carol"))["reason"] == "disabled"
    # dave is disabled in the directory: no gateway user was made.
    assert _refused(gw, "dave", PASSWORDS["dave"] + "123456")["reason"] == "unknown_user"


def test_an_empty_password_never_binds(gw: DirectoryGateway, slapd: PrivateSlapd) -> None:
    dn = f"uid=alice,{PEOPLE}"
    before = slapd.binds(dn)
    event = _refused(gw, "alice", "")  # LOGIN alice ""
    assert event["result"] == "fail" and event["reason"] == "bad_password"
    assert slapd.binds(dn) == before


def test_filter_syntax_in_the_user_name_is_refused(gw: DirectoryGateway) -> None:
    event = _refused(gw, "*)(uid=*", PASSWORDS["alice"] + "123456")
    assert event["reason"] == "unknown_user"


def _revoked_close(gw: DirectoryGateway, user: str, door: str | None = None) -> bool:
    """Whether a session_close with reason revoked for the user (at that door) shows."""
    return bool(
        gw.wait_for_audit(
            lambda e: (
                e["kind"] == "session_close"
                and e["user"] == user
                and e["reason"] == "revoked"
                and door in (None, e["door"])
            )
        )
    )


def test_leaving_the_group_ends_the_live_session_within_the_sync_interval(
    gw: DirectoryGateway, slapd: PrivateSlapd
) -> None:
    client = gw.login_as("erin")
    assert client.select("INBOX")[0] == "OK"
    slapd.modify(
        f"dn: {MEMBERS_GROUP}\nchangetype: modify\ndelete: member\nmember: uid=erin,{PEOPLE}\n"
    )
    started = time.monotonic()
    limit = SYNC_SECONDS + SESSION_CHECK_SECONDS + 8  # a sync round, a session check, slack
    try:
        with pytest.raises((imaplib.IMAP4.abort, OSError, ssl.SSLError)):
            while time.monotonic() - started < limit:
                client.noop()
                time.sleep(0.2)
    finally:
        client.shutdown()
    took = time.monotonic() - started
    assert took < limit
    disable = gw.events("user_disable", "erin")[-1]
    assert disable["actor"] == "directory-sync" and disable["reason"] == "not_in_group"
    assert _revoked_close(gw, "erin"), gw.events("session_close", "erin")
    assert _refused(gw, "erin", PASSWORDS["erin"] + gw.code("erin"))["reason"] == "disabled"


def _enabled(gw: DirectoryGateway) -> dict[str, bool]:
    return {u["user"]: u["enabled"] for u in json.loads(gw.cli("user", "list", "--json").stdout)}


def test_back_in_the_group_is_enabled_again_but_an_admin_disable_stays(
    gw: DirectoryGateway, slapd: PrivateSlapd
) -> None:
    assert not _enabled(gw)["erin"]
    slapd.modify(
        f"dn: {MEMBERS_GROUP}\nchangetype: modify\nadd: member\nmember: uid=erin,{PEOPLE}\n"
    )
    assert gw.cli("user", "disable", "bob").returncode == 0  # an admin's decision
    deadline = time.monotonic() + SYNC_SECONDS + 8
    while time.monotonic() < deadline and not _enabled(gw)["erin"]:
        time.sleep(0.3)
    enable = gw.events("user_enable", "erin")
    assert enable and enable[-1]["actor"] == "directory-sync"
    assert enable[-1]["reason"] == "back_in_directory"
    time.sleep(SYNC_SECONDS + 1)  # at least one more round
    assert not _enabled(gw)["bob"]
    assert not gw.events("user_enable", "bob")
    assert gw.cli("user", "enable", "bob").returncode == 0
    client = gw.login_as("erin")
    client.logout()


def test_directory_down_fails_closed_and_doctor_says_why(
    gw: DirectoryGateway, slapd: PrivateSlapd
) -> None:
    slapd.stop()
    try:
        client = gw.imaps()
        try:
            with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
                client.login("alice", PASSWORDS["alice"] + gw.code("alice"))
        finally:
            client.shutdown()
        event = gw.events("auth", "alice")[-1]
        assert event["result"] == "error" and event["reason"] == "verifier_unavailable"
        assert event["detail"] == {"verifier": "ldap", "cause": "directory_unreachable"}
        r = gw.cli("doctor")
        line = next(x for x in r.stdout.splitlines() if "directory:" in x)
        assert r.returncode == 2 and line.startswith("FAIL") and "unreachable" in line, r.stdout
        assert "is the directory up" in line
        # The periodic sync changed nothing and said so once.
        deadline = time.monotonic() + SYNC_SECONDS + 5
        while time.monotonic() < deadline and not [
            e for e in gw.events("directory_sync") if e["result"] == "error"
        ]:
            time.sleep(0.2)
        errors = [e for e in gw.events("directory_sync") if e["result"] == "error"]
        assert errors and errors[-1]["reason"] == "directory_unreachable"
        users = {u["user"]: u for u in json.loads(gw.cli("user", "list", "--json").stdout)}
        assert users["alice"]["enabled"] and users["bob"]["enabled"]
    finally:
        slapd.start()
    client = gw.login_as("alice")
    client.logout()


def test_no_password_reaches_logs_or_audit(gw: DirectoryGateway, slapd: PrivateSlapd) -> None:
    text = gw.logs() + (gw.dir / "audit.jsonl").read_text()
    for secret in [*PASSWORDS.values(), SERVICE_PW, MASTER_PASSWORD]:
        assert secret not in text
    for code in gw.handed_out:
        assert f'"{code}"' not in text
    assert Path(gw.config).read_text().count(SERVICE_PW) == 0


def test_leaving_the_group_ends_a_live_ssh_session_too(
    gw: DirectoryGateway, slapd: PrivateSlapd, tmp_path: Path
) -> None:
    """OpenSSH with the directory password and a code; out of the group, the connection ends."""
    from roamgate.config import load_config
    from roamgate.demo.dovecot import free_port
    from tests.ssh.conftest import ASKPASS, Mailbox, SshGateway

    listener = load_config(gw.config).listeners.ssh
    assert listener is not None
    gw.ssh_port = listener.port
    (tmp_path / "askpass").write_text(ASKPASS)
    (tmp_path / "askpass").chmod(0o755)
    key = (gw.dir / "ssh_host_ed25519_key.pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{gw.ssh_port} {key[0]} {key[1]}\n")
    door = SshGateway(gw, Mailbox(), 0, known_hosts, tmp_path)
    local = free_port()
    member = f"dn: {MEMBERS_GROUP}\nchangetype: modify\n%s: member\nmember: uid=alice,{PEOPLE}\n"
    try:
        with door.openssh_tunnel(
            "alice", PASSWORDS["alice"], gw.code("alice"), f"127.0.0.1:{local}:imap:143"
        ) as (proc, answers):
            assert proc.poll() is None, (answers / "ssh.log").read_text()
            slapd.modify(member % "delete")
            # The sync disables alice, the door's session check ends the connection.
            proc.wait(timeout=SYNC_SECONDS + SESSION_CHECK_SECONDS + 10)
        logins = [e for e in gw.events("auth", "alice") if e["door"] == "ssh"]
        assert logins and logins[-1]["result"] == "ok"
        assert logins[-1]["detail"]["verifier"] == "ldap"  # type: ignore[index]
        assert gw.events("user_disable", "alice")[-1]["actor"] == "directory-sync"
        assert _revoked_close(gw, "alice", "ssh"), gw.events("session_close", "alice")
    finally:
        slapd.modify(member % "add")
        deadline = time.monotonic() + SYNC_SECONDS + 8
        while time.monotonic() < deadline and not _enabled(gw)["alice"]:
            time.sleep(0.3)
    assert _enabled(gw)["alice"]
