"""`roamgate init --store URL` and a PostgreSQL store seen from the CLI: no password ever shown."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from roamgate.demo.postgres import PrivatePostgres
from roamgate.store.sqlite import load_migrations
from tests.conftest import run_cli


def _init(d: Path, store: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "init", "--dir", str(d), "--upstream-imap", "127.0.0.1:1", "--upstream-tls", "none",
        "--store", store,
    )  # fmt: skip


def _no_secret(r: subprocess.CompletedProcess[str], password: str) -> None:
    assert password not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_init_with_a_postgres_url_keeps_the_password_out_of_the_config(
    tmp_path: Path, postgres: PrivatePostgres, pg_database: str
) -> None:
    d = tmp_path / "gw"
    r = _init(d, pg_database)
    assert r.returncode == 0, r.stderr
    _no_secret(r, postgres.password)
    config = (d / "roamgate.yaml").read_text()
    assert postgres.password not in config
    assert pg_database.replace(f":{postgres.password}", "") in config
    assert "password_file: store.password" in config
    pw_file = d / "store.password"
    assert pw_file.read_text().strip() == postgres.password
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    assert not (d / "roamgate.db").exists()
    ok = run_cli("check-config", "-c", str(d / "roamgate.yaml"))
    assert ok.returncode == 0, ok.stderr
    shown = pg_database.replace(f":{postgres.password}", "")
    assert f"store: {shown} (PostgreSQL)" in ok.stdout
    _no_secret(ok, postgres.password)
    # doctor reaches the database with the password from store.password_file.
    doctor = run_cli("doctor", "-c", str(d / "roamgate.yaml"))
    latest = max(v for v, _n, _s in load_migrations("postgres"))
    assert f"OK   store: {shown}: reachable, schema version {latest}" in doctor.stdout, (
        doctor.stdout
    )
    _no_secret(doctor, postgres.password)
    assert run_cli("user", "add", "alice", "-c", str(d / "roamgate.yaml")).returncode == 0
    # A second `init` on the same database would make a new key that cannot open its tokens.
    again = _init(tmp_path / "gw2", pg_database)
    assert again.returncode == 1
    assert "already holds a gateway's users" in again.stderr
    assert "copy the first node's directory" in again.stderr
    _no_secret(again, postgres.password)
    assert not (tmp_path / "gw2" / "roamgate.yaml").exists()


def test_the_password_may_come_from_the_environment(
    tmp_path: Path, postgres: PrivatePostgres, pg_database: str
) -> None:
    d = tmp_path / "gw"
    bare = pg_database.replace(f":{postgres.password}", "")
    assert _init(d, bare).returncode == 1  # no password: the server refuses, init writes nothing
    assert not (d / "roamgate.yaml").exists()
    assert _init(d, pg_database).returncode == 0
    cfg = d / "roamgate.yaml"
    cfg.write_text(
        cfg.read_text().replace("password_file: store.password", "password_env: RG_DB_PW")
    )
    (d / "store.password").unlink()
    env = {**os.environ, "RG_DB_PW": postgres.password}
    r = subprocess.run(
        [sys.executable, "-m", "roamgate", "user", "add", "bob", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    env["RG_DB_PW"] = "not-the-password"
    r = subprocess.run(
        [sys.executable, "-m", "roamgate", "user", "list", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.startswith("roamgate: cannot use the database at postgresql://roamgate@")
    assert "password authentication failed" in r.stderr and len(r.stderr.splitlines()) == 1
    _no_secret(r, "not-the-password")
    r = subprocess.run(
        [sys.executable, "-m", "roamgate", "doctor", "-c", str(cfg)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    [line] = [ln for ln in r.stdout.splitlines() if " store: " in ln]
    assert line.startswith("FAIL") and "password authentication failed" in line
    _no_secret(r, "not-the-password")


def test_an_unreachable_or_malformed_store_is_one_clear_line(
    tmp_path: Path, postgres: PrivatePostgres, pg_database: str
) -> None:
    d = tmp_path / "gw"
    assert _init(d, pg_database).returncode == 0
    cfg = d / "roamgate.yaml"
    good = cfg.read_text()
    cfg.write_text(good.replace(f"127.0.0.1:{postgres.port}/", "127.0.0.1:1/"))
    for args in (["serve"], ["user", "list"], ["token", "list"]):
        r = run_cli(*args, "-c", str(cfg))
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("roamgate: cannot reach the database at postgresql://"), r.stderr
        assert "connection refused" in r.stderr and len(r.stderr.splitlines()) == 1
        _no_secret(r, postgres.password)
    doctor = run_cli("doctor", "-c", str(cfg))
    [store_line] = [ln for ln in doctor.stdout.splitlines() if " store: " in ln]
    assert store_line.startswith("FAIL") and "connection refused" in store_line, store_line
    _no_secret(doctor, postgres.password)
    # A URL with its password inline (allowed, though the file is better) is never echoed.
    inline = good.replace("password_file: store.password", "").replace(
        "postgresql://roamgate@", "postgresql://roamgate:inline-secret@"
    )
    cfg.write_text(inline.replace(f"127.0.0.1:{postgres.port}/", "127.0.0.1:bad/"))
    r = run_cli("check-config", "-c", str(cfg))
    line = next(i for i, t in enumerate(inline.splitlines(), 1) if "url: " in t and "postgres" in t)
    assert r.returncode == 2
    assert r.stderr == (
        f"{cfg}:{line} store.url: is not a valid PostgreSQL URL (the port must be a number):"
        " postgresql://roamgate:***@127.0.0.1:bad/" + pg_database.rsplit("/", 1)[1] + "\n"
    )
    cfg.write_text(inline.replace("postgresql://", "mysql://"))
    r = run_cli("serve", "-c", str(cfg))
    assert r.returncode == 2 and "store.url: unsupported scheme 'mysql'" in r.stderr
    _no_secret(r, "inline-secret")
