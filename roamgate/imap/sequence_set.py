"""IMAP sequence sets (`1:3,5,7:*`): parsed once, then asked which numbers they hold."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE = re.compile(rb"^(\d{1,10}|\*)(?::(\d{1,10}|\*))?$")
STAR = 0  # `*`: the largest number in use, filled in by the caller


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Closed ranges; STAR stands for `*` until resolved."""

    ranges: tuple[tuple[int, int], ...]

    def resolve(self, largest: int) -> SequenceSet:
        """`*` replaced by the largest number in use (RFC 9051 6.4.4); bounds put in order."""
        out = []
        for lo, hi in self.ranges:
            a = largest if lo == STAR else lo
            b = largest if hi == STAR else hi
            out.append((min(a, b), max(a, b)))
        return SequenceSet(tuple(out))

    def __contains__(self, n: int) -> bool:
        return any(lo <= n <= hi for lo, hi in self.ranges)

    def members(self, largest: int, limit: int) -> list[int] | None:
        """The numbers 1..largest in the set, in order; None if more than `limit`."""
        found: set[int] = set()
        for lo, hi in self.resolve(largest).ranges:
            hi = min(hi, largest)
            if hi - lo + 1 > limit:
                return None
            found.update(range(lo, hi + 1))
            if len(found) > limit:
                return None
        return sorted(found)


def parse_sequence_set(text: bytes) -> SequenceSet | None:
    """The set, or None if `text` is not a sequence set (then the server will answer BAD)."""
    ranges = []
    for part in text.split(b","):
        m = _RANGE.match(part)
        if m is None:
            return None
        lo = STAR if m.group(1) == b"*" else int(m.group(1))
        hi_text = m.group(2)
        hi = lo if hi_text is None else STAR if hi_text == b"*" else int(hi_text)
        if (lo == 0 and m.group(1) != b"*") or (hi == 0 and hi_text not in (None, b"*")):
            return None  # 0 is not a valid message number
        ranges.append((lo, hi))
    return SequenceSet(tuple(ranges))
