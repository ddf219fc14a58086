"""Lean renditions of messages for slow links, made while the message streams through.

Fed the stored bytes of a message in any chunks, LeanRenderer returns the bytes of its lean
rendition as they become known: the reader's header fields, the text up to the profile's budget
(converted to UTF-8 plain text where it has to be cut or the profile asks for it) with a marker
saying how much more there is, attachments over the stub threshold replaced by a short text
part naming the file, its type, size and section, and the other alternatives of a
multipart/alternative left out once its plain text is kept.

Rules (tests/mime checks each):
1. Signed or encrypted content (multipart/signed, multipart/encrypted, application/pkcs7-mime)
   passes byte for byte, with its own part header; a message that is signed or encrypted as a
   whole comes out identical to its input.
2. Memory is bounded by the profile, not the message: a part is held only up to its budget or
   the stub threshold (whichever applies), a header up to HEADER_CAP, a line up to LINE_CAP;
   everything past that is counted, not kept. Only protected parts and attachments under the
   stub threshold reach the output whole.
3. The output is valid MIME with CRLF line ends; section numbers in markers and stubs are the
   stored message's, so `BODY[n]` fetches the real part.
4. Input that does not parse as MIME is never an error: past a broken or oversized header the
   rest of the input is copied as it is; a multipart nested deeper than MAX_DEPTH is treated
   as one attachment (a stub, or whole if small).
"""

from __future__ import annotations

import binascii
import enum
import quopri
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from roamgate.mime import charsets, html_text
from roamgate.mime.headers import PROTECTED_TYPES, fields, reader_header
from roamgate.profiles import LinkProfile

LINE_CAP = 8 * 1024  # longer lines are handled in fragments (they are never boundaries)
HEADER_CAP = 64 * 1024
MAX_DEPTH = 12
_CRLF = b"\r\n"
_MAX_8BIT_LINE = 998
_WORD_SLACK = 64  # a short field re-encoded may gain a charset label and a fold  # RFC 5322 2.1.1: longer lines go quoted-printable


@dataclass(frozen=True)
class Stub:
    """An attachment left out: its section, file name, type and (decoded, estimated) size."""

    section: str
    filename: str | None
    content_type: str
    size: int


@dataclass
class LeanReport:
    """What a rendition left out, for the audit trail, logs and tests."""

    stubs: list[Stub] = field(default_factory=list)
    truncated: list[tuple[str, int]] = field(default_factory=list)  # (section, bytes left out)
    dropped: list[str] = field(default_factory=list)  # alternatives left out
    protected: bool = False  # the message is signed or encrypted as a whole: unchanged
    copied_rest: bool = False  # rule 4: the input stopped parsing and was copied from there
    input_bytes: int = 0
    output_bytes: int = 0


class _Mode(enum.Enum):
    HEADER = "header"
    BODY = "body"
    RAW = "raw"  # copy everything that is left


@dataclass
class _Multipart:
    boundary: bytes
    subtype: str
    section: str  # "" for the message itself
    children: int = 0
    emitted: bool = False  # a delimiter has been written
    kept_text: bool = False  # alternative: a plain text alternative is in the output


@dataclass
class _PartInfo:
    section: str
    header: bytes
    ctype: str
    charset: str | None
    cte: str
    filename: str | None
    attachment: bool
    top: bool  # the message's own header (a single-part message)
    parent: _Multipart | None


def _parse_header(header: bytes) -> Message:
    return BytesHeaderParser(policy=compat32).parsebytes(header)


def _strip_eol(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def _human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def _ascii(text: str) -> str:
    """A header parameter value that needs no encoding (file names are in the body text)."""
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in text)[:120]


class _Consumer:
    """Receives the body lines of one part, each with its line end (or a long-line fragment)."""

    def __init__(self) -> None:
        self.size = 0  # body bytes seen

    def line(self, data: bytes) -> None:
        self.size += len(data)

    def end(self, *, eof: bool) -> None:
        """The body is over: at a boundary (whose CRLF is not the body's) or at the input's end."""

    @property
    def counting(self) -> bool:
        """True when lines are only counted (the fast path may skip them in bulk)."""
        return True


