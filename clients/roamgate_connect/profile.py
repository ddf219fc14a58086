"""A connection profile: the gateway, the user, the pinned host key, the local ports.

Read from a small YAML file (safe loader) and/or given as flags; flags win. Every problem is
reported at once, with the file and key, as `roamgate check-config` does for the gateway.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

KEYS = ("gateway", "user", "host_key", "imap_port", "submission_port", "device_key")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


class ProfileError(Exception):
    """The profile cannot be used; each line is one problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Profile:
    host: str
    port: int
    user: str
    host_keys: tuple[str, ...]  # SHA256:... fingerprints, any of which may be the gateway's
    imap_port: int
    submission_port: int
    device_key: Path

    @property
    def gateway(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def default_device_key(user: str, host: str) -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "roamgate" / f"{user}@{host}.key"


def _port(value: object, where: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        problems.append(f"{where}: expected a port 1-65535, got {value!r}")
        return 0
    port = int(value)
    if not 1 <= port <= 65535:
        problems.append(f"{where}: expected a port 1-65535, got {value!r}")
    return port


def split_gateway(text: str, where: str, problems: list[str]) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        problems.append(f"{where}: expected HOST:PORT, got {text!r}")
        return "", 0
    return host, _port(port, where, problems)


def read_file(path: Path) -> dict[str, object]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ProfileError([f"{path}{line}: not valid YAML"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProfileError([f"{path}: expected a mapping of {', '.join(KEYS)}"])
    unknown = sorted(str(k) for k in data if k not in KEYS)
    if unknown:
        raise ProfileError(
            [f"{path}: unknown key {k!r} (known: {', '.join(KEYS)})" for k in unknown]
        )
    return {str(k): v for k, v in data.items()}


def build(values: dict[str, object], origin: str) -> Profile:
    """A profile from merged values; origin names where they came from, for errors."""
    problems: list[str] = []
    gateway = values.get("gateway")
    host, port = ("", 0)
    if not isinstance(gateway, str) or not gateway:
        problems.append(f"{origin}: gateway: missing (HOST:PORT, e.g. gw.example.com:2022)")
    else:
        host, port = split_gateway(gateway, f"{origin}: gateway", problems)
    user = values.get("user")
    if not isinstance(user, str) or not user:
        problems.append(f"{origin}: user: missing")
        user = ""
    raw_keys = values.get("host_key")
    keys: list[str] = []
    if isinstance(raw_keys, str):
        keys = [k.strip() for k in raw_keys.split(",") if k.strip()]
    elif isinstance(raw_keys, list):
        keys = [str(k).strip() for k in raw_keys]
    if not keys:
        problems.append(
            f"{origin}: host_key: missing (the gateway's SHA256:... fingerprint, which"
            " `roamgate init` printed; never connect without it)"
        )
    for key in keys:
        if not _FINGERPRINT.match(key):
            problems.append(
                f"{origin}: host_key: expected SHA256: and 43 base64 characters, got {key!r}"
            )
    imap_port = _port(values.get("imap_port", 1143), f"{origin}: imap_port", problems)
    submission_port = _port(
        values.get("submission_port", 1587), f"{origin}: submission_port", problems
    )
    if imap_port and imap_port == submission_port:
        problems.append(f"{origin}: submission_port: the same as imap_port ({imap_port})")
    device = values.get("device_key")
    device_key = Path(str(device)).expanduser() if device else default_device_key(user, host)
    if problems:
        raise ProfileError(problems)
    return Profile(host, port, user, tuple(keys), imap_port, submission_port, device_key)
