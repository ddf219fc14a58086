"""The submission spool: memory for small messages, disk for large ones, a cap on all the disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from roamgate.gateway.submission_spool import DiskBudget, Spool


def _spool(tmp_path: Path, disk: DiskBudget, *, disk_limit: int = 10_000) -> Spool:
    return Spool(
        memory_bytes=1_000, directory=tmp_path, limit=8_000, disk=disk, disk_limit=disk_limit
    )


def test_spools_share_one_disk_budget_and_give_it_back(tmp_path: Path) -> None:
    disk = DiskBudget()
    small = _spool(tmp_path, disk)
    small.write(b"x" * 900)
    assert disk.used == 0 and not small.on_disk  # in memory: no disk counted
    first = _spool(tmp_path, disk)
    for _ in range(6):
        first.write(b"a" * 1_000)
    assert first.on_disk and disk.used == 6_000
    second = _spool(tmp_path, disk)
    for _ in range(4):
        second.write(b"b" * 1_000)
    assert disk.used == 10_000
    second.write(b"b")  # one byte past spool_max_bytes: the message is kept no more
    assert second.no_space and not second.overflow and disk.used == 6_000
    second.write(b"b" * 10)  # what follows is read and dropped
    assert disk.used == 6_000 and list(second.chunks()) == []
    second.close()
    first.close()
    small.close()
    assert disk.used == 0
    # A message over its own limit frees its disk at once, with its own refusal.
    big = _spool(tmp_path, disk)
    big.write(b"c" * 5_000)
    big.write(b"c" * 5_000)
    assert big.overflow and not big.no_space and disk.used == 0
    big.close()
    assert disk.used == 0


def test_no_memory_means_disk_from_the_first_byte(tmp_path: Path) -> None:
    disk = DiskBudget()
    spool = Spool(memory_bytes=0, directory=tmp_path, limit=8_000, disk=disk, disk_limit=10_000)
    spool.write(b"x" * 10)
    assert spool.on_disk and disk.used == 10
    spool.close()
    spool.close()  # twice: nothing given back twice
    assert disk.used == 0


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from roamgate.gateway.submission_spool import DiskBudget, Spool
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
disk = DiskBudget()
spool = Spool(memory_bytes=1_000, directory=Path(sys.argv[1]), limit=1 << 20, disk=disk,
              disk_limit=1 << 20)
for _ in range(10):
    spool.write(b"z" * 4_000)
spool.seal()
print(spool.no_space, spool.size, disk.used)
spool.close()
print(disk.used)
"""


def test_a_full_disk_refuses_the_message_instead_of_failing(tmp_path: Path) -> None:
    # A real write error from the kernel (the file-size limit stands in for a full disk).
    r = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    no_space, size, used = first.split()
    assert no_space == "True" and int(size) > 0 and used == "0", r.stdout
    assert second == "0"
