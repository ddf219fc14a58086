"""Who may send what through the submission door: owned addresses, limits, the Received line.

Pure: fed the user, the settings and the message's header bytes; it does no I/O. The door asks
it and turns each refusal into the SMTP reply it carries.

Rules, in the order the door applies them:
 1. Nothing is relayed before AUTH (inside an SSH tunnel the tunnel's login counts).
 2. The envelope sender is an address the user owns: their e-mail address of record (`user
    add --email`), else USER@submission.sender_domain, plus submission.users.USER.senders.
 3. At most max_messages_per_hour messages relayed per user in the last hour (counted from the
    audit trail, which every node shares), checked at MAIL FROM.
 4. At most max_recipients recipients per message; the next RCPT gets 452 (RFC 5321 4.5.3.1.10).
 5. At most max_message_bytes, announced as SIZE; a bigger SIZE= or DATA is refused with 552.
 6. The message has exactly one From: header, and every address in it (and in Sender:, if
    present) is owned.
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from email.parser import HeaderParser
from email.policy import compat32

from roamgate.config import SubmissionSettings
from roamgate.store.base import UserRecord

# The header section is read until its end or this many bytes, whichever comes first; a
# message whose headers are longer cannot be checked and is refused.
MAX_HEADER_BYTES = 256 * 1024
# What of a client's EHLO name goes into the Received line.
_HELO_SAFE = re.compile(r"[^A-Za-z0-9.\-:\[\]_]")


@dataclass(frozen=True)
class Refusal:
    """An SMTP reply that refuses, and the reason for the audit trail."""

    reply: str
    reason: str


NOT_AUTHENTICATED = Refusal("530 5.7.0 Authentication required", "not_authenticated")
SENDER_NOT_OWNED = Refusal(
    "553 5.7.1 Sender address not owned by the authenticated user", "sender_not_owned"
)
NO_OWNED_ADDRESS = Refusal(
    "553 5.7.1 No sending address is configured for this user", "no_owned_address"
)
FROM_NOT_OWNED = Refusal(
    "550 5.7.1 From: header address not owned by the authenticated user", "from_not_owned"
)
FROM_MISSING = Refusal("550 5.6.0 Message needs exactly one From: header", "from_missing")
HEADER_TOO_LARGE = Refusal("552 5.6.0 Header section too large", "header_too_large")
MESSAGE_TOO_LARGE = Refusal("552 5.3.4 Message size exceeds fixed maximum", "message_too_large")
# The node's spool disk is full (submission.spool_max_bytes or the disk itself): temporary, the
# client tries again later and nothing is lost.
SPOOL_FULL = Refusal("452 4.3.1 Insufficient system storage, try again later", "spool_full")
# A user disabled (by an admin or the directory sync) after they logged in sends nothing more:
# the connection is closed after this reply.
USER_DISABLED = Refusal(
    "421 4.7.0 This account is disabled; closing the connection", "user_disabled"
)
TOO_MANY_MESSAGES = Refusal(
    "450 4.7.1 Too many messages sent in the last hour; try again later", "rate_limited"
)


def too_many_recipients(limit: int) -> Refusal:
    return Refusal(
        f"452 4.5.3 Too many recipients (at most {limit} per message)", "too_many_recipients"
    )


@dataclass(frozen=True)
class SenderRules:
    """What one user may do: the addresses they own (lower case) and their limits."""

    addresses: frozenset[str]
    max_recipients: int
    max_messages_per_hour: int
    max_message_bytes: int

    def owns(self, address: str) -> bool:
        return normalise(address) in self.addresses


def normalise(address: str) -> str:
    return address.strip().strip("<>").strip().lower()


def rules_for(user: UserRecord, settings: SubmissionSettings) -> SenderRules:
    own = settings.users.get(user.name)
    addresses = set()
    if user.email:
        addresses.add(normalise(user.email))
    elif settings.sender_domain:
        addresses.add(normalise(f"{user.name}@{settings.sender_domain}"))
    if own is not None:
        addresses.update(normalise(a) for a in own.senders)

    if own is None:
        return SenderRules(
            frozenset(addresses),
            settings.max_recipients,
            settings.max_messages_per_hour,
            settings.max_message_bytes,
        )
    return SenderRules(
        addresses=frozenset(addresses),
        max_recipients=_pick(own.max_recipients, settings.max_recipients),
        max_messages_per_hour=_pick(own.max_messages_per_hour, settings.max_messages_per_hour),
        max_message_bytes=_pick(own.max_message_bytes, settings.max_message_bytes),
    )


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value


def check_sender(rules: SenderRules, address: str) -> Refusal | None:
    if not rules.addresses:
        return NO_OWNED_ADDRESS
    return None if rules.owns(address) else SENDER_NOT_OWNED


class HeaderScanner:
    """Collects the header section of a message fed in pieces, up to MAX_HEADER_BYTES."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.complete = False
        self.too_large = False

    def feed(self, data: bytes) -> None:
        if self.complete or self.too_large:
            return
        start = max(0, len(self._buf) - 3)
        self._buf += data
        for end in (b"\r\n\r\n", b"\n\n"):
            at = self._buf.find(end, start)
            if at >= 0:
                del self._buf[at + len(end) :]
                self.complete = True
                return
        if len(self._buf) > MAX_HEADER_BYTES:
            self.too_large = True
            self._buf.clear()

    def check(self, rules: SenderRules) -> Refusal | None:
        """The header rules (6 above); a message that is all headers counts as complete."""
        if self.too_large:
            return HEADER_TOO_LARGE
        text = bytes(self._buf).decode("utf-8", "replace")
        headers = HeaderParser(policy=compat32).parsestr(text, headersonly=True)
        froms = headers.get_all("From") or []
        if len(froms) != 1:
            return FROM_MISSING
        addresses = [a for _name, a in email.utils.getaddresses([str(froms[0])]) if a]
        if not addresses:
            return FROM_MISSING
        senders = headers.get_all("Sender") or []
        addresses += [a for _n, a in email.utils.getaddresses([str(s) for s in senders]) if a]
        if not all(rules.owns(a) for a in addresses):
            return FROM_NOT_OWNED
        return None


def received_header(
    *,
    helo: str,
    source: str,
    hostname: str,
    protocol: str,
    session_id: str,
    user: str,
    when: float | None = None,
) -> bytes:
    """The one line the gateway adds (RFC 5321 4.4): who sent, through which session.

    protocol is ESMTPSA (TLS and AUTH, RFC 3848) or ESMTPA (inside an SSH tunnel). It names
    the user and the session id, never a password or a code.
    """
    helo = _HELO_SAFE.sub("", helo)[:64] or "unknown"
    date = email.utils.formatdate(time.time() if when is None else when, localtime=False)
    return (
        f"Received: from {helo} ([{source}])\r\n"
        f"\tby {hostname} (roamgate) with {protocol} id {session_id}\r\n"
        f"\t(authenticated user {user}); {date}\r\n"
    ).encode("utf-8", "replace")
