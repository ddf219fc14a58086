"""Render an HTML mail part as wrapped plain text for clients that cannot show HTML."""

# Built on the stdlib `html.parser` (html2text is GPL). Python 3.11's parser has two traps that
# hostile mail can spring: `close()` re-scans an unterminated tag to the end of the input once per
# `<` (quadratic: 45 s for 120 kB of `<a b="`), and a `<![` it does not know raises
# AssertionError. So the renderer never calls `close()` (an unterminated construct at the end is
# dropped, as browsers do), neutralises unknown `<![` sections first, and feeds the page in chunks
# that grow with the parser's backlog, which keeps the work linear and lets `max_chars` stop early.

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser

__all__ = ["html_to_text"]

WIDTH = 72
_CHUNK = 16_384
_MAX_DEPTH = 512  # browsers cap nesting too; a deeper element is rendered but not tracked
_MARKER = "[...]"
# With max_chars, markup-only pages (a 10 MB tree of empty <div>s) must not be parsed to the end
# either: reading stops after this many source characters per wanted output character.
_SOURCE_PER_CHAR = 200

_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param"}
) | {"source", "track", "wbr", "keygen", "basefont", "frame"}
# Content no reader sees: code, metadata, and the <svg> or <template> that would leak its text.
_INVISIBLE = frozenset(
    {"script", "style", "head", "title", "template", "svg", "math", "object", "iframe"}
) | {"noembed", "noframes", "select", "datalist", "audio", "video", "canvas", "applet"}
# Blocks set off by a blank line, and blocks that only start a new line.
_PARAGRAPHS = frozenset({"p", "pre", "blockquote", "table", "hr", "dl", "figure", "address"})
_LINES = (
    frozenset(
        {"div", "li", "tr", "dt", "dd", "section", "article", "header", "footer", "nav", "main"}
    )
    | {"aside", "center", "form", "fieldset", "legend", "caption", "figcaption", "details"}
    | {
        "summary",
        "option",
        "body",
        "html",
        "ul",
        "ol",
        "menu",
        "dir",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
    }
)
_HEADINGS = {"h1": "=", "h2": "-", "h3": "-", "h4": "-", "h5": "-", "h6": "-"}
# Elements whose start implicitly closes an open one of these names (the HTML "optional end tag"
# rules, cut down): without it `<li>a<li>b` would nest b inside a.
_CLOSES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "li": (frozenset({"li"}), frozenset({"ul", "ol", "menu", "dir"})),
    "dt": (frozenset({"dt", "dd"}), frozenset({"dl"})),
    "dd": (frozenset({"dt", "dd"}), frozenset({"dl"})),
    "tr": (frozenset({"tr", "td", "th"}), frozenset({"table"})),
    "td": (frozenset({"td", "th"}), frozenset({"tr", "table"})),
    "th": (frozenset({"td", "th"}), frozenset({"tr", "table"})),
    "p": (frozenset({"p"}), frozenset({"div", "td", "th", "li", "blockquote", "body"})),
    "a": (frozenset({"a"}), frozenset()),
    "option": (frozenset({"option"}), frozenset({"select"})),
}
# Characters that mail templates use for padding and that a plain-text reader should not see.
_INVISIBLE_CHARS = str.maketrans(
    dict.fromkeys(["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u034f", "\u00ad"])
)
_SPACES = re.compile(r"[ \t\n\r\f\xa0]+")
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all", re.I)
# A `<![` section the 3.11 parser understands; any other one makes it raise AssertionError.
_BAD_MARKED_SECTION = re.compile(
    r"<!\[(?!(?:cdata|temp|ignore|include|rcdata|if|else|endif)(?![-_.a-z0-9]))", re.I
)
_URL_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:", re.I)
_SKIPPED_SCHEMES = ("javascript:", "vbscript:", "data:", "about:", "cid:", "file:")
_HEAD_CONTENT = frozenset({"title", "meta", "link", "style", "script", "base", "noscript"})


def html_to_text(html: str, *, max_chars: int | None = None) -> str:
    """HTML to plain text: wrapped at 72 columns, links numbered and listed at the end.

    With `max_chars`, parsing stops once that much text exists, the text is cut at a line or
    word boundary and a `[...]` line marks the cut; the URLs the kept text cites follow it, and
    the whole result stays within `max_chars` (the marker alone may exceed a tiny limit).
    """
    renderer = _Renderer(budget=None if max_chars is None else max(max_chars, 0) + WIDTH)
    source = _BAD_MARKED_SECTION.sub("&lt;![", html)
    pos, chunk = 0, _CHUNK
    end = len(source) if max_chars is None else min(len(source), _SOURCE_PER_CHAR * max_chars)
    while pos < end and not renderer.full:
        renderer.feed(source[pos : pos + chunk])
        pos += chunk
        # A construct still open after a whole chunk is re-scanned on every feed; growing the
        # next chunk with the backlog keeps the total re-scanning linear.
        chunk = max(_CHUNK, len(renderer.rawdata))
    renderer.finish()
    return renderer.render(max_chars, stopped_early=pos < len(source))


