"""deploy/: the shipped HAProxy config, node configs, systemd unit and Containerfile are valid."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_program, run_cli

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
REPO = DEPLOY.parent


def test_the_ha_haproxy_config_passes_haproxy_check() -> None:
    haproxy = require_program("haproxy")
    r = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "ha" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = (DEPLOY / "ha" / "haproxy.cfg").read_text()
    assert "send-proxy-v2" in text and "check-send-proxy" in text


@pytest.mark.parametrize("node", ["node-a", "node-b"])
def test_the_ha_node_configs_pass_check_config(node: str, tmp_path: Path) -> None:
    # The keys and certificates the config names are what `roamgate init` makes.
    r = run_cli("init", "--dir", str(tmp_path), "--upstream-imap", "mail.corp.example:993")
    assert r.returncode == 0, r.stderr
    config = tmp_path / f"{node}.yaml"
    shutil.copy(DEPLOY / "ha" / f"{node}.yaml", config)
    r = run_cli("check-config", "-c", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "store: postgresql://roamgate@10.0.1.20" in r.stdout


def test_the_nodes_share_database_and_key_and_trust_only_the_balancer() -> None:
    a = (DEPLOY / "ha" / "node-a.yaml").read_text()
    b = (DEPLOY / "ha" / "node-b.yaml").read_text()
    differing = [(x, y) for x, y in zip(a.splitlines(), b.splitlines(), strict=True) if x != y]
    # Only the node's name and listen addresses differ.
    assert all("10.0.1.1" in x and "10.0.1.1" in y for x, y in differing), differing
    assert a.count("proxy_protocol: true") == 3
    balancer = re.search(
        r"inside address (\d+\.\d+\.\d+\.\d+)", (DEPLOY / "ha" / "haproxy.cfg").read_text()
    )
    assert balancer is not None and f"- {balancer.group(1)}/32" in a


def _unit_copy(tmp_path: Path) -> Path:
    # verify wants ExecStart= binaries that exist: point them at this checkout's roamgate.
    roamgate = shutil.which("roamgate") or str(Path(REPO / ".venv" / "bin" / "roamgate"))
    text = (DEPLOY / "systemd" / "roamgate.service").read_text()
    unit = tmp_path / "roamgate.service"
    unit.write_text(text.replace("/opt/roamgate/bin/roamgate", roamgate))
    return unit


def test_the_systemd_unit_verifies_and_is_rated_ok(tmp_path: Path) -> None:
    analyze = require_program("systemd-analyze")
    unit = _unit_copy(tmp_path)
    r = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for roamgate\.service: (\d+\.\d+)", r.stdout)
    assert match is not None, r.stdout + r.stderr
    print(f"systemd-analyze security: exposure {match.group(1)}")
    assert float(match.group(1)) <= 2.0


def test_the_unit_keeps_to_one_capability() -> None:
    text = (DEPLOY / "systemd" / "roamgate.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert settings["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert settings["User"] == "roamgate"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert settings[key] == "yes", key
    assert settings["ProtectSystem"] == "strict"
    assert settings["ReadWritePaths"] == "/var/lib/roamgate"


def test_the_containerfile_copies_existing_paths_and_runs_as_non_root() -> None:
    # No container engine here: the file cannot be built in CI, so check what can be checked.
    text = (DEPLOY / "Containerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and not users[-1].startswith(("root", "0"))
