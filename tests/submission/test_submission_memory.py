"""Many concurrent large messages cost the gateway disk, not memory (spool files, flat RSS), and
never more disk than submission.spool_max_bytes."""

from __future__ import annotations

import os
import smtplib
import threading
import time
from pathlib import Path

import pytest

from tests.submission.conftest import SPOOL_MAX_BYTES, SUB_USERS, SubmissionGateway, message

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


def _spool_bytes(pid: int, spool_dir: Path) -> int:
    """Bytes in the gateway's open spool files."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(f"{spool_dir}/"):
                total += fd.stat().st_size
        except OSError:
            continue  # closed meanwhile
    return total


def test_a_full_spool_refuses_for_now_and_loses_nothing(sub_gw: SubmissionGateway) -> None:
    pid = sub_gw.gw.process.pid
    line = b"spool-budget-line-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789\r\n"
    held_body = line * (20_000_000 // len(line))  # two thirds of spool_max_bytes
    second_body = line * (12_000_000 // len(line))
    assert _spool_bytes(pid, sub_gw.spool_dir) == 0, "another test left a message spooled"
    head = message("carol@example.com", "x@example.com", "held", "held-spool-message")
    with sub_gw.login("carol") as held:
        # One message is in DATA, 20 MB of it on the gateway's disk, not yet ended.
        assert held.mail("carol@example.com")[0] == 250
        assert held.rcpt("x@example.com")[0] == 250
        held.putcmd("data")
        assert held.getreply()[0] == 354
        held.send(head + held_body)
        deadline = time.monotonic() + 60
        while _spool_bytes(pid, sub_gw.spool_dir) < len(held_body) - 65_536:  # less its buffer
            assert time.monotonic() < deadline, "the held message never reached the spool"
            time.sleep(0.05)
        with sub_gw.login("bob") as other:
            second = message("bob@example.com", "x@example.com", "second", "second-spool")
            # Announced with SIZE: refused at MAIL FROM, before a byte is sent.
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                other.sendmail("bob@example.com", ["x@example.com"], second + second_body)
            assert refused.value.smtp_code == 452 and b"4.3.1" in refused.value.smtp_error
            # Not announced: read, then refused at the end of DATA, nothing sent on.
            assert other.mail("bob@example.com")[0] == 250
            assert other.rcpt("x@example.com")[0] == 250
            code, text = other.data(second + second_body)
            assert code == 452 and b"Insufficient system storage" in text, (code, text)
            # The held message ends and goes through; then there is room again.
            held.send(b".\r\n")
            assert held.getreply()[0] == 250
            assert other.sendmail("bob@example.com", ["x@example.com"], second + second_body) == {}
    sub_gw.postfix.wait_for(b"held-spool-message", timeout=60)
    sub_gw.postfix.wait_for(b"second-spool", timeout=60)
    assert len([m for m in sub_gw.postfix.delivered() if b"second-spool" in m]) == 1
    full = [e for e in sub_gw.events("submission", "bob") if e["reason"] == "spool_full"]
    assert full and full[-1]["size"] == len(second) + len(second_body)
    failed = [e for e in sub_gw.events("submission_message", "bob") if e["reason"] == "spool_full"]
    assert failed, "the refusal at the end of DATA is audited"
    assert f"spool_max_bytes {SPOOL_MAX_BYTES}" in sub_gw.gw.logs()


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
