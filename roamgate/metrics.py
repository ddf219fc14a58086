"""Prometheus metrics of one gateway process, counted from the audit events it writes.

The audit trail already sees every login, lock and session, so the metrics are derived from it
(Metrics.observe) instead of hooks in each door: one place, and nothing counted that is not
also audited. Labels are low-cardinality by construction: door, result, factor, reason,
profile, channel and outcome only, each checked against a pattern and capped in the number of
distinct values (a surprise value becomes "other"); user names and addresses never appear.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, exposition, generate_latest

from roamgate.store.base import AuditRecord

CONTENT_TYPE = exposition.CONTENT_TYPE_LATEST
# ssh-imap: the IMAP proxy inside an SSH tunnel (its sessions also count under ssh).
DOORS = frozenset({"ssh", "imaps", "imap", "ssh-imap", "web"})
CALLBACK_CHANNELS = frozenset({"webhook", "dialback", "approve"})
# A label value is a short code word starting with a letter; a name, an address (no dots,
# no colons) or free text is not.
_LABEL = re.compile(r"[a-z][a-z0-9_+-]{0,39}")
# Distinct values one label may take before new ones are folded into "other": bounds the
# number of series even if a caller one day passes something unexpected.
MAX_VALUES_PER_LABEL = 32
OTHER = "other"
NONE = "none"


class _LabelGuard:
    """Maps raw values of one label onto a bounded set of safe values."""

    def __init__(self, allowed: Iterable[str] | None = None) -> None:
        self.allowed = frozenset(allowed) if allowed is not None else None
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if value is None or value == "":
            return NONE
        value = value.lower()
        if self.allowed is not None:
            return value if value in self.allowed else OTHER
        if not _LABEL.fullmatch(value):
            return OTHER
        if value not in self.seen:
            if len(self.seen) >= MAX_VALUES_PER_LABEL:
                return OTHER
            self.seen.add(value)
        return value


class Metrics:
    """The counters and gauges of one runtime, in a registry of their own (not the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.logins = Counter(
            "roamgate_logins",
            "Gateway logins (IMAP, SSH, web admin) by door, result, factor and reason.",
            ["door", "result", "factor", "reason"],
            registry=r,
        )
        self.active_sessions = Gauge(
            "roamgate_active_sessions",
            "Sessions open in this process, by front door and bandwidth profile.",
            ["door", "profile"],
            registry=r,
        )
        self.sessions = Counter(
            "roamgate_sessions",
            "Sessions opened in this process, by front door and bandwidth profile.",
            ["door", "profile"],
            registry=r,
        )
        self.relayed_bytes = Counter(
            "roamgate_relayed_bytes",
            "Bytes relayed by sessions that have ended, by door and direction"
            " (in: from the client, out: to the client).",
            ["door", "direction"],
            registry=r,
        )
        self.lockouts = Counter(
            "roamgate_lockouts",
            "Lockouts imposed, by scope (user or source) and kind (timed or hard).",
            ["scope", "kind"],
            registry=r,
        )
        self.callback_outcomes = Counter(
            "roamgate_callback_outcomes",
            "Callback verifications by channel and outcome.",
            ["channel", "outcome"],
            registry=r,
        )
        self._door = _LabelGuard(DOORS)
        self._result = _LabelGuard()
        self._factor = _LabelGuard()
        self._reason = _LabelGuard()
        self._profile = _LabelGuard()
        self._scope = _LabelGuard({"user", "source"})
        self._lock_kind = _LabelGuard({"timed", "hard"})
        self._channel = _LabelGuard(CALLBACK_CHANNELS)
        self._outcome = _LabelGuard()
        # session id -> the labels it was counted under, so a close without an open (a store
        # error between them) never drives the gauge below zero. Bounded by live sessions.
        self._open: dict[str, tuple[str, str]] = {}

    def observe(self, record: AuditRecord) -> None:
        """Count one audit event (called by the Auditor for every event it writes)."""
        handler = _HANDLERS.get(record.kind)
        if handler is not None:
            handler(self, record)

    def record_callback(self, channel: str, outcome: str) -> None:
        """Count a finished callback verification (confirmed, denied, expired, failed, ...).

        The callback_result audit event already calls this; call it directly only for an
        outcome that is not audited as callback_result, or it is counted twice.
        """
        self.callback_outcomes.labels(self._channel(channel), self._outcome(outcome)).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    # -- audit kinds
    def _auth(self, record: AuditRecord) -> None:
        self.logins.labels(
            self._door(record.door),
            self._result(record.result),
            self._factor(record.factor),
            self._reason(record.reason if record.result != "ok" else None),
        ).inc()

    def _session_open(self, record: AuditRecord) -> None:
        session_id = record.detail.get("session_id")
        if not isinstance(session_id, str) or session_id in self._open:
            return
        profile = record.detail.get("profile")
        labels = (
            self._door(record.door),
            self._profile(profile if isinstance(profile, str) else None),
        )
        self._open[session_id] = labels
        self.active_sessions.labels(*labels).inc()
        self.sessions.labels(*labels).inc()

    def _session_close(self, record: AuditRecord) -> None:
        session_id = record.detail.get("session_id")
        labels = self._open.pop(session_id, None) if isinstance(session_id, str) else None
        if labels is not None:
            self.active_sessions.labels(*labels).dec()
        door = self._door(record.door)
        for direction in ("in", "out"):
            count = record.detail.get(f"bytes_{direction}")
            if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                self.relayed_bytes.labels(door, direction).inc(count)

    def _callback_result(self, record: AuditRecord) -> None:
        # The callback machine audits each final state once, as callback_result with the
        # channel and the outcome (confirmed, denied, expired, failed) in the detail.
        channel, outcome = record.detail.get("channel"), record.detail.get("outcome")
        self.record_callback(
            channel if isinstance(channel, str) else "",
            outcome if isinstance(outcome, str) else record.result,
        )

    def _lock(self, record: AuditRecord) -> None:
        scope = record.detail.get("scope")
        self.lockouts.labels(
            self._scope(scope if isinstance(scope, str) else None), self._lock_kind(record.result)
        ).inc()


_HANDLERS = {
    "auth": Metrics._auth,
    "session_open": Metrics._session_open,
    "session_close": Metrics._session_close,
    "lock": Metrics._lock,
    "callback_result": Metrics._callback_result,
}