@dataclass
class _Element:
    tag: str
    invisible: bool = False
    list_kind: str = ""  # "ul" or "ol" for a list
    counter: int = 0  # the next ordered-list number
    cells: int = 0  # cells seen in this table row
    indent: str = ""  # the continuation prefix this element adds ("> ", hanging indent)
    link: _Link | None = None
    spaced: bool = False  # set off from its neighbours by a blank line


@dataclass
class _Link:
    href: str
    text: list[str] = field(default_factory=list)


class _Renderer(HTMLParser):
    """Turns parser callbacks into wrapped lines; tracks open elements like a forgiving browser."""

    def __init__(self, budget: int | None) -> None:
        super().__init__(convert_charrefs=True)
        self.budget = budget
        self.full = False
        self.lines: list[str] = []
        self.chars = 0
        self.links: dict[str, int] = {}
        self._stack: list[_Element] = []
        self._open: dict[str, int] = {}
        self._invisible = 0
        self._pre = 0
        self._quote = 0
        self._buffer: list[str] = []
        self._buffered = 0
        self._marker = ""  # list marker waiting for the item's first line
        self._separator = False  # a table cell started: " | " before its first text
        self._want_blank = False
        self._heading = ""
        self._links_open: list[_Link] = []

    # --- parser callbacks ---

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag in _CLOSES:
            closes, scope = _CLOSES[tag]
            self._close_implied(closes, scope)
        if self._open.get("head") and tag not in _HEAD_CONTENT:
            # <body>, or body content after a missing </head>: the head ends here, as in browsers.
            self._close_implied(frozenset({"head"}), frozenset())
        if tag in _VOID:
            if not self._invisible:
                self._void(tag, attributes)
            return
        if len(self._stack) >= _MAX_DEPTH:
            return  # too deep to track: its text still shows, its structure does not
        element = _Element(tag)
        style = attributes.get("style", "")
        element.invisible = (
            tag in _INVISIBLE or "hidden" in attributes or bool(_HIDDEN_STYLE.search(style))
        )
        self._stack.append(element)
        self._open[tag] = self._open.get(tag, 0) + 1
        if element.invisible:
            self._invisible += 1
        if self._invisible:
            return
        self._open_visible(element, attributes)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "br":  # browsers read a stray </br> as <br>
            self.handle_starttag("br", [])
            return
        if not self._open.get(tag):
            return  # no such element open: ignore, as browsers do
        while self._stack:
            popped = self._stack[-1].tag
            self._pop()
            if popped == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._invisible or self.full:
            return
        data = data.translate(_INVISIBLE_CHARS)
        if not self._pre:
            data = _SPACES.sub(" ", data)
        if not data:
            return
        if self._separator and data.strip():
            if "".join(self._buffer).strip():
                self._buffer.append(" | ")
            self._separator = False
        self._buffer.append(data)
        self._buffered += len(data)
        if self.budget is not None and self.chars + self._buffered >= self.budget:
            self.full = True  # one endless paragraph is enough text too
        for link in self._links_open:
            link.text.append(data)

    # --- structure ---

    def _close_implied(self, closes: frozenset[str], scope: frozenset[str]) -> None:
        for depth in range(len(self._stack) - 1, -1, -1):
            tag = self._stack[depth].tag
            if tag in scope:
                return
            if tag in closes:
                while len(self._stack) > depth:
                    self._pop()
                return

    def _pop(self) -> None:
        """Close the innermost element; it stays on the stack until its last line has its prefix."""
        element = self._stack[-1]
        if element.invisible:
            self._invisible -= 1
        elif not self._invisible:
            self._close_visible(element)
        self._stack.pop()
        self._open[element.tag] -= 1

    def _list_depth(self) -> int:
        return sum(1 for element in self._stack if element.list_kind)

    def _open_visible(self, element: _Element, attributes: dict[str, str]) -> None:
        tag = element.tag
        if tag in _PARAGRAPHS or tag in _LINES:
            self._flush()
        # Outlook writes each line as <p class=MsoNormal> with no margin: no blank line there.
        outlook_line = tag == "p" and "msonormal" in attributes.get("class", "").lower()
        element.spaced = not outlook_line and (
            tag in _PARAGRAPHS or (tag in {"ul", "ol", "dl"} and self._list_depth() == 0)
        )
        if element.spaced:
            self._want_blank = True
        if tag in {"ul", "ol", "menu", "dir"}:
            element.list_kind = "ol" if tag == "ol" else "ul"
            start = attributes.get("start", "1").strip()
            element.counter = int(start) if start.isdigit() and len(start) < 9 else 1
        elif tag == "li":
            self._start_item(element)
        elif tag in _HEADINGS:
            self._want_blank = True
            self._heading = tag
        elif tag == "blockquote":
            self._quote += 1
            element.indent = "> "
        elif tag == "pre":
            self._pre += 1
        elif tag == "tr":
            element.cells = 0
        elif tag in {"td", "th"}:
            row = next((e for e in reversed(self._stack[:-1]) if e.tag == "tr"), None)
            if row is not None:
                row.cells += 1
                self._separator = row.cells > 1
        elif tag == "a":
            href = re.sub(r"\s+", "", attributes.get("href", ""))
            element.link = _Link(href)
            self._links_open.append(element.link)

    def _start_item(self, element: _Element) -> None:
        parent = next((e for e in reversed(self._stack[:-1]) if e.list_kind), None)
        if parent is not None and parent.list_kind == "ol":
            self._marker = f"{parent.counter}. "
            parent.counter += 1
        else:
            self._marker = "- "
        element.indent = " " * len(self._marker)

    def _close_visible(self, element: _Element) -> None:
        tag = element.tag
        if element.link is not None:
            self._close_link(element.link)
        if (tag in _PARAGRAPHS or tag in _LINES) and not self._flush() and tag == "p":
            self._want_blank = True  # <p>&nbsp;</p>: how Outlook writes an empty line
        if tag in _HEADINGS:
            self._heading = ""
        if element.spaced:
            self._want_blank = True
        if tag in _HEADINGS:
            self._want_blank = True
        elif tag == "blockquote":
            self._quote -= 1
        elif tag == "pre":
            self._pre -= 1
        elif tag == "li":
            self._marker = ""

    def _close_link(self, link: _Link) -> None:
        if link in self._links_open:
            self._links_open.remove(link)
        text = _SPACES.sub(" ", "".join(link.text)).strip()
        href = link.href
        if not text or not _URL_SCHEME.match(href) or href.lower().startswith(_SKIPPED_SCHEMES):
            return  # "#top" anchors, relative links a phone cannot follow, script and images
        if href.lower().startswith("mailto:"):
            address = href[7:].split("?", 1)[0]
            if address and address.lower() in text.lower():
                return  # the text already shows the address
        bare = re.sub(r"^[a-z]+://", "", href, flags=re.I).rstrip("/")
        if text.rstrip("/") in {href.rstrip("/"), bare}:
            return  # the text is the URL
        number = self.links.setdefault(href, len(self.links) + 1)
        self._buffer.append(f" [{number}]")

    def _void(self, tag: str, attributes: dict[str, str]) -> None:
        if tag == "br":
            self._buffer.append("\n")
        elif tag == "hr":
            self._flush()
            self._want_blank = True
            self._emit(["-" * 20], "")
            self._want_blank = True
        elif tag == "img":
            alt = _SPACES.sub(" ", attributes.get("alt", "")).strip()
            tiny = attributes.get("width", "").strip() in {"0", "1"}
            if alt and not tiny:
                self.handle_data(f" [image: {alt}] ")
        elif tag == "input" and attributes.get("type", "").lower() in {"submit", "button"}:
            value = attributes.get("value", "").strip()
            if value:
                self.handle_data(f" [{value}] ")

    # --- output ---

    def _prefix(self) -> str:
        return "".join(element.indent for element in self._stack if not element.invisible)

    def _flush(self) -> bool:
        """Wrap and emit the buffered text of the block that ends; False if it had none."""
        text = "".join(self._buffer)
        self._buffer, self._buffered, self._separator = [], 0, False
        if not text.strip(" "):
            if "\n" in text:  # <div><br></div>: the line a browser shows as empty
                self._want_blank = True
            return False
        prefix = self._prefix()
        if self._pre:
            lines = text.expandtabs(8).split("\n")
            while lines and not lines[-1].strip():
                lines.pop()
            while lines and not lines[0].strip():
                lines.pop(0)
            self._emit(lines, prefix)
            return True
        segments = text.split("\n")
        if len(segments) > 1 and not segments[-1].strip():
            segments.pop()  # a <br> that ends a block adds no line
        for segment in segments:
            segment = _SPACES.sub(" ", segment).strip()
            if not segment:
                self._want_blank = True
                continue
            if self._heading:
                self._emit_heading(segment, prefix)
            else:
                self._emit_wrapped(segment, prefix)
        return True

    def _emit_heading(self, text: str, prefix: str) -> None:
        lines = _wrap(text, _first_width(prefix))
        self._emit(lines, prefix)
        underline = _HEADINGS[self._heading] * min(max(_width(line) for line in lines), WIDTH)
        self._emit([underline], prefix)

    def _emit_wrapped(self, text: str, prefix: str) -> None:
        self._emit(_wrap(text, _first_width(prefix)), prefix)

    def _emit(self, lines: list[str], prefix: str) -> None:
        for line in lines:
            if self._want_blank and self.lines and self.lines[-1].strip(" >"):
                # Inside a quote the blank line keeps the "> " bar; at its edges it is empty.
                quote = "> " * self._quote
                self._append(quote.rstrip() if self.lines[-1].startswith(quote) else "")
            self._want_blank = False
            if self._marker:
                # The item's hanging indent is the last part of the prefix: the marker replaces it.
                self._append(prefix[: len(prefix) - len(self._marker)] + self._marker + line)
                self._marker = ""
            else:
                self._append(prefix + line)

    def _append(self, line: str) -> None:
        self.lines.append(line.rstrip())
        self.chars += len(line) + 1
        if self.budget is not None and self.chars >= self.budget:
            self.full = True

    def finish(self) -> None:
        """Handle the end of input without close(): see the module docstring for why."""
        tail = self.rawdata
        self.rawdata = ""
        if tail and not tail.startswith("<") and not self.cdata_elem:
            self.handle_data(html.unescape(tail))  # text held back for a possible "&amp;"
        while self._stack:
            self._pop()
        self._flush()

    def render(self, max_chars: int | None, *, stopped_early: bool) -> str:
        lines = list(self.lines)
        while lines and not lines[-1].strip(" >"):
            lines.pop()
        links = self._link_lines(lines)
        text = "\n".join(lines + (["", *links] if links else []))
        if max_chars is None or (len(text) <= max_chars and not stopped_early):
            return text
        lines = self._cut(lines, max_chars)
        links = self._link_lines(lines)
        return "\n".join(lines + [_MARKER] + (["", *links] if links else []))

    def _link_lines(self, lines: list[str]) -> list[str]:
        text = "\n".join(lines)
        return [f"[{n}] {href}" for href, n in self.links.items() if f"[{n}]" in text]

    def _cut(self, lines: list[str], max_chars: int) -> list[str]:
        budget = max_chars - len(_MARKER) - 1
        while True:
            kept = _cut_lines(lines, max(budget, 0))
            links = self._link_lines(kept)
            size = len("\n".join([*kept, _MARKER, *(["", *links] if links else [])]))
            if size <= max_chars or not kept:
                return kept
            budget -= size - max_chars


