"""The header policy of slow links: keep what a reader needs, drop the trace noise."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

# What a reader (and a reply) needs. Content-* and List-* are kept by prefix below.
READER_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
    }
)
_KEPT_PREFIXES = ("content-", "list-")
# A top-level type whose bytes are signed or encrypted: nothing of the message is changed.
PROTECTED_TYPES = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
    }
)
_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")
_CONTENT_TYPE = re.compile(rb"^content-type[ \t]*:[ \t]*([!-~]+?/[!-~]+?)[ \t]*(?:;|$)", re.I)


def fields(header: bytes) -> Iterator[tuple[str, bytes]]:
    """(lower-case name, the whole field with its continuation lines and line ends).

    Lines before the first field name or that are not fields (garbage) are returned with
    name "" so that a caller that keeps everything loses nothing.
    """
    name = ""
    current = bytearray()
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and current:
            current += line
            continue
        if current:
            yield name, bytes(current)
        m = _FIELD_NAME.match(line)
        name = m.group(1).decode("ascii").lower() if m else ""
        current = bytearray(line)
    if current:
        yield name, bytes(current)


def content_type(header: bytes) -> str:
    """The lower-case `type/subtype` of a header block (text/plain when absent)."""
    for name, field in fields(header):
        if name == "content-type":
            unfolded = re.sub(rb"\r?\n[ \t]+", b" ", field)
            m = _CONTENT_TYPE.match(unfolded)
            if m:
                return m.group(1).decode("ascii", "replace").lower()
    return "text/plain"


def is_protected(header: bytes) -> bool:
    """True for a message whose body is signed or encrypted as a whole."""
    return content_type(header) in PROTECTED_TYPES


def keep_field(name: str, extra: Iterable[str] = ()) -> bool:
    return name in READER_HEADERS or name.startswith(_KEPT_PREFIXES) or name in extra


def reader_header(header: bytes, keep: Iterable[str] = ()) -> bytes:
    """The reader's fields of a top-level header block (with its blank line, if it had one).

    A signed or encrypted message keeps its header whole, so that the header a client fetches
    on its own is always the header of the lean rendition it would get.
    """
    if is_protected(header):
        return header
    extra = frozenset(k.lower() for k in keep)
    out = bytearray()
    for name, field in fields(header):
        if field in (b"\r\n", b"\n"):
            out += field  # the blank line that ends the block
        elif name and keep_field(name, extra):
            out += field
    return bytes(out)
