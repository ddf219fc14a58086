"""Which direct-tcpip destinations a user may open: named services only, everything else refused.

A client asks for `imap` (roamgate's own IMAP proxy; `imap-resume`: the same as a resumable
stream), `submission` (the corporate submission
server) or a forward from the config, by its name (`-L 8080:wiki:80`, any port) or by its exact
target (`-L 8080:10.0.0.5:80`) if the forward names the user. Nothing else, not even the
upstream IMAP server's own address, is reachable: the gateway is no general-purpose tunnel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from roamgate.config import SshForward

IMAP = "imap"
# The same IMAP proxy as a resumable stream (roamgate.resume framing; see gateway/resumable.py).
IMAP_RESUME = "imap-resume"
SUBMISSION = "submission"


@dataclass(frozen=True)
class Service:
    """Where an allowed channel goes."""

    name: str
    kind: Literal["imap", "imap-resume", "tcp"]
    host: str = ""
    port: int = 0


@dataclass(frozen=True)
class Refusal:
    reason: str  # for the audit trail; the client only hears "prohibited"


def split_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _allowed(rule: SshForward, user: str) -> bool:
    return user in rule.users or "*" in rule.users


def resolve(
    dest_host: str,
    dest_port: int,
    user: str,
    *,
    forwards: Mapping[str, SshForward],
    submission: tuple[str, int] | None,
) -> Service | Refusal:
    name = dest_host.strip().lower()
    if name == IMAP:
        return Service(IMAP, "imap")
    if name == IMAP_RESUME:
        return Service(IMAP_RESUME, "imap-resume")
    if name == SUBMISSION:
        if submission is None:
            return Refusal("submission_not_configured")
        return Service(SUBMISSION, "tcp", submission[0], submission[1])
    for fname, rule in forwards.items():
        host, port = split_target(rule.target)
        by_name = name == fname.lower()
        by_target = name == host.lower() and dest_port == port
        if by_name or by_target:
            if not _allowed(rule, user):
                return Refusal("forward_not_allowed_for_user")
            return Service(fname, "tcp", host, port)
    return Refusal("destination_not_allowed")
