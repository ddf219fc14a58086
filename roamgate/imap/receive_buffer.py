"""The parser's one byte buffer: append at the end, take from the front, find line ends once.

Like h11's ReceiveBuffer it remembers how far it has already searched for LF, so feeding a long
line one byte at a time costs linear, not quadratic, time. Deleting from the front of a
bytearray is cheap in CPython (it moves a start pointer), so taking a chunk does not shift the rest.
"""

from __future__ import annotations


class ReceiveBuffer:
    __slots__ = ("_data", "_searched")

    def __init__(self) -> None:
        self._data = bytearray()
        self._searched = 0  # no LF in _data[:_searched]

    def __len__(self) -> int:
        return len(self._data)

    def append(self, data: bytes) -> None:
        self._data += data

    def line_end(self) -> int:
        """Index just past the first LF, or -1 when there is none yet."""
        i = self._data.find(b"\n", self._searched)
        if i < 0:
            self._searched = len(self._data)
            return -1
        return i + 1

    def take(self, n: int) -> bytes:
        """Remove and return the first n bytes (n <= len)."""
        out = bytes(self._data[:n])
        self.drop(n)
        return out

    def drop(self, n: int) -> None:
        """Discard the first n bytes (n <= len) without copying them out."""
        del self._data[:n]
        self._searched = max(0, self._searched - n)
