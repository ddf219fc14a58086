"""testssl.sh, an independent scanner, against both TLS doors: IMAPS and IMAP with STARTTLS.

Judged by the JSON `severity` of each finding (testssl's exit code is not pass/fail): no HIGH or
CRITICAL finding. The run is targeted so that it ends in a few minutes: on IMAPS protocols, cipher categories,
server preferences, forward secrecy, the certificate and the vulnerability checks; on the
STARTTLS port (the same TLS context) protocols, cipher categories and forward secrecy.
bench/tls_audit.py runs testssl's full default scan on both and prints the summary.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_program
from tests.gateway.conftest import Gateway

TARGETED = (
    "--protocols",
    "--std",
    "--server-preference",
    "--fs",
    "--server-defaults",
    "--vulnerable",
)
# The STARTTLS port serves the same TLS context: protocols and cipher categories are enough there.
LIGHT = ("--protocols", "--std", "--fs")
BAD = {"HIGH", "CRITICAL"}
# No finding is accepted: the server certificate names the web door's CRL (/crl.der), which
# closed testssl's one HIGH (`cert_revocation`: neither CRL nor OCSP URI).
ACCEPTED: set[str] = set()


def run_testssl(
    gw: Gateway, port: int, out: Path, *extra: str, checks: tuple[str, ...] = TARGETED
) -> list[dict[str, str]]:
    """Run testssl.sh; return its findings (flat JSON)."""
    program = require_program("testssl")
    argv = [
        program, "--quiet", "--color", "0", "--warnings", "off", "--sneaky",
        "--connect-timeout", "10", "--openssl-timeout", "10",
        "--add-ca", str(gw.ca_file), "--jsonfile", str(out),
        *checks, *extra, f"127.0.0.1:{port}",
    ]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if not out.exists():
        pytest.fail(f"testssl wrote no report (exit {run.returncode}): {run.stdout[-2000:]}")
    findings: list[dict[str, str]] = json.loads(out.read_text())
    return findings


def _summary(findings: list[dict[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in findings:
        out[f["severity"]] = out.get(f["severity"], 0) + 1
    return out


@pytest.mark.peer
@pytest.mark.timeout(900)
@pytest.mark.parametrize("door", ["imaps", "imap-starttls"])
def test_testssl_finds_nothing_high_or_critical(
    gateway: Gateway, tmp_path: Path, door: str
) -> None:
    if door == "imaps":
        findings = run_testssl(gateway, gateway.imaps_port, tmp_path / "imaps.json")
    else:
        findings = run_testssl(
            gateway, gateway.imap_port, tmp_path / "imap.json", "--starttls", "imap", checks=LIGHT
        )
    bad = [
        (f["id"], f["severity"], f["finding"])
        for f in findings
        if f["severity"] in BAD and f["id"] not in ACCEPTED
    ]
    print(door, _summary(findings))
    assert bad == [], bad
    by_id = {f["id"]: f for f in findings}
    # What the door promises: TLS 1.2 and 1.3 only, forward secrecy, no known weakness.
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert by_id[old]["finding"].startswith("not offered"), by_id[old]
    assert by_id["TLS1_2"]["finding"].startswith("offered")
    assert by_id["TLS1_3"]["finding"].startswith("offered")
