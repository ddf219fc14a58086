"""How a front door lets a held login talk to its client while a callback runs.

The door sets WAITING_CLIENT (and LOGIN_DEVICE) around its call into the authenticator; the
callback hold reads them. SSH can ask (a further keyboard-interactive round), IMAP cannot and
sends keep-alives (untagged OK lines, RFC 9051 7.1) while the LOGIN command is held.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class WaitingClient(Protocol):
    """The client of a login that is held for a callback."""

    @property
    def can_ask(self) -> bool:
        """True if ask() can show text and read an answer (SSH); False for IMAP."""

    async def ask(self, instruction: str, prompt: str) -> str | None:
        """Show instruction and prompt, return the answer (None: the client cannot answer)."""

    async def keepalive(self, text: str) -> None:
        """Tell the client the login is still being decided (no answer expected)."""


WAITING_CLIENT: ContextVar[WaitingClient | None] = ContextVar(
    "roamgate_waiting_client", default=None
)
# The device identity the door gave this login (sshkey:..., cert:..., addr:...).
LOGIN_DEVICE: ContextVar[str | None] = ContextVar("roamgate_login_device", default=None)
