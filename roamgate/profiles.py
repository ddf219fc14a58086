"""Link profiles: how much of a message a slow link gets at first, and how it is shaped."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from roamgate.yamlbind import int_range

KIB = 1024


@dataclass(frozen=True)
class LinkProfile:
    """The budget of one kind of link; `lan` changes nothing, the others send a lean rendition.

    A lean rendition is what a client gets when it fetches a whole message (BODY[], RFC822,
    BODY[TEXT]): the reader's headers, the first text_budget bytes of the text, and stubs for
    attachments over stub_threshold. A client that asks for a part by its section number gets
    the real bytes; a login as `user#lan` gets every message exactly as stored.
    """

    # Bytes of the first text part in a lean rendition; 0: whole messages pass unchanged.
    text_budget: int = field(default=0, metadata=int_range(0, 64 * 1024 * 1024))
    # Attachments whose encoded size is over this become stubs (0 with lean on: every one).
    stub_threshold: int = field(default=0, metadata=int_range(0, 1024 * 1024 * 1024))
    # zlib level for COMPRESS=DEFLATE toward the client (1 fastest .. 9 smallest).
    compression_level: int = field(default=6, metadata=int_range(1, 9))
    # The newest N messages whose flags, size, envelope and structure are fetched on SELECT.
    prefetch_depth: int = field(default=0, metadata=int_range(0, 5000))
    # full: headers as stored; reader: only what a reader needs (see roamgate/mime/headers.py).
    header_policy: Literal["full", "reader"] = "full"
    # Extra header names kept under the reader policy (case-insensitive).
    keep_headers: tuple[str, ...] = ()
    # pda: HTML parts as plain text, every text in UTF-8, a cap on the whole rendition.
    html_to_text: bool = False
    to_utf8: bool = False
    max_message_bytes: int = field(default=0, metadata=int_range(0, 1024 * 1024 * 1024))

    @property
    def lean(self) -> bool:
        """True when whole-message fetches get a lean rendition instead of the stored bytes."""
        return self.text_budget > 0


BUILTIN_PROFILES: dict[str, LinkProfile] = {
    # A LAN or a fast hotel line: everything as stored.
    "lan": LinkProfile(prefetch_depth=0),
    # 64 kbit/s ISDN: 8 KB/s, so a 64 KiB text is eight seconds and attachments wait.
    "isdn": LinkProfile(
        text_budget=64 * KIB,
        stub_threshold=128 * KIB,
        compression_level=6,
        prefetch_depth=100,
        header_policy="reader",
    ),
    # 29.2 kbit/s PHS: 3.6 KB/s, so the first screenful of text and nothing else unasked.
    "phs": LinkProfile(
        text_budget=8 * KIB,
        stub_threshold=16 * KIB,
        compression_level=9,
        prefetch_depth=50,
        header_policy="reader",
    ),
    # A PDA or phone: small screen, no HTML renderer, often no ISO-2022-JP font mapping.
    "pda": LinkProfile(
        text_budget=4 * KIB,
        stub_threshold=0,
        compression_level=9,
        prefetch_depth=20,
        header_policy="reader",
        html_to_text=True,
        to_utf8=True,
        max_message_bytes=16 * KIB,
    ),
}
DEFAULT_PROFILE = "lan"
PROFILE_FIELDS = tuple(f.name for f in fields(LinkProfile))


def merged_profiles(overrides: dict[str, LinkProfile]) -> dict[str, LinkProfile]:
    """The built-in profiles with the config's own (which replace a built-in of the same name)."""
    return {**BUILTIN_PROFILES, **overrides}
