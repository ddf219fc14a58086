"""How a FETCH is asked of the upstream when the client's link gets lean renditions.

Every item that shows the whole message or its top-level header or text (BODY[], RFC822,
RFC822.SIZE, BODY[HEADER], BODY[TEXT], RFC822.HEADER, RFC822.TEXT and their partial ranges, and
the FAST/ALL/FULL macros' RFC822.SIZE) is answered from one lean rendition, so sizes, headers,
texts and ranges agree with each other byte for byte. The upstream is asked for the stored
message once (BODY[] when an item would set \\Seen, BODY.PEEK[] otherwise) instead of those
items; every other item (FLAGS, ENVELOPE, BODYSTRUCTURE, BODY[2], BODY[1.MIME], BINARY[...],
HEADER.FIELDS ...) is asked and answered as it is, so a client that fetches parts by section gets
the real parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from roamgate.imap.events import Atom, Number
from roamgate.imap.values import Command, Section, Value, ValueList

Part = Literal["all", "header", "text", "size"]

_MACROS: dict[bytes, tuple[bytes, ...]] = {
    b"FAST": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"),
    b"ALL": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"),
    b"FULL": (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"),
}
# RFC822 items: (part, sets \Seen). RFC822.HEADER is BODY.PEEK[HEADER] (RFC 3501 6.4.5).
_RFC822: dict[bytes, tuple[Part, bool]] = {
    b"RFC822": ("all", True),
    b"RFC822.SIZE": ("size", False),
    b"RFC822.HEADER": ("header", False),
    b"RFC822.TEXT": ("text", True),
}
_SECTION_PARTS: dict[bytes, Part] = {b"": "all", b"HEADER": "header", b"TEXT": "text"}
_PARTIAL = re.compile(rb"^(\d{1,10})\.(\d{1,10})$")
# The item of the upstream's answer that carries the stored message for the rendition.
WHOLE_MESSAGE_KEY = b"BODY[]"


@dataclass(frozen=True, slots=True)
class LeanItem:
    """One item the client asked for, answered from the lean rendition."""

    key: bytes  # the item's name in the response: b"RFC822.SIZE", b"BODY[TEXT]<0>" ...
    part: Part
    partial: tuple[int, int] | None = None  # <offset.length>


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """The command for the upstream and the items the proxy answers itself."""

    upstream: Command
    lean: tuple[LeanItem, ...]


def plan_fetch(command: Command) -> FetchPlan | None:
    """A plan for a FETCH / UID FETCH that asks for lean items, or None to relay it as it is."""
    if command.verb not in ("FETCH", "UID FETCH") or len(command.args) < 2:
        return None
    seqset, items_arg, *modifiers = command.args
    items: list[Value] = []
    for item in items_arg.items if isinstance(items_arg, ValueList) else (items_arg,):
        macro = _MACROS.get(item.value.upper()) if isinstance(item, Atom) else None
        items.extend(Atom(name) for name in macro) if macro else items.append(item)
    keep: list[Value] = []
    lean: list[LeanItem] = []
    seen = False
    for item in items:
        found = _lean_item(item)
        if found is None:
            keep.append(item)
            continue
        lean_item, sets_seen = found
        if lean_item not in lean:
            lean.append(lean_item)
        seen = seen or sets_seen
    if not lean:
        return None
    keep.append(Section(b"BODY" if seen else b"BODY.PEEK"))
    upstream = Command(command.tag, command.name, (seqset, ValueList(tuple(keep)), *modifiers))
    return FetchPlan(upstream, tuple(lean))


def _lean_item(item: Value) -> tuple[LeanItem, bool] | None:
    if isinstance(item, Atom):
        name = item.value.upper()
        found = _RFC822.get(name)
        return None if found is None else (LeanItem(name, found[0]), found[1])
    if not isinstance(item, Section) or item.name.upper() not in (b"BODY", b"BODY.PEEK"):
        return None
    if len(item.items) > 1:
        return None
    spec = b""
    if item.items:
        only = item.items[0]
        if not isinstance(only, Atom):
            return None  # BODY[1], BODY[2.MIME]: a part by its number is the real part
        spec = only.value.upper()
    part = _SECTION_PARTS.get(spec)
    if part is None:
        return None  # HEADER.FIELDS and the like pass through
    partial: tuple[int, int] | None = None
    key = b"BODY[" + spec + b"]"
    if item.partial is not None:
        m = _PARTIAL.match(item.partial)
        if m is None or int(m.group(2)) == 0:
            return None  # let the upstream answer a malformed range (BAD)
        partial = (int(m.group(1)), int(m.group(2)))
        key += b"<" + m.group(1) + b">"
    return LeanItem(key, part, partial), item.name.upper() == b"BODY"


def item_range(item: LeanItem, size: int, header_len: int) -> tuple[int, int]:
    """(start, length) of an item's bytes within a rendition of `size` bytes."""
    start, end = {"header": (0, header_len), "text": (header_len, size)}.get(item.part, (0, size))
    if item.partial is not None:
        offset, length = item.partial
        first = min(start + offset, end)
        return first, min(first + length, end) - first
    return start, end - start


def header_length(head: bytes) -> int:
    """The length of the header block (blank line included) at the start of a message."""
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    end = head.find(b"\n\n")
    return end + 2 if end >= 0 else len(head)


def is_number(value: Value) -> bool:
    return isinstance(value, Number)
