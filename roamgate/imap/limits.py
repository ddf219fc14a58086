"""Caps on what one IMAP parser may buffer or accept, in one frozen dataclass.

Every buffer in the codec is bounded by one of these numbers: a peer can make the parser hold at
most one line (`max_line`) plus whatever the caller fed since the last NEED_DATA; literal bodies
leave the parser in pieces of at most `max_chunk` bytes and are never held whole.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

# RFC 9051 number64: the largest literal size or number the grammar can express.
MAX_NUMBER64 = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Configured caps; the defaults suit the client (untrusted) side of the proxy."""

    # Bytes of one command/response line outside literal bodies, CRLFs and literal headers
    # included. Over the cap is fatal: the parser cannot find the next line reliably.
    max_line: int = 64 * KIB
    # Largest literal accepted; a larger one is refused (BAD) or skipped without buffering.
    max_literal: int = 64 * MIB
    # Cap for non-synchronising literals only (LITERAL- advertises 4096); None means max_literal.
    max_nonsync_literal: int | None = None
    # Open parentheses and brackets at one time.
    max_depth: int = 32
    # Largest LiteralChunk handed to the caller.
    max_chunk: int = 64 * KIB
    # NUL may only travel in literal8 (RFC 3516); a lenient upstream side may switch this off.
    reject_nul_in_literal: bool = True
    # A non-synchronising literal over its cap is counted out (skipped) and reported, as RFC 7888
    # allows; False makes it fatal at once, so an unauthenticated client cannot make the gateway
    # read and discard gigabytes announced by one `{n+}` (the pre-login caps set this).
    skip_oversized_nonsync: bool = True

    def __post_init__(self) -> None:
        for name in ("max_line", "max_literal", "max_depth", "max_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1")
        if self.max_nonsync_literal is not None and self.max_nonsync_literal < 0:
            raise ValueError("Limits.max_nonsync_literal must not be negative")

    @property
    def nonsync_literal_cap(self) -> int:
        """The effective cap for `{n+}` literals."""
        if self.max_nonsync_literal is None:
            return self.max_literal
        return min(self.max_literal, self.max_nonsync_literal)

    @classmethod
    def upstream(cls) -> Limits:
        """Caps for responses from the trusted IMAP server.

        SEARCH results for a large mailbox arrive as one long line, and FETCH literals are as large
        as the biggest stored message, so both caps are far higher than on the client side. A NUL
        in a stored message is relayed rather than costing the client the whole FETCH response.
        """
        return cls(max_line=16 * MIB, max_literal=MAX_NUMBER64, reject_nul_in_literal=False)
