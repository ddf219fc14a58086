"""Decode MIME text in any declared charset, and re-encode header fields as UTF-8 encoded-words."""

# The `pda` link profile hands UTF-8 to phones and PDAs that have no ISO-2022-JP decoder. Japanese
# business mail is mostly ISO-2022-JP written by Windows clients, which use the NEC special
# characters (JIS row 13: ①, Ⅳ, ㈱, ㍻ ...) and the NEC-selected IBM extensions (rows 89-92: 髙,
# 﨑 ...). Python's `iso2022_jp` codec rejects all of them, so this module walks the escape
# sequences itself and falls back to `cp932`, which carries the NEC and IBM tables. Nothing here
# raises on bad input: undecodable bytes become U+FFFD, and every step is linear in the input.

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Iterator
from functools import cache

__all__ = ["decode_text", "header_to_utf8"]

_REPLACEMENT = "\ufffd"
_ESC = 0x1B

# Labels (lower-case, after the email and WHATWG spellings) that get a dedicated decoder.
_ISO2022JP_LABELS = frozenset(
    {
        "iso-2022-jp",
        "iso2022-jp",
        "iso2022jp",
        "iso_2022_jp",
        "csiso2022jp",
        "iso-2022-jp-1",
        "iso-2022-jp-2",
        "csiso2022jp2",
        "iso-2022-jp-3",
        "iso-2022-jp-2004",
        "iso-2022-jp-ext",
        "jis",
        "jis7",
    }
)
# Windows wrote all of these; cp932 is the superset with the NEC and IBM rows.
_CP932_LABELS = frozenset(
    {
        "shift_jis",
        "shift-jis",
        "shiftjis",
        "sjis",
        "x-sjis",
        "s-jis",
        "ms_kanji",
        "csshiftjis",
        "windows-31j",
        "cswindows31j",
        "cp932",
        "ms932",
        "x-ms-cp932",
        "ibm-943",
    }
)
_EUCJP_LABELS = frozenset(
    {"euc-jp", "eucjp", "euc_jp", "x-euc-jp", "cseucpkdfmtjapanese", "cp51932", "eucjp-ms"}
)
# What mail readers actually decode these labels as (WHATWG Encoding Standard): the declared
# charset is routinely a subset of what the sender's Windows machine wrote.
_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "euc-cn": "gb18030",
    "cp936": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "korean": "cp949",
    "big5": "cp950",
    "tis-620": "cp874",
    "iso-8859-11": "cp874",
    "iso-8859-9": "cp1254",
    "latin5": "cp1254",
}
# These labels mean "one byte per character, Western": treated like an unlabelled body, because
# senders declare them for UTF-8 and cp1252 text alike.
_GUESS_LABELS = frozenset(
    {"", "us-ascii", "ascii", "us", "ansi_x3.4-1968", "iso-8859-1", "latin1", "latin-1"}
)
_GUESS_LABELS |= {"iso_8859-1", "iso8859-1", "l1", "cp1252", "windows-1252", "x-unknown"}
# Python codecs that are not a charset a sender can declare: they interpret backslashes or
# hostnames instead of decoding text.
_REFUSED_CODECS = frozenset(
    {"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined", "mbcs", "oem"}
)

# cp1252 leaves five bytes undefined; mapping them to their latin-1 code points means the
# fallback decoder accepts every byte, so the last resort can never fail.
_CP1252_TABLE = "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(256))
_HIGH_BIT = bytes(range(128, 256)) * 2  # maps 0x21..0x7E to 0xA1..0xFE for an EUC view of JIS


def decode_text(data: bytes, charset: str | None) -> str:
    """Decode a transfer-decoded MIME text body; bad bytes become U+FFFD, nothing raises."""
    # UTF-7 (and any codec that speaks in UTF-16 units) can yield a lone surrogate, which no
    # UTF-8 encoder takes: it becomes U+FFFD too (found by bench/fuzz_mime.py).
    return _SURROGATE.sub("\ufffd", _decode(data, charset))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _decode(data: bytes, charset: str | None) -> str:
    label = _label(charset)
    if label in _ISO2022JP_LABELS:
        if _ESC not in data and any(b >= 0x80 for b in data):
            # Labelled ISO-2022-JP but 8-bit: a mislabelled Shift_JIS, EUC-JP or UTF-8 body.
            return _guess_japanese(data)
        return decode_iso2022jp(data)
    if label in _CP932_LABELS:
        return data.decode("cp932", errors="replace")
    if label in _EUCJP_LABELS:
        return data.decode("euc_jp", errors=_JIS_FALLBACK)
    if label in {"utf-8", "utf8", "unicode-1-1-utf-8", "x-unicode20utf8"}:
        # A byte-order mark means nothing in mail and shows as a stray glyph on a phone.
        return data.decode("utf-8-sig", errors="replace")
    if label in _GUESS_LABELS:
        return _guess(data)
    codec = _codec_name(_SUPERSETS.get(label, label))
    if codec is None:
        return _guess(data)
    try:  # bytes.decode refuses bytes-to-bytes codecs ("base64", "zlib") with LookupError
        return data.decode(codec, errors="replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return _guess(data)


def decode_iso2022jp(data: bytes) -> str:
    """Decode ISO-2022-JP as Windows mail clients write it, NEC and IBM extension rows included."""
    return "".join(_iso2022jp_pieces(data))


def _label(charset: str | None) -> str:
    if charset is None:
        return ""
    label = charset.strip().strip("\"'").strip().lower()
    return label.split("*", 1)[0]  # RFC 2231 language suffix: "iso-2022-jp*ja"


def _codec_name(label: str) -> str | None:
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError, TypeError):
        return None
    return None if name.replace("_", "-") in _REFUSED_CODECS else name


