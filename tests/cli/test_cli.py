"""The roamgate command line, run as a separate process with oathtool as the independent token."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_program, run_cli


def _cfg(d: Path) -> list[str]:
    return ["-c", str(d / "roamgate.yaml")]


def _oathtool(*args: str) -> str:
    exe = require_program("oathtool")
    return subprocess.run([exe, *args], capture_output=True, text=True, check=True).stdout.strip()


def _no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout


def test_init_writes_a_working_gateway(tmp_path: Path) -> None:
    d = tmp_path / "gw"
    r = run_cli(
        "init",
        "--dir",
        str(d),
        "--upstream-imap",
        "mail.example.com:993",
        "--hostname",
        "gw.example.com",
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"CA fingerprint \(SHA-256\): ([0-9A-F]{2}:){31}[0-9A-F]{2}", r.stdout)
    assert len(re.findall(r"SHA256:[A-Za-z0-9+/]{43}  ssh_host_(ed25519|rsa)_key", r.stdout)) == 2
    for private in (
        "secret.key",
        "tls/ca.key",
        "tls/server.key",
        "ssh_host_ed25519_key",
        "roamgate.db",
    ):
        assert stat.S_IMODE((d / private).stat().st_mode) == 0o600, private
    text = (d / "roamgate.yaml").read_text()
    assert 'host: "127.0.0.1"' in text and "tls: implicit" in text
    ok = run_cli("check-config", *_cfg(d))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    again = run_cli("init", "--dir", str(d), "--upstream-imap", "mail.example.com:993")
    assert again.returncode == 1
    assert again.stderr.startswith(f"roamgate: {d} already holds a gateway")
    assert again.stderr.strip().endswith("use --force to replace it")
    old_key = (d / "secret.key").read_bytes()
    forced = run_cli("init", "--dir", str(d), "--upstream-imap", "mail.example.com:993", "--force")
    assert forced.returncode == 0 and (d / "secret.key").read_bytes() != old_key


def test_init_writes_the_submission_doors_with_an_upstream_smtp(tmp_path: Path) -> None:
    plain = tmp_path / "imap-only"
    assert (
        run_cli("init", "--dir", str(plain), "--upstream-imap", "mail.example.com:993").returncode
        == 0
    )
    assert "submission:" not in (plain / "roamgate.yaml").read_text()
    d = tmp_path / "gw"
    r = run_cli(
        "init", "--dir", str(d), "--upstream-imap", "mail.example.com:993",
        "--upstream-smtp", "mail.example.com:465",
        "--submission-port", "10465", "--submission-starttls-port", "10587",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ok = run_cli("check-config", *_cfg(d))
    assert ok.returncode == 0, ok.stderr
    assert "submissions 127.0.0.1:10465, submission 127.0.0.1:10587" in ok.stdout
    text = (d / "roamgate.yaml").read_text()
    assert "upstream_login: passthrough" in text and "max_recipients: 50" in text
    defaults = tmp_path / "defaults"
    r = run_cli(
        "init", "--dir", str(defaults), "--upstream-imap", "mail.example.com:993",
        "--upstream-smtp", "mail.example.com:587",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    listed = run_cli("check-config", *_cfg(defaults)).stdout
    assert "submissions 127.0.0.1:465, submission 127.0.0.1:587" in listed


def test_server_certificate_verifies_against_the_ca(gateway_dir: Path) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(gateway_dir / "tls/ca.pem"))
    ctx.load_cert_chain(gateway_dir / "tls/server.pem", gateway_dir / "tls/server.key")
    out = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(gateway_dir / "tls/ca.pem"),
            str(gateway_dir / "tls/server.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and ": OK" in out.stdout
    sans = subprocess.run(
        [
            "openssl",
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            str(gateway_dir / "tls/server.pem"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:localhost" in sans and "IP Address:127.0.0.1" in sans


@pytest.mark.peer
def test_enroll_then_an_oathtool_code_verifies_once(gateway_dir: Path) -> None:
    c = _cfg(gateway_dir)
    assert run_cli("user", "add", "alice", *c).returncode == 0
    r = run_cli("token", "enroll", "alice", "--type", "totp", "--json", *c)
    assert r.returncode == 0, r.stderr
    enrolled = json.loads(r.stdout)
    assert set(enrolled) == {"user", "token_id", "type", "secret", "uri"}
    assert (enrolled["user"], enrolled["type"]) == ("alice", "totp")
    assert enrolled["uri"].startswith("otpauth://totp/") and enrolled["secret"] in enrolled["uri"]
    code = _oathtool("--totp", "-b", enrolled["secret"])
    first = run_cli("token", "check", "alice", code, *c)
    assert first.returncode == 0 and first.stdout.startswith("ok:"), first.stdout
    second = run_cli("token", "check", "alice", code, *c)
    assert second.returncode == 1 and second.stdout.startswith("already used:"), second.stdout
    skewed = _oathtool("--totp", "-b", "-N", "now + 5 minutes", enrolled["secret"])
    late = run_cli("token", "check", "alice", skewed, *c)
    assert late.returncode == 1
    # 10 steps ahead, or 9 when a 30 s step began between oathtool and the check.
    assert late.stdout.startswith("clock: ")
    assert re.search(r"\b(10 steps \(300 s\)|9 steps \(270 s\)) ahead", late.stdout), late.stdout
    audit = run_cli("audit", "--user", "alice", "--json", *c)
    events = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [(e["kind"], e["result"], e["reason"]) for e in events] == [
        ("user_add", "ok", None),
        ("enroll", "ok", None),
        ("token_check", "ok", None),
        ("token_check", "fail", "replay"),
        ("token_check", "fail", "clock_skew"),
    ]
    # The secret went to the operator's terminal once and nowhere else.
    for place in (audit.stdout, (gateway_dir / "audit.jsonl").read_text()):
        assert enrolled["secret"] not in place and code not in place
    plain = run_cli("token", "enroll", "alice", *c)
    assert "The secret is shown this once" in plain.stdout and "\u2588" in plain.stdout  # QR


@pytest.mark.peer
def test_hotp_look_ahead_and_resync_with_oathtool(gateway_dir: Path) -> None:
    c = _cfg(gateway_dir)
    run_cli("user", "add", "bob", *c)
    secret = json.loads(run_cli("token", "enroll", "bob", "--type", "hotp", "--json", *c).stdout)[
        "secret"
    ]
    assert (
        run_cli(
            "token", "check", "bob", _oathtool("--hotp", "-b", "-c", "3", secret), *c
        ).returncode
        == 0
    )
    assert run_cli(
        "token", "check", "bob", _oathtool("--hotp", "-b", "-c", "2", secret), *c
    ).stdout.startswith("already used:")
    far = run_cli("token", "check", "bob", _oathtool("--hotp", "-b", "-c", "60", secret), *c)
    assert far.stdout.startswith("wrong:")
    a, b = (_oathtool("--hotp", "-b", "-c", str(n), secret) for n in (100, 101))
    r = run_cli("token", "resync", "bob", a, b, *c)
    assert r.returncode == 0 and "resynchronised" in r.stdout
    assert (
        run_cli(
            "token", "check", "bob", _oathtool("--hotp", "-b", "-c", "102", secret), *c
        ).returncode
        == 0
    )


def test_backup_codes_sheet_and_single_use(gateway_dir: Path) -> None:
    c = _cfg(gateway_dir)
    run_cli("user", "add", "carol", *c)
    sheet = run_cli("backup-codes", "carol", *c)
    codes = re.findall(r"\d{5}-\d{5}", sheet.stdout)
    assert len(codes) == 10 and "works once" in sheet.stdout
    assert run_cli("token", "check", "carol", codes[0], *c).stdout.startswith("ok:")
    again = run_cli("token", "check", "carol", codes[0], *c)
    assert again.stdout.startswith("already used: this backup code")
    made_up = run_cli("token", "check", "carol", "1234567890", *c)
    assert made_up.stdout.startswith("wrong: not an unused backup code")
    assert codes[0] not in (gateway_dir / "audit.jsonl").read_text()
    listing = json.loads(run_cli("user", "list", "--json", *c).stdout)
    assert listing[0]["user"] == "carol" and listing[0]["backup_codes_left"] == 9


def test_user_lifecycle_is_audited(gateway_dir: Path) -> None:
    c = _cfg(gateway_dir)
    assert run_cli("user", "add", "dave", "--email", "dave@example.com", *c).returncode == 0
    dup = run_cli("user", "add", "dave", *c)
    assert dup.returncode == 1 and dup.stderr == "roamgate: user dave exists already\n"
    assert run_cli("user", "disable", "dave", *c).stdout == "user dave disabled\n"
    assert run_cli("token", "check", "dave", "123456", *c).stdout.startswith("disabled:")
    assert run_cli("user", "enable", "dave", *c).returncode == 0
    assert run_cli("user", "unlock", "dave", *c).stdout == "dave: was not locked\n"
    assert run_cli("user", "remove", "dave", *c).returncode == 0
    gone = run_cli("user", "remove", "dave", *c)
    assert gone.returncode == 1 and gone.stderr.startswith("roamgate: no such user: dave")
    kinds = [
        json.loads(x)["kind"]
        for x in run_cli("audit", "--json", "--since", "1h", *c).stdout.splitlines()
    ]
    assert kinds == ["user_add", "user_disable", "user_enable", "unlock", "user_remove"]
    bad = run_cli("user", "add", "bad name", *c)
    assert bad.returncode == 1 and "invalid user name" in bad.stderr


def test_user_set_profile_is_checked_and_audited(gateway_dir: Path) -> None:
    c = _cfg(gateway_dir)
    cfg = gateway_dir / "roamgate.yaml"
    cfg.write_text(cfg.read_text() + "profiles:\n  hotel:\n    text_budget: 2048\n")
    assert run_cli("user", "add", "gina", "--profile", "isdn", *c).returncode == 0
    r = run_cli("user", "set", "gina", "--profile", "phs", *c)
    assert (r.returncode, r.stdout) == (0, "user gina: profile phs (was isdn)\n"), r.stderr
    assert run_cli("user", "set", "gina", "--profile", "hotel", *c).returncode == 0  # own profile
    listing = json.loads(run_cli("user", "list", "--json", *c).stdout)
    assert [(u["user"], u["profile"]) for u in listing] == [("gina", "hotel")]
    assert "hotel" in run_cli("user", "list", *c).stdout.splitlines()[1].split()
    unknown = run_cli("user", "set", "gina", "--profile", "nosuch", *c)
    assert unknown.returncode == 1
    assert unknown.stderr == (
        "roamgate: no such profile: nosuch (configured: hotel, isdn, lan, pda, phs);"
        " nothing was changed\n"
    )
    bad_add = run_cli("user", "add", "hank", "--profile", "nosuch", *c)
    assert bad_add.returncode == 1 and bad_add.stderr.startswith("roamgate: no such profile:")
    nobody = run_cli("user", "set", "nobody", "--profile", "phs", *c)
    assert nobody.returncode == 1 and nobody.stderr.startswith("roamgate: no such user: nobody")
    bare = run_cli("user", "set", "gina", *c)
    assert bare.returncode == 2 and "--profile" in bare.stderr
    assert len(bare.stderr.splitlines()) == 1
    for r in (unknown, bad_add, nobody, bare):
        _no_traceback(r)
    events = [
        json.loads(x) for x in run_cli("audit", "--json", "--since", "1h", *c).stdout.splitlines()
    ]
    sets = [(e["kind"], e["user"], e["detail"]) for e in events if e["kind"] == "user_set"]
    assert sets == [
        ("user_set", "gina", {"profile": "phs"}),
        ("user_set", "gina", {"profile": "hotel"}),
    ]
    after = json.loads(run_cli("user", "list", "--json", *c).stdout)
    assert [u["user"] for u in after] == ["gina"]  # hank was not added


def test_a_failing_check_config_names_file_line_and_key(gateway_dir: Path) -> None:
    p = gateway_dir / "roamgate.yaml"
    p.write_text(p.read_text().replace("port: 2022", "port: abc"))
    r = run_cli("check-config", "-c", str(p))
    assert r.returncode == 2
    assert r.stderr == f"{p}:14 listeners.ssh.port: expected an integer 1-65535, got 'abc'\n"
    _no_traceback(r)


@pytest.mark.parametrize(
    ("file", "config_line", "expected"),
    [
        (
            "ssh_host_rsa_key",
            "    - ssh_host_rsa_key",
            "ssh.host_key_files[1]: not a valid SSH private key",
        ),
        (
            "tls/server.key",
            "  key_file: tls/server.key",
            "tls.key_file: the certificate and key do not match",
        ),
        ("tls/server.pem", "  cert_file: tls/server.pem", "tls.cert_file: not a PEM certificate"),
    ],
)
def test_check_config_and_serve_name_an_unusable_key_file(
    gateway_dir: Path, file: str, config_line: str, expected: str
) -> None:
    damaged = gateway_dir / file
    if file == "tls/server.key":
        damaged.write_bytes((gateway_dir / "tls/ca.key").read_bytes())  # the CA's key by mistake
    else:
        damaged.write_text("-----BEGIN GARBAGE-----\nc2VjcmV0\n")
    cfg = gateway_dir / "roamgate.yaml"
    line = cfg.read_text().splitlines().index(config_line) + 1
    for command in ("check-config", "serve"):
        r = run_cli(command, *_cfg(gateway_dir))
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert r.stderr == f"{cfg}:{line} {expected}\n", command
        assert "OK" not in r.stdout and "c2VjcmV0" not in r.stderr
        _no_traceback(r)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("yaml", "YAML syntax error"),
        ("key-dir", "cannot read secret file"),
        ("key-mode", "is readable by group or others (mode 0644); run: chmod 600"),
        ("key-garbage", "secrets.key (file"),
        ("db-corrupt", "the file is corrupt or is not a roamgate database"),
        ("db-missing", "database not found"),
    ],
)
def test_bad_input_gives_one_clear_line(gateway_dir: Path, damage: str, expected: str) -> None:
    cfg = gateway_dir / "roamgate.yaml"
    key = gateway_dir / "secret.key"
    db = gateway_dir / "roamgate.db"
    if damage == "yaml":
        cfg.write_text(cfg.read_text().replace("listeners:", "listeners: [", 1))
    elif damage == "key-dir":
        key.unlink()
        key.mkdir()
    elif damage == "key-mode":
        key.chmod(0o644)
    elif damage == "key-garbage":
        key.write_text("not base64!\n")
    elif damage == "db-corrupt":
        db.write_bytes(b"this is not a database" * 1000)
    elif damage == "db-missing":
        db.unlink()
    r = run_cli("user", "list", *_cfg(gateway_dir))
    assert r.returncode in (1, 2)
    assert expected in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    _no_traceback(r)


def test_locked_database_is_reported(gateway_dir: Path) -> None:
    holder = sqlite3.connect(gateway_dir / "roamgate.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        r = run_cli("user", "add", "erin", *_cfg(gateway_dir))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.returncode == 1
    assert "locked by another process" in r.stderr and len(r.stderr.splitlines()) == 1
    _no_traceback(r)


def test_usage_errors_and_debug(gateway_dir: Path, tmp_path: Path) -> None:
    wrong = run_cli("token", "enroll", "alice", "--tpye", "totp", *_cfg(gateway_dir))
    assert wrong.returncode == 2
    assert wrong.stderr.splitlines() == [
        "roamgate: error: unrecognized arguments: --tpye totp (see 'roamgate --help')"
    ]
    unknown = run_cli("token", "check", "nobody", "123456", *_cfg(gateway_dir))
    assert unknown.returncode == 1 and unknown.stderr.startswith("roamgate: no such user: nobody")
    missing = run_cli("user", "list", "-c", str(tmp_path / "nope.yaml"))
    assert (
        missing.returncode == 2
        and missing.stderr == f"{tmp_path / 'nope.yaml'}:0: file not found\n"
    )
    (gateway_dir / "secret.key").chmod(0o644)
    debug = run_cli("--debug", "user", "list", *_cfg(gateway_dir))
    assert "Traceback" in debug.stderr and debug.returncode == 1
    bad_port = run_cli("init", "--dir", str(tmp_path / "x"), "--upstream-imap", "host:99999")
    assert bad_port.returncode == 2 and "expected HOST:PORT" in bad_port.stderr
    assert not (tmp_path / "x").exists()


def test_serve_names_the_listener_whose_port_is_taken(gateway_dir: Path) -> None:
    import socket

    import yaml

    from roamgate.demo.dovecot import free_port

    path = gateway_dir / "roamgate.yaml"
    text = path.read_text()
    # The template's fixed ports would collide with other xdist workers: fresh ones for all.
    for listener in yaml.safe_load(text)["listeners"].values():
        if isinstance(listener, dict) and "port" in listener:
            text = text.replace(f"port: {listener['port']}\n", f"port: {free_port()}\n", 1)
    path.write_text(text)
    port = int(yaml.safe_load(text)["listeners"]["imaps"]["port"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        r = run_cli("serve", *_cfg(gateway_dir))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"roamgate: listeners.imaps: cannot listen on 127.0.0.1:{port}:" in r.stderr
    assert "address already in use" in r.stderr.lower() and "internal error" not in r.stderr
    _no_traceback(r)
