"""Raw DEFLATE (RFC 1951, wbits -15) for IMAP COMPRESS=DEFLATE (RFC 4978), as a pure codec.

Both directions are one endless stream per connection: the proxy compresses what it sends with a
Deflater and inflates what the client sends with an Inflater; the gateway does the I/O.

Rules (tests/imap/test_deflate.py checks each):
1. Whatever sequence of compress() and flush() calls, the concatenated output inflates with a
   plain `zlib.decompressobj(-15)` to exactly the concatenated input, and after each flush()
   everything given so far can be inflated (the output ends with a Z_SYNC_FLUSH marker).
2. Data marked incompressible (JPEG, ZIP, gzip, PNG, and their base64 in MIME) goes through a
   second, Huffman-only stream that costs a fraction of the CPU: it still saves the quarter
   that base64 wastes, and zlib stores random binary as stored blocks. The two streams take
   turns only at a Z_FULL_FLUSH, where the output is byte-aligned and nothing after it refers
   to anything before it, so the receiver sees one valid stream.
3. An Inflater never returns more than its cap per call; the compressed rest stays in zlib's
   `unconsumed_tail` until asked for, so a small decompression bomb cannot fill memory.
4. Invalid input raises InflateError (and so does data after a final block): the caller ends
   the connection; the zlib message is for the log, never for the peer.
"""

from __future__ import annotations

import re
import zlib

WBITS = -15  # raw DEFLATE: no zlib header or checksum (RFC 4978 section 4)
DEFAULT_MAX_OUTPUT = 64 * 1024

# File signatures of formats that are compressed already.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"PK\x03\x04",  # ZIP, and so docx, xlsx, odt, jar
    b"\x1f\x8b",  # gzip
    b"GIF8",  # GIF (LZW)
    b"7z\xbc\xaf\x27\x1c",  # 7-Zip
    b"\xfd7zXZ\x00",  # xz
    b"\x28\xb5\x2f\xfd",  # zstd
    b"Rar!\x1a\x07",  # RAR
)
# The same signatures as the first base64 characters of a MIME body part.
_BASE64_MAGIC = (
    b"/9j/",  # JPEG
    b"iVBORw0KGg",  # PNG
    b"UEsDB",  # ZIP
    b"H4sI",  # gzip
    b"R0lGOD",  # GIF
    b"N3q8ryc",  # 7-Zip
    b"/Td6WFo",  # xz
    b"KLUv/",  # zstd
)
_BASE64_LINES = re.compile(rb"[A-Za-z0-9+/=\r\n]*")
_TRIAL_BYTES = 1024
# A level-1 trial on the first KiB: text compresses to about 0.5 there, base64 text to 0.65,
# base64 of random bytes to 0.79 (six bits a character), random bytes not at all.
_RAW_RATIO = 0.9
_BASE64_RATIO = 0.74
_MIN_TRIAL = 256


def looks_compressed(sample: bytes) -> bool:
    """True if the sample looks like compressed data or its base64, so deflating it is wasted.

    Cheap: a signature check, then at most one level-1 trial on the first KiB. A wrong True costs
    compression (text through the Huffman-only stream), a wrong False only CPU time.
    """
    head = sample[:_TRIAL_BYTES].lstrip(b"\r\n\t ")
    if head.startswith(_MAGIC) or head.startswith(_BASE64_MAGIC):
        return True
    if len(head) < _MIN_TRIAL:
        return False
    trial = zlib.compressobj(1, zlib.DEFLATED, WBITS)
    ratio = len(trial.compress(head) + trial.flush()) / len(head)
    if ratio >= _RAW_RATIO:
        return True
    return ratio >= _BASE64_RATIO and _BASE64_LINES.fullmatch(head) is not None


class Deflater:
    """One compressed direction: compress() as data comes, flush() when a batch is complete."""

    def __init__(self, level: int = 6) -> None:
        if not 1 <= level <= 9:
            raise ValueError("DEFLATE level must be 1..9")
        self.level = level
        self._normal = zlib.compressobj(level, zlib.DEFLATED, WBITS)
        self._low: zlib._Compress | None = None  # created when first needed
        self._active = self._normal
        self._unflushed = False  # input since the last flush of the active stream
        self._since_full_flush = False  # input since the active stream last reset its history

    def compress(self, data: bytes, *, incompressible: bool = False) -> bytes:
        """Compressed bytes for data, maybe none yet (zlib buffers); flush() sends the rest."""
        if not data:
            return b""
        target = self._low_stream() if incompressible else self._normal
        out = b""
        if target is not self._active:
            if self._since_full_flush:
                # Byte-aligned and no back-references across this point: the other stream
                # can continue the output as if it were the same one.
                out = self._active.flush(zlib.Z_FULL_FLUSH)
            self._active = target
            self._since_full_flush = False
        self._unflushed = self._since_full_flush = True
        return out + self._active.compress(data)

    def flush(self) -> bytes:
        """Everything compressed so far, ending in a Z_SYNC_FLUSH marker; b"" if nothing new."""
        if not self._unflushed:
            return b""
        self._unflushed = False
        return self._active.flush(zlib.Z_SYNC_FLUSH)

    def _low_stream(self) -> zlib._Compress:
        if self._low is None:
            self._low = zlib.compressobj(1, zlib.DEFLATED, WBITS, 8, zlib.Z_HUFFMAN_ONLY)
        return self._low


class InflateError(Exception):
    """The peer's DEFLATE stream is invalid; the connection cannot continue."""


class Inflater:
    """The other direction: decompress() returns at most max_output bytes per call."""

    def __init__(self, max_output: int = DEFAULT_MAX_OUTPUT) -> None:
        if max_output < 1:
            raise ValueError("max_output must be at least 1")
        self.max_output = max_output
        self._z = zlib.decompressobj(WBITS)

    @property
    def pending(self) -> bool:
        """True while input is held back because of the cap: call decompress() without data."""
        return bool(self._z.unconsumed_tail)

    def decompress(self, data: bytes = b"", *, limit: int | None = None) -> bytes:
        """Inflate data after whatever is pending; at most min(limit, max_output) bytes out.

        Raises InflateError on invalid input or input after the stream's final block.
        """
        cap = self.max_output if limit is None else max(1, min(limit, self.max_output))
        tail = self._z.unconsumed_tail
        if self._z.eof and data:
            raise InflateError("data after the end of the DEFLATE stream")
        buf = tail + data if tail and data else (data or tail)
        try:
            out = self._z.decompress(buf, cap)
        except zlib.error as exc:
            raise InflateError(str(exc)) from None
        if self._z.unused_data:
            raise InflateError("data after the end of the DEFLATE stream")
        return out
