"""Two `roamgate serve` nodes on one PostgreSQL: one config and key, only the ports differ."""

from __future__ import annotations

import contextlib
import imaplib
import json
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roamgate.config import load_config
from roamgate.demo.dovecot import PrivateDovecot, free_port
from roamgate.demo.postgres import PrivatePostgres
from tests.conftest import run_cli
from tests.gateway.conftest import (
    PASSWORDS,
    Gateway,
    init_gateway,
    start_serve,
    stop_serve,
    wait_for_port,
)

USERS = ("bob", "carol", "erin")
FAILED = "AUTHENTICATIONFAILED"


def _copy_node(source: Path, target: Path) -> Path:
    """The second node: a copy of the first's directory, with ports of its own."""
    shutil.copytree(source, target)
    config = target / "roamgate.yaml"
    text = config.read_text()
    listeners = load_config(config).listeners
    for listener in (listeners.ssh, listeners.imaps, listeners.imap, listeners.web):
        if listener is not None:
            old, new = f"    port: {listener.port}\n", f"    port: {free_port()}\n"
            assert text.count(old) == 1, old
            text = text.replace(old, new)
    config.write_text(text)
    (target / "audit.jsonl").unlink(missing_ok=True)
    (target / "serve.log").unlink(missing_ok=True)
    return config


@contextlib.contextmanager
def _node(
    dovecot: PrivateDovecot, config: Path, secrets: dict[str, str], counters: dict[str, int]
) -> Iterator[Gateway]:
    cfg = load_config(config)
    assert cfg.listeners.imaps is not None and cfg.listeners.imap is not None
    log_file = config.parent / "serve.log"
    process = start_serve(config, log_file)
    try:
        for listener in (cfg.listeners.imaps, cfg.listeners.imap):
            wait_for_port(listener.port, process, log_file)
        yield Gateway(
            config.parent, config, dovecot, cfg.listeners.imaps.port, cfg.listeners.imap.port,
            log_file, process, secrets, counters,
        )  # fmt: skip
    finally:
        stop_serve(process)


@pytest.fixture(scope="module")
def nodes(
    dovecot: PrivateDovecot, postgres: PrivatePostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    name = postgres.create_database()
    base = tmp_path_factory.mktemp("two_nodes")
    config_a, _imaps, _imap = init_gateway(
        dovecot,
        base / "a",
        # No travel window: each login here needs its code, which is what is under test.
        # A lock after 3 failures keeps the lock test short.
        replace={
            "travel_window_seconds: 43200": "travel_window_seconds: 0",
            "user_threshold: 10": "user_threshold: 3",
        },
        extra_init=("--store", postgres.url(name)),
    )
    secrets: dict[str, str] = {}
    for user in USERS:
        assert run_cli("user", "add", user, "-c", str(config_a)).returncode == 0
        r = run_cli("token", "enroll", user, "--type", "hotp", "--json", "-c", str(config_a))
        assert r.returncode == 0, r.stderr
        secrets[user] = json.loads(r.stdout)["secret"]
    config_b = _copy_node(base / "a", base / "b")
    counters = dict.fromkeys(secrets, 0)
    try:
        with (
            _node(dovecot, config_a, secrets, counters) as a,
            _node(dovecot, config_b, secrets, counters) as b,
        ):
            assert a.imaps_port != b.imaps_port
            yield a, b
    finally:
        postgres.sql(f"DROP DATABASE {name} WITH (FORCE)")


def _auth_reasons(node: Gateway, user: str) -> list[object]:
    return [e.get("reason") for e in node.audit() if e["kind"] == "auth" and e["user"] == user]


def test_a_code_used_on_node_a_is_refused_on_node_b(nodes: tuple[Gateway, Gateway]) -> None:
    a, b = nodes
    code = a.code("bob")
    client = a.imaps()
    client.login("bob", PASSWORDS["bob"] + code)
    client.logout()
    late = b.imaps()
    with pytest.raises(imaplib.IMAP4.error, match=FAILED):
        late.login("bob", PASSWORDS["bob"] + code)
    late.shutdown()
    assert _auth_reasons(b, "bob")[-1] == "bad_code:replay"
    # The next code works on B, and B's use is seen by A.
    following = b.code("bob")
    client = b.imaps()
    client.login("bob", PASSWORDS["bob"] + following)
    client.logout()
    again = a.imaps()
    with pytest.raises(imaplib.IMAP4.error, match=FAILED):
        again.login("bob", PASSWORDS["bob"] + following)
    again.shutdown()
    assert _auth_reasons(a, "bob")[-1] == "bad_code:replay"


def test_a_session_revoked_through_the_cli_ends_on_the_node_that_holds_it(
    nodes: tuple[Gateway, Gateway],
) -> None:
    a, b = nodes
    client = b.login("erin")
    client.select("INBOX")
    listed = a.cli("session", "list", "--user", "erin", "--json")
    [session] = json.loads(listed.stdout)["sessions"]
    # The operator uses node A's config; the session lives on node B.
    r = a.cli("session", "revoke", session["id"])
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 15
    try:
        with pytest.raises((imaplib.IMAP4.abort, OSError, ssl.SSLError)):
            while time.monotonic() < deadline:
                client.noop()
                time.sleep(0.2)
    finally:
        client.shutdown()

    def closed_on_b() -> bool:
        return any(
            e["kind"] == "session_close" and e["reason"] == "revoked" and e["user"] == "erin"
            for e in b.audit()
        )

    # Node B writes session_close after the connection is gone: give it a moment.
    deadline = time.monotonic() + 15
    while not closed_on_b() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert closed_on_b()
    assert not any(e["kind"] == "session_close" and e["user"] == "erin" for e in a.audit())


def test_a_lock_set_on_one_node_is_honoured_by_the_other(nodes: tuple[Gateway, Gateway]) -> None:
    a, b = nodes
    for _ in range(3):
        client = a.imaps()
        with pytest.raises(imaplib.IMAP4.error, match=FAILED):
            client.login("carol", "not-carol's-password" + "123456")
        client.shutdown()
    assert any(e["kind"] == "lock" and e.get("user") == "carol" for e in a.audit())
    client = b.imaps()
    with pytest.raises(imaplib.IMAP4.error, match=FAILED):
        client.login("carol", PASSWORDS["carol"] + b.code("carol"))
    client.shutdown()
    assert _auth_reasons(b, "carol")[-1] == "user_locked"
    # Unlocked through node B's config, carol logs in on node A with a fresh code.
    assert b.cli("user", "unlock", "carol").returncode == 0
    a.counters["carol"] -= 1  # the locked attempt burnt no code
    client = a.login("carol")
    client.logout()


def test_neither_node_logs_or_audits_the_database_password(
    nodes: tuple[Gateway, Gateway], postgres: PrivatePostgres
) -> None:
    a, b = nodes
    for node in (a, b):
        assert postgres.password not in node.logs()
        assert postgres.password not in (node.dir / "audit.jsonl").read_text()
        assert postgres.password not in (node.dir / "roamgate.yaml").read_text()
