"""The audit file's daily rotation and the retention of its segments (roamgate.audit)."""

from __future__ import annotations

import calendar
import json
import os
from pathlib import Path

from roamgate.audit import rotate_and_prune

DAY = 86400
NOW = float(calendar.timegm((2026, 12, 4, 12, 0, 0)))


def line(ts: float, n: int) -> bytes:
    return (json.dumps({"id": n, "ts": ts, "kind": "auth"}) + "\n").encode()


def test_live_file_rotates_once_a_day_and_a_late_appender_loses_nothing(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    live.write_bytes(line(NOW - DAY, 1) + line(NOW - 60, 2))
    # An appender (a CLI command) that opened the file just before the rotation.
    late = os.open(live, os.O_WRONLY | os.O_APPEND)
    done = rotate_and_prune(live, NOW - 400 * DAY, NOW)
    os.write(late, line(NOW - 1, 3))
    os.close(late)
    assert done.rotated == tmp_path / "audit.jsonl.2026-12-03" and done.deleted == ()
    assert not live.exists()  # the next event creates it afresh
    ids = [json.loads(x)["id"] for x in done.rotated.read_text().splitlines()]
    assert ids == [1, 2, 3]
    # Today's file is not rotated again; a second rotation of one day gets its own name.
    live.write_bytes(line(NOW, 4))
    assert rotate_and_prune(live, NOW - 400 * DAY, NOW).rotated is None
    live.write_bytes(line(NOW - DAY, 5))
    second = rotate_and_prune(live, NOW - 400 * DAY, NOW).rotated
    assert second == tmp_path / "audit.jsonl.2026-12-03.2"


def test_a_segment_goes_only_when_its_newest_line_is_older_than_retention(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    cutoff = NOW - 400 * DAY
    old = tmp_path / "audit.jsonl.2025-10-01"
    old.write_bytes(line(cutoff - 2 * DAY, 1) + line(cutoff - 1, 2))
    mixed = tmp_path / "audit.jsonl.2025-10-02"
    mixed.write_bytes(line(cutoff - DAY, 3) + line(cutoff + 1, 4))
    unreadable = tmp_path / "audit.jsonl.2025-10-03"
    unreadable.write_bytes(b"not json\n")
    other = tmp_path / "audit.jsonl.bak"
    other.write_bytes(line(cutoff - DAY, 5))
    done = rotate_and_prune(live, cutoff, NOW)
    assert done.deleted == (old,) and done.rotated is None
    assert mixed.exists() and unreadable.exists() and other.exists()
