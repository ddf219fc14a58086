"""Many concurrent large messages cost the gateway disk, not memory (spool files, flat RSS)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tests.submission.conftest import SUB_USERS, SubmissionGateway, message

CLIENTS = 6
MESSAGE_BYTES = 4_000_000


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _spool_files(pid: int, spool_dir: Path) -> int:
    """Open files in the spool directory (unnamed O_TMPFILE ones show as DIR/#N)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(f"{spool_dir}/"):
                count += 1
        except OSError:
            continue  # closed meanwhile
    return count


def test_concurrent_large_messages_are_spooled_to_disk(sub_gw: SubmissionGateway) -> None:
    pid = sub_gw.gw.process.pid
    # One login with a code opens carol's travel window; the concurrent ones need no code
    # (HOTP codes used out of order would burn each other).
    with sub_gw.login("carol") as client:
        client.noop()
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    body = line * (MESSAGE_BYTES // len(line))
    errors: list[BaseException] = []
    done: list[int] = []

    def send(n: int) -> None:
        try:
            head = message("carol@example.com", "x@example.com", f"large {n}", f"large-{n}")
            with sub_gw.smtps() as client:
                client.login("carol", SUB_USERS["carol"])
                client.sendmail("carol@example.com", ["x@example.com"], head + body)
            done.append(n)
        except Exception as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)

    hwm_before = _status_kib(pid, "VmHWM")
    threads = [threading.Thread(target=send, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    most_spool_files = 0
    deadline = time.monotonic() + 240
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        most_spool_files = max(most_spool_files, _spool_files(pid, sub_gw.spool_dir))
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not errors, errors
    assert sorted(done) == list(range(CLIENTS))
    grown_kib = _status_kib(pid, "VmHWM") - hwm_before
    total_kib = CLIENTS * MESSAGE_BYTES // 1024
    print(
        f"{CLIENTS} x {MESSAGE_BYTES} bytes: peak RSS grew {grown_kib} KiB"
        f" (messages: {total_kib} KiB); at most {most_spool_files} spool files open at once"
    )
    assert most_spool_files >= 2, "large messages were not spooled to disk"
    assert grown_kib < total_kib // 2
    for n in range(CLIENTS):
        delivered = sub_gw.postfix.wait_for(f"large-{n}".encode(), timeout=60)
        assert delivered.count(line.rstrip(b"\r\n")) == MESSAGE_BYTES // len(line)
