"""Master-user mode: a local password + code at the gateway, a Dovecot master login upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from roamgate.demo.dovecot import PrivateDovecot
from tests.conftest import run_cli
from tests.gateway.conftest import Gateway, init_gateway, start_serve, stop_serve, wait_for_port

USER = "hana"
UPSTREAM_PASSWORD = "hana's mail-server password"  # never given to the gateway
GATEWAY_PASSWORD = "hana's gateway password"
MASTER, MASTER_PASSWORD = "roamgate-master", "master pass 31"


@pytest.fixture(scope="module")
def master_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot-master")) as server:
        server.add_user(USER, UPSTREAM_PASSWORD)
        server.add_master_user(MASTER, MASTER_PASSWORD)
        server.deliver(USER, b"From: a@example.com\r\nSubject: for hana\r\n\r\nhello\r\n")
        d = tmp_path_factory.mktemp("master") / "gw"
        d.parent.mkdir(parents=True, exist_ok=True)
        secret_file = d.parent / "master.pw"
        secret_file.write_text(MASTER_PASSWORD + "\n")
        secret_file.chmod(0o600)
        config, imaps_port, imap_port = init_gateway(
            server,
            d,
            proxy_settings={
                "upstream_login": "master",
                "master_user": MASTER,
                "master_password_file": str(secret_file),
            },
            replace={"password_verifier: upstream": "password_verifier: local"},
        )
        r = run_cli(
            "user",
            "add",
            USER,
            "--password-stdin",
            "-c",
            str(config),
            stdin=GATEWAY_PASSWORD + "\n",
        )
        assert r.returncode == 0, r.stderr
        r = run_cli("token", "enroll", USER, "--type", "hotp", "--json", "-c", str(config))
        secret = json.loads(r.stdout)["secret"]
        log_file = d / "serve.log"
        process = start_serve(config, log_file)
        try:
            wait_for_port(imaps_port, process, log_file)
            yield Gateway(
                d, config, server, imaps_port, imap_port, log_file, process,
                {USER: secret}, {USER: 0},
            )  # fmt: skip
        finally:
            stop_serve(process)


def test_local_password_and_code_open_the_mailbox_through_a_master_login(
    master_gw: Gateway,
) -> None:
    client = master_gw.imaps()
    assert client.login(USER, GATEWAY_PASSWORD + master_gw.code(USER))[0] == "OK"
    status, data = client.select("INBOX", readonly=True)
    assert status == "OK" and int(data[0] or 0) == 1
    status, parts = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    first = parts[0]
    assert status == "OK" and isinstance(first, tuple) and b"for hana" in first[1]
    client.logout()
    # The gateway never saw hana's upstream password: only the master login can have opened it.
    logins = [
        line
        for line in master_gw.dovecot.log_file.read_text(errors="replace").splitlines()
        if "Login:" in line and f"user=<{USER}>" in line
    ]
    assert logins, "Dovecot logged no login for the user"


def test_the_upstream_password_alone_is_not_the_gateway_password(master_gw: Gateway) -> None:
    client = master_gw.imaps()
    with pytest.raises(client.error, match="AUTHENTICATIONFAILED"):
        client.login(USER, UPSTREAM_PASSWORD + master_gw.code(USER))
    client.shutdown()
    fails = [e for e in master_gw.audit() if e["kind"] == "auth" and e["result"] == "fail"]
    assert fails and fails[-1]["reason"] == "bad_password"
    logs = master_gw.logs() + master_gw.dovecot.log_tail(500)
    assert MASTER_PASSWORD not in logs and GATEWAY_PASSWORD not in logs
