"""The audit trail: one writer puts each event in the store and appends it to a JSON-lines file."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from roamgate.store.base import AuditRecord, JsonValue, Store, StoreError

log = logging.getLogger("roamgate.audit")

# Detail keys that would carry a credential. The writer refuses them outright, so a future
# caller cannot leak a secret into the trail by accident: the test suite would fail first.
FORBIDDEN_DETAIL_KEYS = frozenset(
    {"password", "passwd", "code", "otp", "secret", "token_secret", "backup_code", "passphrase"}
)


class AuditUnavailable(Exception):
    """An event that must be on record (a successful login) reached not every sink."""


class Auditor:
    """Writes audit events. The store is the record; the file is for log shippers and grep."""

    def __init__(
        self, store: Store, file: Path | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.file = file
        self.clock = clock
        # Told of every event after it is written (serve's alerts); must not block or raise.
        self.listeners: list[Callable[[AuditRecord], None]] = []

    async def record(
        self,
        kind: str,
        result: str,
        *,
        user: str | None = None,
        source: str | None = None,
        door: str | None = None,
        factor: str | None = None,
        reason: str | None = None,
        actor: str | None = None,
        detail: Mapping[str, JsonValue] | None = None,
        required: bool = False,
    ) -> AuditRecord:
        """Store the event and append it to the file; a failing sink is logged, not raised.

        required: the caller must not go on unless the event is in the store and in the file
        (if one is configured): AuditUnavailable is raised otherwise. A login is refused when
        its success cannot be recorded, so that nobody gets in unaudited (a full disk, say).
        """
        detail = dict(detail or {})
        leaked = FORBIDDEN_DETAIL_KEYS.intersection(k.lower() for k in detail)
        if leaked:
            raise ValueError(f"audit detail must not carry credentials: {sorted(leaked)}")
        record = AuditRecord(
            ts=self.clock(),
            kind=kind,
            result=result,
            user_name=user,
            source=source,
            door=door,
            factor=factor,
            reason=reason,
            actor=actor,
            detail=detail,
        )
        try:
            record_id = await self.store.append_audit(record)
        except StoreError as exc:
            # The file line below still records the event; the operator sees why the
            # store missed it. Losing the store must not hide who tried to log in.
            log.error("audit event not stored: %s", exc)
            record_id = None
        stored = AuditRecord(**{**record.__dict__, "id": record_id})
        written = self._append_line(stored)
        for listener in self.listeners:
            try:
                listener(stored)
            except Exception:  # a listener's bug must not lose the login's answer
                log.exception("audit listener failed")
        if required and (record_id is None or not written):
            raise AuditUnavailable(f"audit event {kind} could not be recorded")
        return stored

    def _append_line(self, record: AuditRecord) -> bool:
        if self.file is None:
            return True
        line = json.dumps(to_json(record), sort_keys=True, ensure_ascii=False) + "\n"
        try:
            # O_APPEND with one write per line keeps lines whole when serve and the CLI
            # append to the same file; 0600 because the trail names users and addresses.
            fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                data = line.encode("utf-8")
                written = os.write(fd, data)
                if written != len(data):
                    # A full disk takes part of the line: cut it off again, or every later
                    # line would be glued to a broken one (found by tests/gateway/test_faults).
                    os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR) - written)
                    raise OSError(errno.ENOSPC, "short write (disk full?)")
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("audit file %s not written: %s", self.file, exc.strerror)
            return False
        return True


def to_json(record: AuditRecord) -> dict[str, JsonValue | dict[str, JsonValue]]:
    """The JSON-lines shape of an event (also what `roamgate audit --json` prints)."""
    return {
        "id": record.id,
        "ts": record.ts,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.ts)),
        "kind": record.kind,
        "result": record.result,
        "user": record.user_name,
        "source": record.source,
        "door": record.door,
        "factor": record.factor,
        "reason": record.reason,
        "actor": record.actor,
        "detail": dict(record.detail),
    }


# Rotated segments: `audit.jsonl.2026-12-03` (the UTC day of the segment's first line), with
# `.2`, `.3`... when one day was rotated more than once.
_SEGMENT = re.compile(r"\.(\d{4}-\d{2}-\d{2})(?:\.(\d+))?$")


@dataclass(frozen=True)
class FilePrune:
    """What one pass over the JSON-lines files did."""

    rotated: Path | None
    deleted: tuple[Path, ...]


def rotate_and_prune(file: Path, cutoff: float, now: float) -> FilePrune:
    """Rotate the live file once a UTC day and delete whole segments older than the cutoff.

    The live file is renamed, never rewritten, so an appender (serve or a CLI command) that
    opened it a moment before writes its line into the segment instead: nothing is lost, and a
    log shipper that follows the name sees an ordinary rotation. A segment is deleted only when
    its newest line is older than the cutoff, so no record younger than retention goes; a
    segment whose last line cannot be read is kept.
    """
    rotated: Path | None = None
    first = _first_ts(file)
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    if first is not None and time.strftime("%Y-%m-%d", time.gmtime(first)) < today:
        rotated = _segment_name(file, time.strftime("%Y-%m-%d", time.gmtime(first)))
        try:
            file.rename(rotated)
        except OSError as exc:
            log.error("audit file %s not rotated: %s", file, exc.strerror)
            rotated = None
    deleted: list[Path] = []
    for segment in sorted(file.parent.glob(file.name + ".*")):
        if not _SEGMENT.fullmatch(segment.name[len(file.name) :]):
            continue
        last = _last_ts(segment)
        if last is not None and last < cutoff:
            try:
                segment.unlink()
                deleted.append(segment)
            except OSError as exc:
                log.error("old audit segment %s not deleted: %s", segment, exc.strerror)
    return FilePrune(rotated, tuple(deleted))


def _segment_name(file: Path, day: str) -> Path:
    candidate = file.with_name(f"{file.name}.{day}")
    n = 2
    while candidate.exists():
        candidate = file.with_name(f"{file.name}.{day}.{n}")
        n += 1
    return candidate


def _line_ts(line: bytes) -> float | None:
    try:
        ts = json.loads(line).get("ts")
    except (ValueError, AttributeError):
        return None
    return float(ts) if isinstance(ts, int | float) else None


def _first_ts(path: Path) -> float | None:
    try:
        with path.open("rb") as f:
            return _line_ts(f.readline(1 << 20))
    except OSError:
        return None


def _last_ts(path: Path) -> float | None:
    """The time of the segment's last whole line (read from the end: segments can be large)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
    except OSError:
        return None
    lines = [line for line in tail.split(b"\n") if line.strip()]
    return _line_ts(lines[-1]) if lines else None
