"""Config of the PROXY protocol: listeners.<door>.proxy_protocol and trusted_proxies."""

from __future__ import annotations

from pathlib import Path

from roamgate.config import load_config
from tests.test_config import GOOD, _errors, _write


def test_proxy_protocol_defaults_off_and_loads(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.listeners.ssh is not None and cfg.listeners.ssh.proxy_protocol is False
    assert cfg.trusted_proxies == ()
    text = GOOD.replace("    port: 9993\n", "    port: 9993\n    proxy_protocol: true\n")
    text = "trusted_proxies: [10.0.0.0/24, 2001:db8::5]\n" + text
    cfg = load_config(_write(tmp_path, text))
    assert cfg.listeners.imaps is not None and cfg.listeners.imaps.proxy_protocol is True
    assert cfg.trusted_proxies == ("10.0.0.0/24", "2001:db8::5")


def test_proxy_protocol_needs_trusted_proxies(tmp_path: Path) -> None:
    text = GOOD.replace("    port: 9993\n", "    port: 9993\n    proxy_protocol: true\n")
    errors = _errors(_write(tmp_path, text))
    assert any(
        ":8 listeners.imaps.proxy_protocol: needs trusted_proxies" in line for line in errors
    ), errors


def test_a_bad_trusted_proxy_and_the_web_door_are_named(tmp_path: Path) -> None:
    text = "trusted_proxies: [10.0.0.1, lb.example.com]\n" + GOOD.replace(
        "  imaps:\n", "  web:\n    port: 9443\n    proxy_protocol: true\n  imaps:\n"
    )
    errors = _errors(_write(tmp_path, text))
    assert any("trusted_proxies[1]: expected an IP address or network" in e for e in errors), errors
    assert any(
        "listeners.web.proxy_protocol: the web door takes no PROXY header" in e for e in errors
    ), errors