def _guess(data: bytes) -> str:
    """An unlabelled body: UTF-8 if it is valid UTF-8, otherwise Windows Western."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1").translate(_CP1252_TABLE)


def _guess_japanese(data: bytes) -> str:
    for codec in ("utf-8", "cp932", "euc_jp"):
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    return data.decode("cp932", errors="replace")


# --- ISO-2022-JP -------------------------------------------------------------------------------

_ASCII, _KATAKANA, _JIS0208, _JIS0212, _JIS0213_1, _JIS0213_2, _GB2312, _KSC5601 = range(8)
# Designations after ESC. JIS X 0201 Roman (ESC ( J) is decoded as ASCII: Japanese mailers use it
# as "back to one-byte text", and mapping ~ to an overline would break every ~user URL.
_DESIGNATIONS: dict[bytes, int] = {
    b"(B": _ASCII,
    b"(J": _ASCII,
    b"(H": _ASCII,
    b"(I": _KATAKANA,
    b"$@": _JIS0208,
    b"$B": _JIS0208,
    b"$(B": _JIS0208,
    b"$(D": _JIS0212,
    b"$(O": _JIS0213_1,
    b"$(Q": _JIS0213_1,
    b"$(P": _JIS0213_2,
    b"$A": _GB2312,
    b"$(C": _KSC5601,
}
# How a run of two-byte codes of each set reads in an 8-bit codec: (prefix per pair, codec).
_TWO_BYTE_CODECS: dict[int, tuple[bytes, str]] = {
    _JIS0208: (b"", "euc_jp"),
    _JIS0212: (b"\x8f", "euc_jp"),
    _JIS0213_1: (b"", "euc_jis_2004"),
    _JIS0213_2: (b"\x8f", "euc_jis_2004"),
    _GB2312: (b"", "gb2312"),
    _KSC5601: (b"", "euc_kr"),
}
_RUN = re.compile(rb"[\x21-\x7e]+")


def _iso2022jp_pieces(data: bytes) -> Iterator[str]:
    """Walk the escape sequences; each run of one set is decoded in a single codec call."""
    mode, shifted = _ASCII, False
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte == _ESC:
            for tail, designated in _DESIGNATIONS.items():
                if data.startswith(tail, i + 1):
                    mode, i = designated, i + 1 + len(tail)
                    break
            else:
                if data.startswith(b"&@", i + 1):  # JIS X 0208-1990 announcer, a no-op prefix
                    i += 3
                else:  # unknown or truncated escape: mark it, then read on in the same set
                    yield _REPLACEMENT
                    i += 1
            continue
        if byte == 0x0E or byte == 0x0F:  # SO / SI: the JIS7 way to reach half-width katakana
            shifted = byte == 0x0E
            i += 1
            continue
        if byte == 0x0A:
            # RFC 1468 lines end in ASCII, so a reset here costs conforming text nothing and
            # keeps a missing ESC ( B from turning every later line into kanji.
            mode, shifted = _ASCII, False
            yield "\n"
            i += 1
            continue
        if byte < 0x21 or byte == 0x7F:
            yield chr(byte)
            i += 1
            continue
        if byte >= 0x80:
            yield _REPLACEMENT
            i += 1
            continue
        match = _RUN.match(data, i)
        assert match is not None  # data[i] is in 0x21..0x7E
        run, i = match.group(), match.end()
        if shifted or mode == _KATAKANA:
            yield "".join(chr(0xFF40 + b) if b <= 0x5F else _REPLACEMENT for b in run)
        elif mode == _ASCII:
            yield run.decode("ascii")
        else:
            yield _decode_two_byte_run(run, mode)


def _decode_two_byte_run(run: bytes, mode: int) -> str:
    prefix, codec = _TWO_BYTE_CODECS[mode]
    text = ""
    if len(run) % 2:  # a lead byte cut off by an escape or a line end
        run, text = run[:-1], _REPLACEMENT
    high = run.translate(_HIGH_BIT)
    if prefix:
        high = b"".join(prefix + high[k : k + 2] for k in range(0, len(high), 2))
    errors = _JIS_FALLBACK if mode == _JIS0208 else "replace"
    return high.decode(codec, errors=errors) + text


def _jis_to_sjis(j1: int, j2: int) -> bytes:
    """The JIS X 0208 code (row byte, cell byte) as the Shift_JIS bytes Windows would write."""
    s1 = ((j1 + 1) >> 1) + (0x70 if j1 <= 0x5E else 0xB0)
    s2 = j2 + (0x7E if j1 % 2 == 0 else 0x1F + (j2 >= 0x60))
    return bytes([s1, s2])


@cache
def _nec_ibm_char(j1: int, j2: int) -> str:
    try:
        return _jis_to_sjis(j1, j2).decode("cp932")
    except UnicodeDecodeError:
        return _REPLACEMENT


def _jis_fallback(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler: an EUC pair the JIS codec lacks is retried in cp932's NEC/IBM rows.

    JIS X 0208 text keeps the JIS mapping (WAVE DASH stays U+301C, as in Python's iso2022_jp and
    in browsers); only codes that mapping rejects get the Windows reading.
    """
    if not isinstance(error, UnicodeDecodeError):
        raise error
    data, start = error.object, error.start
    if start + 1 < len(data) and 0xA1 <= data[start] <= 0xFE and 0xA1 <= data[start + 1] <= 0xFE:
        return _nec_ibm_char(data[start] - 0x80, data[start + 1] - 0x80), start + 2
    return _REPLACEMENT, start + 1