def _cut_lines(lines: list[str], budget: int) -> list[str]:
    kept: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) > budget:
            room = budget - used
            head = line[: max(room, 0)]
            # Cut after a word when one ends in the second half of the room; a lone giant word
            # (or a line of "<<<<") is cut where the room ends.
            space = head.rfind(" ")
            head = head[:space] if space > room // 2 else head
            if head.strip(" >-"):
                kept.append(head.rstrip())
            break
        kept.append(line)
        used += len(line) + 1
    return kept


def _width(text: str) -> int:
    """Columns on a terminal: East Asian wide and full-width characters take two."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _first_width(prefix: str) -> int:
    return max(WIDTH - _width(prefix), 20)


def _wrap(text: str, width: int) -> list[str]:
    """Greedy fill on spaces; a word wider than the line (a URL) stays whole on its own line,
    except wide-character text (Japanese has no spaces), which breaks between characters."""
    lines: list[str] = []
    line, used = "", 0
    for word in text.split(" "):
        if not word:
            continue
        size = _width(word)
        if size > width and size != len(word):
            room = width - used - (1 if line else 0)
            pieces = _split_wide(word, room if room >= 2 else width, width)
        else:
            pieces = [word]
        for piece in pieces:
            size = _width(piece)
            if line and used + 1 + size > width:
                lines.append(line)
                line, used = "", 0
            line, used = (line + " " + piece, used + 1 + size) if line else (piece, size)
    if line:
        lines.append(line)
    return lines


def _split_wide(word: str, room: int, width: int) -> list[str]:
    pieces: list[str] = []
    piece, used, limit = "", 0, max(room, 1)
    for char in word:
        size = 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if piece and used + size > limit:
            pieces.append(piece)
            piece, used, limit = "", 0, width
        piece += char
        used += size
    if piece:
        pieces.append(piece)
    return pieces