class _Skip(_Consumer):
    """A preamble, an epilogue or a part left out: counted only."""


class _Pass(_Consumer):
    """Emits lines as they come, holding back the last line end (it may belong to a boundary)."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        super().__init__()
        self.emit = emit
        self.held = b""

    @property
    def counting(self) -> bool:
        return False

    def line(self, data: bytes) -> None:
        self.size += len(data)
        if self.held:
            self.emit(self.held)
            self.held = b""
        body = _strip_eol(data)
        self.held = data[len(body) :]
        if body:
            self.emit(body)

    def end(self, *, eof: bool) -> None:
        if eof and self.held:
            self.emit(self.held)
        self.held = b""


class _Hold(_Consumer):
    """Keeps up to `cap` bytes, then only counts; finish() decides what the part becomes.

    sniff: called with the first line; a consumer it returns takes over the whole body (an
    inline PGP message must pass unchanged, however long).
    """

    def __init__(
        self,
        cap: int,
        finish: Callable[[_Hold], None],
        sniff: Callable[[bytes], _Consumer | None] | None = None,
    ) -> None:
        super().__init__()
        self.cap = cap
        self.data = bytearray()
        self.overflow = False
        self.content = 0  # bytes other than CR and LF (base64 size estimates)
        self._finish = finish
        self._sniff = sniff
        self._taken: _Consumer | None = None

    @property
    def counting(self) -> bool:
        return self.overflow if self._taken is None else self._taken.counting

    def line(self, data: bytes) -> None:
        if self._sniff is not None:
            sniff, self._sniff = self._sniff, None
            self._taken = sniff(data)
        if self._taken is not None:
            self._taken.line(data)
            return
        self.size += len(data)
        self.content += len(data) - data.count(b"\n") - data.count(b"\r")
        if self.overflow:
            return
        if len(self.data) + len(data) > self.cap:
            self.overflow = True
            self.data += data[: max(0, self.cap - len(self.data))]
            return
        self.data += data

    def end(self, *, eof: bool) -> None:
        if self._taken is not None:
            self._taken.end(eof=eof)
            return
        if not eof and not self.overflow:
            self.data[:] = _strip_eol(bytes(self.data))
        self._finish(self)


class LeanRenderer:
    """One message in, its lean rendition out; see the module docstring for the rules."""

    def __init__(
        self,
        profile: LinkProfile,
        *,
        profile_name: str,
        original_login: str | None = None,
    ) -> None:
        self.profile = profile
        self.profile_name = profile_name
        # Said in every marker: the account that shows messages as stored (`bob#lan`).
        self.original_login = original_login
        self.report = LeanReport()
        self._out = bytearray()
        self._line = bytearray()
        self._continuing = False  # _line continues a line already handed on in fragments
        self._mode = _Mode.HEADER
        self._header = bytearray()
        self._stack: list[_Multipart] = []
        self._consumer: _Consumer = _Skip()
        self._section = ""  # of the part whose header is being read
        self._budget = profile.text_budget
        self._closed = False
        self._top_multipart = False

    # -- public API ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Take more of the stored message; return the rendition bytes that are now final."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        self.report.input_bytes += len(data)
        try:
            return self._feed(data)
        except Exception:  # noqa: BLE001 - rule 4, a last net: never fail the session
            return self._copy_rest()

    def _copy_rest(self) -> bytes:
        """After an unexpected error: what is not handled yet, then everything else, as it is."""
        self.report.copied_rest = True
        self._emit(bytes(self._line))
        self._line.clear()
        self._mode = _Mode.RAW
        return self._take()

    def _feed(self, data: bytes) -> bytes:
        if self._mode is _Mode.RAW:
            self._emit(data)
            return self._take()
        buf = self._line
        buf += data
        start = 0
        try:
            while start < len(buf):
                if self._copying():
                    self._emit(bytes(buf[start:]))
                    start = len(buf)
                    break
                if self._mode is _Mode.BODY and self._consumer.counting and not self._continuing:
                    start = self._count_fast(buf, start)
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                self._on_line(bytes(buf[start : nl + 1]))
                start = nl + 1
        finally:
            # Also on an error: what was handled goes, so _copy_rest copies each byte once.
            del buf[:start]
        if len(buf) > LINE_CAP:
            self._on_fragment(bytes(buf))
            buf.clear()
        return self._take()

    def close(self) -> bytes:
        """The stored message is complete: return the rest of the rendition."""
        if self._closed:
            return b""
        try:
            return self._close()
        except Exception:  # noqa: BLE001 - rule 4, a last net: never fail the session
            return self._copy_rest()

    def _close(self) -> bytes:
        self._closed = True
        if self._mode is _Mode.RAW:
            self._emit(bytes(self._line))
            return self._take()
        if self._line:
            tail = bytes(self._line)
            self._line.clear()
            if self._continuing:
                self._on_fragment(tail)
            else:
                self._on_line(tail)
        if self._copying():
            return self._take()
        if self._mode is _Mode.HEADER:
            # A header without a body (or a part cut short): it ends here.
            self._end_header()
        self._consumer.end(eof=True)
        self._consumer = _Skip()
        while self._stack:
            self._close_multipart(self._stack.pop())
        if self._top_multipart:
            self._emit(_CRLF)  # after the last close delimiter (the epilogue is left out)
        return self._take()

    def _copying(self) -> bool:
        """Rule 1 or 4 holds from here on: the rest is copied (mode may change on each line)."""
        return self._mode is _Mode.RAW

    # -- lines --------------------------------------------------------------------------------

    def _count_fast(self, buf: bytearray, start: int) -> int:
        """Count whole lines in one go while the consumer only counts (attachment bodies).

        Only a line that starts with `--` can be a boundary; those get a look of their own.
        """
        if buf.startswith(b"--", start):
            return start
        cut = buf.find(b"\n--", start)
        end = cut + 1 if cut >= 0 else buf.rfind(b"\n", start) + 1
        if end > start:
            self._consumer.line(bytes(buf[start:end]))
            return end
        return start

    def _on_fragment(self, data: bytes) -> None:
        """Part of a line over LINE_CAP: never a boundary, never the end of a header."""
        self._continuing = True
        if self._mode is _Mode.HEADER:
            self._header += data
            if len(self._header) > HEADER_CAP:
                self._give_up()
        elif self._mode is _Mode.BODY:
            self._consumer.line(data)
        else:
            self._emit(data)

    def _on_line(self, line: bytes) -> None:
        continuing, self._continuing = self._continuing, False
        if not continuing and line[:2] == b"--" and self._stack:
            match = self._boundary(line)
            if match is not None:
                self._at_boundary(*match)
                return
        if self._mode is _Mode.HEADER:
            if not continuing and line in (b"\r\n", b"\n"):
                self._header += line
                self._end_header()
                return
            self._header += line
            if len(self._header) > HEADER_CAP:
                self._give_up()
            return
        self._consumer.line(line)

    def _boundary(self, line: bytes) -> tuple[int, bool] | None:
        rest = _strip_eol(line)[2:]
        for i in range(len(self._stack) - 1, -1, -1):
            b = self._stack[i].boundary
            if rest.startswith(b):
                tail = rest[len(b) :]
                close = tail.startswith(b"--")
                if close:
                    tail = tail[2:]
                if not tail.strip(b" \t"):
                    return i, close
        return None

    def _at_boundary(self, level: int, close: bool) -> None:
        if self._mode is _Mode.HEADER:
            self._end_header()  # a part without a blank line: its body is empty
        self._consumer.end(eof=False)
        self._consumer = _Skip()
        while len(self._stack) > level + 1:
            self._close_multipart(self._stack.pop())
        parent = self._stack[level]
        if close:
            self._close_multipart(self._stack.pop())
            self._mode = _Mode.BODY  # the epilogue, left out
            return
        parent.children += 1
        prefix = parent.section + "." if parent.section else ""
        self._section = f"{prefix}{parent.children}"
        self._header.clear()
        self._mode = _Mode.HEADER

    def _close_multipart(self, mp: _Multipart) -> None:
        if not mp.emitted:
            # Every part was left out: one empty part keeps the multipart valid MIME.
            self._delimiter(mp)
            self._emit(b"Content-Type: text/plain; charset=us-ascii\r\n\r\n")
        self._emit(_CRLF + b"--" + mp.boundary + b"--")

    def _delimiter(self, mp: _Multipart) -> None:
        self._emit((_CRLF if mp.emitted else b"") + b"--" + mp.boundary + _CRLF)
        mp.emitted = True

    def _open(self, parent: _Multipart | None) -> None:
        """A part's output begins: write the delimiter before it."""
        if parent is not None:
            self._delimiter(parent)

    # -- headers ------------------------------------------------------------------------------

    def _end_header(self) -> None:
        header = bytes(self._header)
        try:
            self._start_part(header)
        except Exception:  # noqa: BLE001 - rule 4: a header the email package chokes on
            self._header[:] = header
            self._give_up()

    def _start_part(self, header: bytes) -> None:
        self._header.clear()
        self._mode = _Mode.BODY
        top = not self._stack and self._section == ""
        parent = self._stack[-1] if self._stack else None
        if parent is not None and parent.subtype == "alternative" and parent.kept_text:
            # The plain text of this alternative is in the output already: every later
            # alternative goes, whatever it holds (an HTML part with its inline images).
            self.report.dropped.append(self._section)
            self._consumer = _Skip()
            return
        msg = _parse_header(header)
        default = "message/rfc822" if parent is not None and parent.subtype == "digest" else None
        ctype = msg.get_content_type() if msg.get("Content-Type") or default is None else default
        if top and ctype in PROTECTED_TYPES:
            # Rule 1: signed or encrypted as a whole; not even the header changes.
            self.report.protected = True
            self._emit(header)
            self._mode = _Mode.RAW
            return
        section = self._section or "1"
        if ctype in PROTECTED_TYPES:
            self._open(parent)
            self._emit(header)
            self._consumer = _Pass(self._emit)
            return
        boundary = msg.get_param("boundary") if ctype.startswith("multipart/") else None
        if isinstance(boundary, str) and boundary and len(self._stack) < MAX_DEPTH:
            # The header was read as ASCII with surrogate escapes: these are its own bytes.
            raw_boundary = boundary.encode("ascii", "surrogateescape")
            self._open(parent)
            self._emit(self._top_header(header) if top else header)
            self._top_multipart = self._top_multipart or top
            subtype = ctype.split("/", 1)[1]
            self._stack.append(_Multipart(raw_boundary, subtype, self._section))
            self._consumer = _Skip()  # the preamble
            return
        disposition = (msg.get_content_disposition() or "").lower()
        filename = msg.get_filename()
        charset = msg.get_content_charset()
        info = _PartInfo(
            section=section,
            header=header,
            ctype=ctype,
            charset=charset,
            # str(): a field with 8-bit bytes comes back as an email.header.Header object.
            cte=str(msg.get("Content-Transfer-Encoding") or "7bit").strip().lower(),
            filename=filename if isinstance(filename, str) else None,
            attachment=disposition == "attachment"
            or (filename is not None and disposition != "inline"),
            top=top,
            parent=parent,
        )
        if ctype.startswith("text/") and not info.attachment and self._budget > 0:
            if parent is not None and parent.subtype == "alternative" and ctype == "text/plain":
                parent.kept_text = True
            cap = 3 * self._budget + 4096
            self._consumer = _Hold(
                cap, lambda h: self._finish_text(info, h), lambda first: self._sniff(info, first)
            )
            return
        self._consumer = _Hold(
            self.profile.stub_threshold, lambda h: self._finish_attachment(info, h)
        )

    def _sniff(self, info: _PartInfo, first: bytes) -> _Consumer | None:
        """Inline PGP (signed or encrypted text) passes unchanged, like S/MIME (rule 1)."""
        if not first.startswith(b"-----BEGIN PGP "):
            return None
        self._open(info.parent)
        self._emit(self._top_header(info.header) if info.top else info.header)
        return _Pass(self._emit)

    def _top_header(self, header: bytes) -> bytes:
        if self.profile.header_policy == "reader":
            header = reader_header(header, self.profile.keep_headers)
        if self.profile.to_utf8:
            header = _utf8_words(header)
        return header

    # -- leaf parts ---------------------------------------------------------------------------

    def _finish_attachment(self, info: _PartInfo, hold: _Hold) -> None:
        over_cap = bool(self.profile.max_message_bytes) and (
            self.report.output_bytes + len(self._out) + len(hold.data)
            > self.profile.max_message_bytes
        )
        if not hold.overflow and not over_cap:
            self._open(info.parent)
            self._emit(self._top_header(info.header) if info.top else info.header)
            self._emit(bytes(hold.data))
            return
        size = hold.content * 3 // 4 if info.cte == "base64" else hold.size
        stub = Stub(info.section, info.filename, info.ctype, size)
        self.report.stubs.append(stub)
        what = "attached message" if info.ctype == "message/rfc822" else "attachment"
        name = f' "{info.filename}"' if info.filename else ""
        text = (
            f"[roamgate: {what}{name} ({info.ctype}, about {_human_size(size)}) was not sent"
            f" over the {self.profile_name} link. To download it, fetch part {info.section}"
            f" (BODY[{info.section}]){self._original_hint()}.]\r\n"
        )
        label = _ascii(info.filename or info.ctype.replace("/", "-"))
        fields_ = (
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n"
            "Content-Disposition: inline\r\n"
            f'Content-Description: "{label}" not sent, {size} bytes\r\n'
        ).encode()
        self._emit_leaf(info, fields_, text.encode("utf-8"))

    def _finish_text(self, info: _PartInfo, hold: _Hold) -> None:
        raw = bytes(hold.data)
        complete = not hold.overflow
        decoded = _transfer_decode(raw, info.cte, complete=complete)
        is_html = info.ctype == "text/html"
        charset = (info.charset or "us-ascii").lower()
        foreign = charset not in ("us-ascii", "utf-8", "utf8", "ascii")
        small = complete and len(decoded) <= self._budget
        if (
            small
            and not (is_html and self.profile.html_to_text)
            and not (foreign and self.profile.to_utf8)
        ):
            self._budget -= len(decoded)
            self._open(info.parent)
            self._emit(self._top_header(info.header) if info.top else info.header)
            self._emit(raw)
            return
        text = charsets.decode_text(decoded, info.charset)
        if is_html:
            text = html_text.html_to_text(text, max_chars=self._budget + 1024)
        # Counted in CRLF lines, as the text is sent (before any quoted-printable for long
        # lines): counted in LF lines, a body of short lines overran the budget by a byte a
        # line (hypothesis found it).
        data = text.replace("\r\n", "\n").encode("utf-8").replace(b"\n", _CRLF)
        kept = _cut(data, self._budget)
        self._budget = max(0, self._budget - len(kept))
        left_out = len(data) - len(kept)
        if not complete:
            # The part of the body never held is estimated at the ratio of text to encoded
            # bytes seen in the part that was (it covers base64, QP and charset changes).
            ratio = len(data) / max(1, len(raw))
            left_out += int((hold.size - len(raw)) * ratio)
        body = kept
        if left_out > 0:
            self.report.truncated.append((info.section, left_out))
            if not body.endswith(_CRLF):
                body += _CRLF
            body += (
                f"\r\n[roamgate: about {_human_size(left_out)} more of this text was not sent"
                f" over the {self.profile_name} link. To read all of it, fetch part"
                f" {info.section} (BODY[{info.section}]){self._original_hint()}.]\r\n"
            ).encode()
        cte = "8bit"
        if any(len(line) > _MAX_8BIT_LINE for line in body.split(_CRLF)):
            body = quopri.encodestring(body.replace(_CRLF, b"\n")).replace(b"\n", _CRLF)
            cte = "quoted-printable"
        fields_ = (
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n"
        ).encode()
        self._emit_leaf(info, fields_, body)

    def _emit_leaf(self, info: _PartInfo, content_fields: bytes, body: bytes) -> None:
        """A rewritten leaf: its header keeps what is not Content-*, with new content fields."""
        self._open(info.parent)
        kept = bytearray()
        base = self._top_header(info.header) if info.top else info.header
        for name, field_ in fields(base):
            if field_ in (b"\r\n", b"\n"):
                continue
            if name.startswith("content-") and name not in ("content-id", "content-language"):
                continue
            kept += field_
        self._emit(bytes(kept) + content_fields + _CRLF)
        if info.parent is not None and body.endswith(_CRLF):
            body = body[:-2]  # the delimiter that follows brings its own CRLF
        self._emit(body)

    def _original_hint(self) -> str:
        if self.original_login:
            return f", or open the message in the account {self.original_login}"
        return ""

    # -- output -------------------------------------------------------------------------------

    def _give_up(self) -> None:
        """Rule 4: copy the rest as it is (what was read of the current part first)."""
        self.report.copied_rest = True
        if self._stack:
            self._open(self._stack[-1])  # the held header is a part's: it keeps its delimiter
        self._emit(bytes(self._header))
        self._header.clear()
        self._mode = _Mode.RAW

    def _emit(self, data: bytes) -> None:
        self._out += data

    def _take(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        self.report.output_bytes += len(out)
        return out


def _transfer_decode(raw: bytes, cte: str, *, complete: bool) -> bytes:
    """The content bytes of a body; a cut-off body is decoded up to its last whole unit."""
    if cte == "base64":
        data = re.sub(rb"[^A-Za-z0-9+/=]", b"", raw)
        data = data[: len(data) - len(data) % 4]
        try:
            return binascii.a2b_base64(data)
        except (binascii.Error, ValueError):
            return b""  # not base64 after all: the marker still says how much there is
    if cte == "quoted-printable":
        if not complete:
            nl = raw.rfind(b"\n")
            raw = raw[: nl + 1] if nl >= 0 else raw
        return quopri.decodestring(raw)
    return raw


def _cut(data: bytes, budget: int) -> bytes:
    """At most `budget` bytes of UTF-8 text, cut at a line end when one is near the limit."""
    if len(data) <= budget:
        return data
    head = data[:budget]
    nl = head.rfind(b"\n")
    if nl >= budget * 3 // 4:
        return head[: nl + 1]
    # Back off to a character boundary (never split a UTF-8 sequence, nor a CRLF).
    end = budget
    while end > 0 and ((data[end] & 0xC0) == 0x80 or data[end - 1 : end + 1] == _CRLF):
        end -= 1
    return data[:end]


def _utf8_words(header: bytes) -> bytes:
    """Encoded-words in any charset re-encoded as UTF-8 ones (the pda profile)."""
    out = bytearray()
    for name, field_ in fields(header):
        if name and b"=?" in field_:
            colon = field_.index(b":")
            value = field_[colon + 1 :].decode("ascii", "replace").strip()
            converted = charsets.header_to_utf8(value).replace("\r\n", "\n")
            folded = converted.replace("\n", "\r\n").encode("ascii", "replace")
            rewritten = field_[: colon + 1] + b" " + folded + _CRLF
            # Raw 8-bit bytes beside an encoded word become one replacement character each,
            # over four bytes once encoded again: such a field keeps its own bytes instead, so
            # a hostile header cannot blow up the rendition (it stays within twice the input).
            out += rewritten if len(rewritten) <= 2 * len(field_) + _WORD_SLACK else field_
        else:
            out += field_
    return bytes(out)
