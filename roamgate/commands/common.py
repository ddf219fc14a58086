"""What the subcommands share: errors for the user, time parsing and printing, the actor name."""

from __future__ import annotations

import getpass
import json
import re
import sys
import time
from datetime import UTC, datetime

from roamgate.runtime import Runtime
from roamgate.store.base import UserRecord


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float) -> float:
    """A time as the user writes it: 2h / 7d (ago), 2026-12-03, 2026-12-03T10:00 (UTC)."""
    m = _RELATIVE.match(text.strip())
    if m:
        return now - int(m.group(1)) * _UNITS[m.group(2)]
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"cannot read the time {text!r}: use e.g. 2h, 7d, 2026-12-03 or 2026-12-03T10:00"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def actor() -> str:
    """Who ran an admin command, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, sort_keys=False) + "\n")


async def require_user(rt: Runtime, name: str) -> UserRecord:
    user = await rt.store.get_user(name)
    if user is None:
        raise CliError(f"no such user: {name} (see 'roamgate user list')")
    return user
