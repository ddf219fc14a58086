"""The settings in clients/: what roamgate-connect renders, and what each real program reads."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from roamgate_connect.client_configs import RENDERERS
from roamgate_connect.profile import build, read_file
from tests.conftest import require_program

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
SHIPPED = {
    "profile": CLIENTS / "example-profile.yaml",
    "ssh-config": CLIENTS / "openssh" / "config",
    "mutt": CLIENTS / "mutt" / "muttrc",
    "thunderbird": CLIENTS / "thunderbird" / "config-v1.1.xml",
}
PROFILE = build(read_file(SHIPPED["profile"]), "example-profile.yaml")


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_the_shipped_files_are_what_the_connector_renders(kind: str) -> None:
    # Regenerate with: roamgate-connect --profile clients/example-profile.yaml --print KIND
    assert SHIPPED[kind].read_text() == RENDERERS[kind](PROFILE)


def test_openssh_reads_the_config_block_as_two_local_forwards() -> None:
    out = subprocess.run(
        [require_program("ssh"), "-G", "-F", str(SHIPPED["ssh-config"]), "roamgate"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    assert "hostname gw.example.com" in out and "port 2022" in out and "user alice" in out
    assert "localforward [127.0.0.1]:1143 [imap]:143" in out
    assert "localforward [127.0.0.1]:1587 [submission]:587" in out
    assert "stricthostkeychecking true" in out and "sessiontype none" in out
    assert "preferredauthentications keyboard-interactive" in out


def test_mutt_reads_the_local_ports(tmp_path: Path) -> None:
    out = subprocess.run(
        [require_program("mutt"), "-n", "-F", str(SHIPPED["mutt"]), "-Q", "folder", "-Q",
         "smtp_url", "-Q", "spoolfile"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
    ).stdout.splitlines()  # fmt: skip
    assert out[:2] == [
        'folder="imap://alice@127.0.0.1:1143/"',
        'smtp_url="smtp://alice@127.0.0.1:1587/"',
    ]
    assert out[2].endswith('INBOX"')


def test_thunderbird_autoconfig_names_both_local_servers() -> None:
    root = ET.parse(SHIPPED["thunderbird"]).getroot()  # noqa: S314 (our own file)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None
    incoming = provider.find("incomingServer")
    outgoing = provider.find("outgoingServer")
    assert incoming is not None and outgoing is not None
    assert incoming.get("type") == "imap" and outgoing.get("type") == "smtp"
    assert [incoming.findtext(t) for t in ("hostname", "port", "username")] == [
        "127.0.0.1",
        "1143",
        "alice",
    ]
    assert [outgoing.findtext(t) for t in ("hostname", "port")] == ["127.0.0.1", "1587"]
