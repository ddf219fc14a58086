"""`roamgate invite`, `invites` and `device issue|list|revoke`, run as an operator would."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.conftest import run_cli


def cli(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "-c", str(d / "roamgate.yaml"))


def test_invite_prints_a_one_time_link_and_stores_only_its_hash(gateway_dir: Path) -> None:
    assert cli(gateway_dir, "user", "add", "alice").returncode == 0
    r = cli(gateway_dir, "invite", "alice", "--expires-hours", "5")
    assert r.returncode == 0, r.stderr
    link = r.stdout.splitlines()[1]
    token = link.rsplit("/", 1)[1]
    assert link.startswith("https://localhost:9443/invite/") and len(token) >= 40
    assert token.encode() not in (gateway_dir / "roamgate.db").read_bytes()
    trail = (gateway_dir / "audit.jsonl").read_text()
    assert "invite_create" in trail and token not in trail
    listed = json.loads(cli(gateway_dir, "invites", "--json").stdout)
    assert [(i["user"], i["state"]) for i in listed] == [("alice", "open")]
    r = cli(gateway_dir, "invites", "--cancel", listed[0]["invite_id"])
    assert r.returncode == 0, r.stderr
    assert json.loads(cli(gateway_dir, "invites", "--json").stdout) == []
    again = cli(gateway_dir, "invites", "--cancel", listed[0]["invite_id"])
    assert again.returncode == 1 and "no open invite" in again.stderr


def test_invite_refuses_unknown_users_and_long_lifetimes(gateway_dir: Path) -> None:
    r = cli(gateway_dir, "invite", "nobody")
    assert r.returncode == 1 and "no such user" in r.stderr
    assert cli(gateway_dir, "user", "add", "bob").returncode == 0
    r = cli(gateway_dir, "invite", "bob", "--expires-hours", "1000")
    assert r.returncode == 1 and "720" in r.stderr


def test_device_issue_list_revoke_and_the_crl(gateway_dir: Path) -> None:
    assert cli(gateway_dir, "user", "add", "carol").returncode == 0
    out = gateway_dir / "carol.p12"
    r = cli(gateway_dir, "device", "issue", "carol", "--name", "work phone", "--out", str(out))
    assert r.returncode == 0, r.stderr
    passphrase = r.stdout.split("(shown once): ", 1)[1].strip()
    _key, cert, _chain = pkcs12.load_key_and_certificates(out.read_bytes(), passphrase.encode())
    assert cert is not None and (out.stat().st_mode & 0o077) == 0
    assert passphrase not in (gateway_dir / "audit.jsonl").read_text()
    devices = json.loads(cli(gateway_dir, "device", "list", "--json").stdout)
    assert [(d["user"], d["name"]) for d in devices] == [("carol", "work phone")]
    r = cli(gateway_dir, "device", "revoke", devices[0]["device_id"])
    assert r.returncode == 0, r.stderr
    crl = x509.load_pem_x509_crl((gateway_dir / "tls" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert cli(gateway_dir, "device", "revoke", devices[0]["device_id"]).returncode == 1
    assert json.loads(cli(gateway_dir, "device", "list", "--json").stdout) == []
    # Disabling a user revokes every certificate they still have.
    r = cli(gateway_dir, "device", "issue", "carol", "--name", "laptop", "--out", str(out) + "2")
    assert r.returncode == 0, r.stderr
    assert cli(gateway_dir, "user", "disable", "carol").returncode == 0
    assert json.loads(cli(gateway_dir, "device", "list", "carol", "--json").stdout) == []
    crl = x509.load_pem_x509_crl((gateway_dir / "tls" / "crl.pem").read_bytes())
    assert len(list(crl)) == 2


def test_check_config_names_what_the_web_door_needs(gateway_dir: Path) -> None:
    config = gateway_dir / "roamgate.yaml"
    text = config.read_text().replace("  ca_key_file: tls/ca.key\n", "")
    config.write_text(text + '\nweb:\n  base_url: "http://gw.example.com"\n')
    r = run_cli("check-config", "-c", str(config))
    assert r.returncode == 2
    assert "tls.ca_key_file: the web door issues device certificates" in r.stderr
    assert "web.base_url: expected an https:// address" in r.stderr
