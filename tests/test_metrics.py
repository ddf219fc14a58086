"""The metrics counted from audit events: values, label hygiene, one registry per runtime."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from roamgate.audit import Auditor
from roamgate.metrics import MAX_VALUES_PER_LABEL, Metrics
from roamgate.store import open_store
from tests.conftest import FakeClock


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


async def auditor_with_metrics(tmp_path: Path, clock: FakeClock) -> tuple[Auditor, Metrics]:
    store = await open_store(str(tmp_path / "s.db"), create=True)
    auditor = Auditor(store, tmp_path / "audit.jsonl", clock)
    metrics = Metrics()
    auditor.listeners.append(metrics.observe)
    return auditor, metrics


async def test_logins_sessions_bytes_and_locks_follow_the_audit_events(
    tmp_path: Path, clock: FakeClock
) -> None:
    auditor, m = await auditor_with_metrics(tmp_path, clock)
    await auditor.record("auth", "ok", user="bob", source="192.0.2.7", door="imaps",
                         factor="password+hotp")  # fmt: skip
    await auditor.record("auth", "fail", user="eve", source="192.0.2.8", door="ssh",
                         factor="password", reason="bad_password")  # fmt: skip
    await auditor.record("auth", "fail", user="eve", source="192.0.2.8", door="ssh",
                         factor="password", reason="bad_password")  # fmt: skip
    await auditor.record("session_open", "ok", user="bob", door="imaps",
                         detail={"session_id": "s1", "profile": "lean"})  # fmt: skip
    await auditor.record("session_open", "ok", user="bob", door="ssh",
                         detail={"session_id": "s2"})  # fmt: skip
    await auditor.record("lock", "timed", user="eve", door="ssh",
                         detail={"scope": "user", "key": "eve", "seconds": 60})  # fmt: skip
    await auditor.record("lock", "hard", source="192.0.2.8", door="ssh",
                         detail={"scope": "source", "key": "192.0.2.8", "seconds": 0})  # fmt: skip
    assert value(m, "roamgate_logins_total", door="imaps", result="ok", factor="password+hotp",
                 reason="none") == 1  # fmt: skip
    assert value(m, "roamgate_logins_total", door="ssh", result="fail", factor="password",
                 reason="bad_password") == 2  # fmt: skip
    assert value(m, "roamgate_active_sessions", door="imaps", profile="lean") == 1
    assert value(m, "roamgate_active_sessions", door="ssh", profile="none") == 1
    assert value(m, "roamgate_lockouts_total", scope="user", kind="timed") == 1
    assert value(m, "roamgate_lockouts_total", scope="source", kind="hard") == 1

    await auditor.record("session_close", "ok", user="bob", door="imaps", reason="closed",
                         detail={"session_id": "s1", "bytes_in": 120, "bytes_out": 4567,
                                 "profile": "lean"})  # fmt: skip
    # A close without a recorded open (a store error in between) never drives a gauge negative.
    await auditor.record("session_close", "ok", door="imaps",
                         detail={"session_id": "unknown", "bytes_in": 3, "bytes_out": 0})  # fmt: skip
    assert value(m, "roamgate_active_sessions", door="imaps", profile="lean") == 0
    assert value(m, "roamgate_active_sessions", door="ssh", profile="none") == 1
    assert value(m, "roamgate_sessions_total", door="imaps", profile="lean") == 1
    assert value(m, "roamgate_relayed_bytes_total", door="imaps", direction="in") == 123
    assert value(m, "roamgate_relayed_bytes_total", door="imaps", direction="out") == 4567
    await auditor.store.close()


async def test_no_user_name_or_address_reaches_a_label(tmp_path: Path, clock: FakeClock) -> None:
    auditor, m = await auditor_with_metrics(tmp_path, clock)
    # A caller that one day puts free text where a code word belongs gets "other".
    await auditor.record("auth", "fail", user="alice@corp.example", source="198.51.100.9",
                         door="alice@corp.example", factor="Alice Smith",
                         reason="198.51.100.9")  # fmt: skip
    for i in range(MAX_VALUES_PER_LABEL + 10):
        await auditor.record("auth", "fail", door="imaps", reason=f"reason_{i}")
        m.record_callback("webhook", f"outcome_{i}")
    text = m.render().decode()
    for secret in ("alice", "corp.example", "198.51.100.9", "Smith"):
        assert secret not in text
    reasons = {
        labels.get("reason")
        for (name, pairs) in samples(m)
        if name == "roamgate_logins_total"
        for labels in [dict(pairs)]
    }
    # Bounded: at most MAX_VALUES_PER_LABEL distinct reasons, plus "other".
    assert len(reasons) <= MAX_VALUES_PER_LABEL + 1
    assert "other" in reasons
    outcomes = {
        dict(pairs)["outcome"]
        for (name, pairs) in samples(m)
        if name.startswith("roamgate_callback")
    }
    assert len(outcomes) <= MAX_VALUES_PER_LABEL + 1
    await auditor.store.close()


def test_callback_outcomes_and_separate_registries() -> None:
    a, b = Metrics(), Metrics()
    a.record_callback("webhook", "ok")
    a.record_callback("webhook", "ok")
    a.record_callback("dialback", "timeout")
    a.record_callback("+15551234567", "ok")  # a number where a channel belongs
    assert value(a, "roamgate_callback_outcomes_total", channel="webhook", outcome="ok") == 2
    assert value(a, "roamgate_callback_outcomes_total", channel="dialback", outcome="timeout") == 1
    assert value(a, "roamgate_callback_outcomes_total", channel="other", outcome="ok") == 1
    assert "5551234567" not in a.render().decode()
    # Two runtimes in one process count apart (no global registry).
    assert value(b, "roamgate_callback_outcomes_total", channel="webhook", outcome="ok") == 0


async def test_a_failing_observer_does_not_fail_the_audit(tmp_path: Path, clock: FakeClock) -> None:
    auditor, m = await auditor_with_metrics(tmp_path, clock)

    def broken(record: object) -> None:
        raise RuntimeError("bug")

    auditor.listeners.insert(0, broken)
    stored = await auditor.record("auth", "ok", door="imaps", factor="password+totp")
    assert stored.id is not None
    assert value(m, "roamgate_logins_total", door="imaps", result="ok", factor="password+totp",
                 reason="none") == 1  # fmt: skip
    await auditor.store.close()


async def test_callback_results_are_counted_from_the_audit(
    tmp_path: Path, clock: FakeClock
) -> None:
    auditor, m = await auditor_with_metrics(tmp_path, clock)
    for outcome in ("confirmed", "confirmed", "expired"):
        await auditor.record("callback_result", "ok" if outcome == "confirmed" else "fail",
                             user="bob", door="imaps", detail={"channel": "webhook",
                             "outcome": outcome, "callback_id": 7})  # fmt: skip
    await auditor.record("callback_result", "fail", user="bob", door="ssh",
                         detail={"channel": "approve", "outcome": "denied"})  # fmt: skip
    name = "roamgate_callback_outcomes_total"
    assert value(m, name, channel="webhook", outcome="confirmed") == 2
    assert value(m, name, channel="webhook", outcome="expired") == 1
    assert value(m, name, channel="approve", outcome="denied") == 1
    await auditor.store.close()
