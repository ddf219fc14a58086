"""Config of alerts, drain_seconds and retention, and what SIGHUP may change live."""

from __future__ import annotations

from pathlib import Path

from roamgate.config import load_config
from roamgate.gateway.reload import merge
from tests.test_config import GOOD, _errors, _write


def test_defaults_and_an_alerts_section_load(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.alerts is None and cfg.drain_seconds == 30
    assert cfg.audit.retention_days == 400 and cfg.audit.prune_interval_seconds == 3600
    (tmp_path / "hook.key").write_text("s3cret\n")
    text = "alerts:\n  url: https://ops.example.com/hook\n  secret_file: hook.key\n" + GOOD
    cfg = load_config(_write(tmp_path, text))
    assert cfg.alerts is not None and cfg.alerts.url == "https://ops.example.com/hook"
    assert cfg.alerts.secret.value == b"s3cret" and "s3cret" not in repr(cfg.alerts)


def test_bad_alerts_and_drain_are_named_with_their_lines(tmp_path: Path) -> None:
    text = "alerts:\n  url: https://x.example\n  secret: inline\ndrain_seconds: -1\n" + GOOD
    errors = _errors(_write(tmp_path, text))
    assert any(":3 alerts.secret: secrets are not accepted inline" in e for e in errors), errors
    assert any(":4 drain_seconds: expected an integer 0-3600" in e for e in errors), errors
    (tmp_path / "hook.key").write_text("k")
    text = "alerts:\n  url: ftp://x.example\n  secret_file: hook.key\n" + GOOD
    errors = _errors(_write(tmp_path, text))
    assert any(":2 alerts.url: expected an http:// or https:// URL" in e for e in errors), errors


def test_reload_keeps_restart_only_keys_and_names_them(tmp_path: Path) -> None:
    old = load_config(_write(tmp_path, GOOD))
    text = GOOD.replace("port: 9993", "port: 9994") + "drain_seconds: 5\n"
    new = load_config(_write(tmp_path, text))
    merged = merge(old, new)
    assert merged.restart_needed == ("listeners",)
    assert merged.config.listeners == old.listeners  # the running value stays
    assert merged.config.drain_seconds == 5  # a reloadable key applies
