"""bench/login_rate.py runs end to end on a tiny scale: cold and warm logins, figures printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cold_and_warm_logins_all_succeed_and_print_their_figures() -> None:
    out = subprocess.run(
        [
            sys.executable, "-m", "bench.login_rate", "--logins", "6", "--clients", "2",
            "--scrypt-ln", "10", "--stores", "sqlite", "--nodes", "1", "--spares", "3",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(performance login mode) included; upstream_spares 3" in out.stdout
    runs = re.findall(
        r"sqlite +1 node +scrypt ln=10 (cold|warm): 6 logins .*failures (\d+);", out.stdout
    )
    assert runs == [("cold", "0"), ("warm", "0")], out.stdout
    capacities = re.findall(r"gateway alone (\d+) logins/s per core", out.stdout)
    assert len(capacities) == 2 and all(int(c) > 0 for c in capacities), out.stdout
