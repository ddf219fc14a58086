"""The verified-password cache in a running gateway: a second login skips scrypt, and a change
made by another process (`roamgate user passwd`, `disable`/`enable`) takes effect at once."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from roamgate.demo.dovecot import PrivateDovecot
from tests.conftest import run_cli
from tests.gateway.conftest import Gateway, init_gateway, start_serve, stop_serve, wait_for_port

USER = "kenji"
UPSTREAM_PASSWORD = "kenji's mail-server password"
FIRST, SECOND = "kenji's first gateway password", "kenji's second gateway password"
MASTER, MASTER_PASSWORD = "roamgate-master", "master pass 47"


@pytest.fixture(scope="module")
def cache_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # Master-user mode upstream, so the gateway's own (local) password can change freely.
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot-cache")) as server:
        server.add_user(USER, UPSTREAM_PASSWORD)
        server.add_master_user(MASTER, MASTER_PASSWORD)
        d = tmp_path_factory.mktemp("cache") / "gw"
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
            replace={
                "password_verifier: upstream": "password_verifier: local",
                "travel_window_seconds: 43200": "travel_window_seconds: 0",
            },
        )
        assert "password_cache_seconds: 900" in config.read_text()  # what init writes
        r = run_cli("user", "add", USER, "--password-stdin", "-c", str(config), stdin=FIRST + "\n")
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


def _login(gw: Gateway, password: str) -> bool:
    client = gw.imaps()
    try:
        ok = client.login(USER, password + gw.code(USER))[0] == "OK"
    except client.error:
        client.shutdown()
        return False
    client.logout()
    return ok


def _auth_events(gw: Gateway) -> list[tuple[object, object, object]]:
    events = [e for e in gw.audit() if e["kind"] == "auth"]
    out = []
    for e in events:
        detail = e["detail"]
        assert isinstance(detail, dict)
        out.append((e["result"], e["reason"], detail.get("password_cache")))
    return out


def test_cache_hits_and_changes_from_another_process(cache_gw: Gateway) -> None:
    assert _login(cache_gw, FIRST)
    assert _login(cache_gw, FIRST)
    assert _login(cache_gw, FIRST)
    miss, hit = ("ok", None, "miss"), ("ok", None, "hit")
    assert _auth_events(cache_gw)[-3:] == [miss, hit, hit]
    # A new password set by the CLI (another process): the old one is refused at once.
    config = str(cache_gw.config)
    r = run_cli("user", "passwd", USER, "--password-stdin", "-c", config, stdin=SECOND + "\n")
    assert r.returncode == 0, r.stderr
    assert not _login(cache_gw, FIRST)
    assert _auth_events(cache_gw)[-1] == ("fail", "bad_password", None)
    assert _login(cache_gw, SECOND)
    assert _login(cache_gw, SECOND)
    assert _auth_events(cache_gw)[-2:] == [miss, hit]
    # Disabled, then enabled again by the CLI: refused, then a full check once more.
    assert cache_gw.cli("user", "disable", USER).returncode == 0
    assert not _login(cache_gw, SECOND)
    assert _auth_events(cache_gw)[-1] == ("fail", "disabled", None)
    assert cache_gw.cli("user", "enable", USER).returncode == 0
    assert _login(cache_gw, SECOND)
    assert _auth_events(cache_gw)[-1] == miss
    logs = cache_gw.logs() + (cache_gw.dir / "audit.jsonl").read_text()
    for secret in (FIRST, SECOND, MASTER_PASSWORD):
        assert secret not in logs
