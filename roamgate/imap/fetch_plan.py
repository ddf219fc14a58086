"""How a FETCH is asked of the upstream when the client's link gets lean renditions.

Every item that shows the whole message or its top-level header or text (BODY[], RFC822,
RFC822.SIZE, BODY[HEADER], BODY[TEXT], RFC822.HEADER, RFC822.TEXT and their partial ranges, and
the FAST/ALL/FULL macros' RFC822.SIZE) is answered from one lean rendition, so sizes, headers,
texts and ranges agree with each other byte for byte. The upstream is asked for the stored
message once (BODY[] when an item would set \\Seen, BODY.PEEK[] otherwise) and its UID instead
of those items; or, when every rendition is in the cache already, for the UID alone (and a
one-field header item that sets \\Seen, if an item would). Every other item (FLAGS, ENVELOPE, BODYSTRUCTURE, BODY[2], BODY[1.MIME], BINARY[...],
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
# A header field no message has: `BODY[HEADER.FIELDS (X-ROAMGATE-SEEN)]` sets \Seen for a
# couple of bytes when the rendition itself comes from the cache.
SEEN_FIELD = b"X-ROAMGATE-SEEN"


@dataclass(frozen=True, slots=True)
class LeanItem:
    """One item the client asked for, answered from the lean rendition."""

    key: bytes  # the item's name in the response: b"RFC822.SIZE", b"BODY[TEXT]<0>" ...
    part: Part
    partial: tuple[int, int] | None = None  # <offset.length>


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """The commands for the upstream and the items the proxy answers itself.

    upstream asks for the stored messages; from_cache asks for the other items only, for when
    every rendition is cached. keep_uid: the client asked for UIDs (UID FETCH, or UID).
    """

    upstream: Command
    from_cache: Command
    lean: tuple[LeanItem, ...]
    seen: bool
    keep_uid: bool
    uid_command: bool
    message_set: bytes


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
    uid_command = command.verb == "UID FETCH"
    keep_uid = uid_command
    for item in items:
        if isinstance(item, Atom) and item.value.upper() == b"UID":
            keep_uid = True
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
    if not any(isinstance(i, Atom) and i.value.upper() == b"UID" for i in keep):
        keep.append(Atom(b"UID"))  # for the cache and the sequence-number map
    cached = list(keep)
    if seen:
        cached.append(Section(b"BODY", (Atom(b"HEADER.FIELDS"), ValueList((Atom(SEEN_FIELD),)))))
    keep.append(Section(b"BODY" if seen else b"BODY.PEEK"))

    def build(items: list[Value]) -> Command:
        return Command(command.tag, command.name, (seqset, ValueList(tuple(items)), *modifiers))

    set_text = b""  # not a set the proxy can read: the cache is not used
    if isinstance(seqset, Atom):
        set_text = seqset.value
    elif isinstance(seqset, Number):
        set_text = str(seqset.value).encode()
    return FetchPlan(
        upstream=build(keep),
        from_cache=build(cached),
        lean=tuple(lean),
        seen=seen,
        keep_uid=keep_uid,
        uid_command=uid_command,
        message_set=set_text,
    )


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
    if head.startswith(b"\r\n"):
        return 2  # no header fields at all (a rendition whose fields were all trace noise)
    if head.startswith(b"\n"):
        return 1
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    end = head.find(b"\n\n")
    return end + 2 if end >= 0 else len(head)
