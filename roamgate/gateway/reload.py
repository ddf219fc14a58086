"""SIGHUP: read the config again and apply what can change under running sessions.

Keys in RESTART_KEYS name sockets, files and connections made once at start; a change to one
is logged and audited as needing a restart, and the running value stays. Everything else
(TLS certificate and key, log level, limits and delays, lockout and OTP policy, link profiles,
retention, alert thresholds, drain_seconds) applies to what starts after the reload:
sessions already open keep what they began with.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from typing import Any

from roamgate.config import Config, ConfigError, ConfigIssue, load_config
from roamgate.gateway.tls import server_context

log = logging.getLogger("roamgate.serve")

RESTART_KEYS = (
    "hostname",
    "listeners",
    "store",
    "secrets",
    "upstream",
    "audit.file",
    "logging.file",
    "auth.password_verifier",
    "ldap",  # the directory's connections and bind password are set up once
    "tls.ca_file",
    "tls.ca_key_file",
    "tls.client_certificates",
    "alerts.url",
    "alerts.queue_size",
)


@dataclasses.dataclass(frozen=True)
class Reloaded:
    """A config that passed every check, merged with the running one."""

    config: Config
    restart_needed: tuple[str, ...]


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        if cfg is None:
            return None
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, path: str, value: Any) -> Any:
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    inner = getattr(cfg, head)
    if inner is None:
        return cfg
    return dataclasses.replace(cfg, **{head: _set(inner, rest, value)})


def merge(old: Config, new: Config) -> Reloaded:
    """The new config with every restart-only key kept at its running value."""
    restart: list[str] = []
    # A section switched on or off needs a restart as a whole (a door or a sender to start).
    for section in ("ssh", "alerts"):
        if (getattr(old, section) is None) != (getattr(new, section) is None):
            restart.append(section)
            new = dataclasses.replace(new, **{section: getattr(old, section)})
    for key in RESTART_KEYS:
        before, after = _get(old, key), _get(new, key)
        if before != after:
            restart.append(key)
            new = _set(new, key, before)
    return Reloaded(new, tuple(restart))


def read_new_config(old: Config) -> Reloaded:
    """Load and check the file again; raise ConfigError (file:line key) and change nothing."""
    new = load_config(old.path, check_key_files=True)
    try:
        server_context(new.tls)  # the pair must load before any door is handed it
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            str(old.path), [ConfigIssue(0, "tls.cert_file", f"certificate/key not usable: {exc}")]
        ) from None
    return merge(old, new)