# Registered once under a name of our own: a codec error handler keeps the whole decode in C,
# linear, and still retries each unmapped pair in the NEC/IBM tables.
_JIS_FALLBACK = "roamgate.jis-nec-ibm"
codecs.register_error(_JIS_FALLBACK, _jis_fallback)


# --- header fields -----------------------------------------------------------------------------

# Encoded-word (RFC 2047): charset and text are printable ASCII without "?" or space, so every
# match attempt stops at the next "?" and the scan is linear.
_ENCODED_WORD = re.compile(r"=\?([!->@-~]+)\?([QqBb])\?([!->@-~]*)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_LINE_BREAK = re.compile(r"[\r\n]+")
_WS_ONLY = re.compile(r"[ \t]*")
# Decoded text that may stand in a header as it is: atext and spaces, minus "=" and "?" so it
# can never read as an encoded-word, and no specials that would change a structured header.
_PLAIN = re.compile(r"[A-Za-z0-9 !#$%&'*+\-/^_`{|}~]*")
# In raw text: quoted-strings, <angle-addr>, and the words between specials and spaces.
# In raw text: <angle-addr>, the words between specials and spaces, whitespace, one special.
_RAW_TOKEN = re.compile(r"<[^<>]*>|[^\s\"<>()@,;:\\\[\]]+|\s+|.", re.DOTALL)
_QUOTED_BODY = re.compile(r'(?:[^"\\]|\\.)*+', re.DOTALL)
# 39 bytes are 52 base64 characters, a 64-column word: "Subject: " and one word fit in 78.
_MAX_WORD_BYTES = 39
_LINE_LIMIT = 78


def header_to_utf8(value: str, *, header_name: str = "", linesep: str = "\r\n") -> str:
    """Re-encode a header field value so every encoded-word is UTF-8; fold it to 78 columns.

    Pass `header_name` ("Subject") so the first line leaves room for "Subject: ". Addresses,
    quoted-strings and plain ASCII stay as they were; text that needs encoding becomes
    `=?UTF-8?B?...?=` words. A line break in the value never survives unfolded, so the result
    cannot smuggle a header of its own.
    """
    value = _LINE_BREAK.sub(" ", _FOLD.sub("", value))
    words = list(_header_words(value))
    offset = len(header_name) + 2 if header_name else 0
    return _fold("".join(words), offset, linesep)


def _header_words(value: str) -> Iterator[str]:
    """Yield the new value piece by piece: raw text as is, each run of encoded-words re-encoded."""
    run: list[tuple[str, bytes]] = []
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        # Whitespace between two encoded-words is not part of the text (RFC 2047 section 6.2).
        if not (run and _WS_ONLY.fullmatch(between)):
            if run:
                yield from _run_words(run)
                run = []
            yield from _raw_words(between)
        charset, encoding, text = match.groups()
        run.append((_label(charset), _word_bytes(encoding, text)))
        pos = match.end()
    if run:
        yield from _run_words(run)
    yield from _raw_words(value[pos:])


def _word_bytes(encoding: str, text: str) -> bytes:
    if encoding in "Bb":
        # Lenient like mail readers: ignore stray characters, tolerate missing padding.
        alphabet = re.sub(r"[^A-Za-z0-9+/]", "", text)
        alphabet = alphabet[: len(alphabet) - (len(alphabet) % 4 == 1)]
        try:
            return base64.b64decode(alphabet + "=" * (-len(alphabet) % 4))
        except (binascii.Error, ValueError):
            return b""
    return binascii.a2b_qp(text.encode("ascii"), header=True)


def _run_words(run: list[tuple[str, bytes]]) -> Iterator[str]:
    """Adjacent encoded-words of one charset are joined before decoding: senders split
    multi-byte characters, and ISO-2022-JP shift states, across word boundaries."""
    text, i = "", 0
    while i < len(run):
        charset, data = run[i]
        i += 1
        while i < len(run) and run[i][0] == charset:
            data += run[i][1]
            i += 1
        text += decode_text(data, charset)
    text = _LINE_BREAK.sub(" ", text).replace("\x00", "")
    if _PLAIN.fullmatch(text):
        yield text
    else:
        yield from _encoded_words(text)


def _raw_words(text: str) -> Iterator[str]:
    """Raw text: ASCII stays; non-ASCII words (RFC 6532 or 8-bit headers) become encoded-words."""
    if text.isascii() and "\x1b" not in text:
        yield text
        return
    if "\x1b" in text and text.isascii():  # raw ISO-2022-JP, as some old Japanese mailers send
        text = decode_iso2022jp(text.encode("ascii"))
    elif any("\udc80" <= c <= "\udcff" for c in text):  # bytes the caller kept surrogate-escaped
        text = decode_text(text.encode("utf-8", "surrogateescape"), None)
    text = _LINE_BREAK.sub(" ", text)
    pending = ""  # non-ASCII words and the spaces between them, encoded together
    for token in _raw_tokens(text):
        if token.isascii() or token.startswith("<"):
            if pending and token.isspace():
                pending += token
                continue
            if pending:
                stripped = pending.rstrip()
                yield from _encoded_words(stripped)
                yield pending[len(stripped) :]
                pending = ""
            yield token
        elif token.startswith('"'):
            closed = len(token) >= 2 and token.endswith('"')
            pending += re.sub(r"\\(.)", r"\1", token[1 : -1 if closed else None], flags=re.DOTALL)
        else:
            pending += token
    if pending:
        stripped = pending.rstrip()
        yield from _encoded_words(stripped)
        yield pending[len(stripped) :]


def _raw_tokens(text: str) -> Iterator[str]:
    """Split raw header text; a quoted-string is one token, an unclosed one runs to the end."""
    pos = 0
    while pos < len(text):
        if text[pos] == '"':
            body = _QUOTED_BODY.match(text, pos + 1)
            assert body is not None  # the pattern matches the empty string
            end = body.end() + 1 if text.startswith('"', body.end()) else len(text)
            # Scanning once to the end for an unclosed quote keeps the whole split linear.
            yield text[pos:end]
            pos = end
        else:
            token = _RAW_TOKEN.match(text, pos)
            assert token is not None  # "." matches any character
            yield token.group()
            pos = token.end()


def _encoded_words(text: str) -> Iterator[str]:
    """`text` as UTF-8 B encoded-words split on character boundaries, separated by spaces."""
    chunk = b""
    first = True
    for char in text:
        encoded = char.encode("utf-8", "replace")
        if chunk and len(chunk) + len(encoded) > _MAX_WORD_BYTES:
            yield ("" if first else " ") + _b_word(chunk)
            chunk, first = b"", False
        chunk += encoded
    if chunk:
        yield ("" if first else " ") + _b_word(chunk)


def _b_word(data: bytes) -> str:
    return "=?UTF-8?B?" + base64.b64encode(data).decode("ascii") + "?="


def _fold(value: str, offset: int, linesep: str) -> str:
    """Break before whitespace so lines stay within 78 columns where a break point exists."""
    lines: list[str] = []
    line = ""
    width = offset
    for piece in re.findall(r"[ \t]*[^ \t]+|[ \t]+$", value):
        if line.strip() and width + len(piece) > _LINE_LIMIT and piece[0] in " \t":
            lines.append(line)
            line, width = piece, len(piece)
        else:
            line += piece
            width += len(piece)
    lines.append(line)
    return linesep.join(lines)
