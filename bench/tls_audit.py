"""testssl.sh against the TLS doors of a real `roamgate serve` (IMAPS and IMAP+STARTTLS).

Prints the findings per severity and every one above LOW. The suite runs a targeted scan
(tests/gateway/test_tls_audit.py); this runs testssl's full default scan, which takes longer:

    python -m bench.tls_audit [--targeted]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from roamgate.demo.dovecot import PrivateDovecot


def main() -> int:
    from tests.gateway.conftest import running_gateway
    from tests.gateway.test_tls_audit import TARGETED, run_testssl

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targeted", action="store_true", help="the suite's targeted scan")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, PrivateDovecot(Path(tmp) / "dovecot") as dovecot:
        dovecot.add_user("bob", "bob-pw")
        with running_gateway(dovecot, Path(tmp) / "gw", users={"bob": "bob-pw"}) as gw:
            for door, port, extra in (
                ("imaps", gw.imaps_port, ()),
                ("imap STARTTLS", gw.imap_port, ("--starttls", "imap")),
            ):
                began = time.monotonic()
                out = Path(tmp) / f"{port}.json"
                checks = TARGETED if args.targeted else ()
                findings = run_testssl(gw, port, out, *extra, checks=checks)
                counts: dict[str, int] = {}
                for f in findings:
                    counts[f["severity"]] = counts.get(f["severity"], 0) + 1
                took = time.monotonic() - began
                print(f"{door}: {len(findings)} findings in {took:.0f} s: {json.dumps(counts)}")
                for f in findings:
                    if f["severity"] in ("LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN"):
                        print(f"  {f['severity']:<8} {f['id']}: {f['finding']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
