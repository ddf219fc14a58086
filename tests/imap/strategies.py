"""Hypothesis strategies writing valid (and broken) IMAP commands and responses as bytes.

They render bytes by hand, independently of the serializer under test, so that
serialize(parse(b)) == b is a real check.
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

CRLF = b"\r\n"
_ATOM_CHARS = string.ascii_letters + string.digits + "!#$&'+,-./:;<=>?@^_`|~\\*%"
_TAG_CHARS = string.ascii_letters + string.digits + ".-_!#$&'/:;<=>?@^`|~,"
_NAME_CHARS = string.ascii_letters + string.digits + "-._"
_SECTION_NAMES = [b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE", b"body.peek"]
_STATUS = [b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH", b"ok"]

tags = st.text(_TAG_CHARS, min_size=1, max_size=6).map(str.encode)
atoms = st.text(_ATOM_CHARS, min_size=1, max_size=10).map(str.encode)
numbers = st.integers(0, 2**63 - 1).map(lambda n: b"%d" % n)
names = st.tuples(st.sampled_from(string.ascii_letters), st.text(_NAME_CHARS, max_size=8)).map(
    lambda parts: (parts[0] + parts[1]).encode()
)
texts = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=20).map(
    str.encode
)


def quote(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


quoted = texts.map(quote)


@st.composite
def literals(draw: st.DrawFn, *, client: bool) -> bytes:
    kinds = ["sync", "nonsync", "binary"] if client else ["sync", "binary"]
    kind = draw(st.sampled_from(kinds))
    body = draw(st.binary(max_size=30))
    if kind == "binary":
        return b"~{%d}\r\n" % len(body) + body
    body = body.replace(b"\x00", b"\x01")  # NUL only travels in literal8
    return b"{%d%s}\r\n" % (len(body), b"+" if kind == "nonsync" else b"") + body


def _leaves(*, client: bool, in_brackets: bool) -> st.SearchStrategy[bytes]:
    options = [atoms, numbers, st.just(b"NIL"), quoted, literals(client=client)]
    if not in_brackets:
        # `[` and `]` are astring characters outside sections and codes.
        options.append(st.sampled_from([b"[Gmail]/Drafts", b"foo]", b"]", b"x[y"]))
    return st.one_of(options)


def _paren(items: list[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


def _values(*, client: bool, in_brackets: bool) -> st.SearchStrategy[bytes]:
    leaves = _leaves(client=client, in_brackets=in_brackets)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4).map(_paren), max_leaves=8)


# Built once: strategies are cheap to draw from but not to construct.
_BRACKET_VALUES = {client: _values(client=client, in_brackets=True) for client in (True, False)}


@st.composite
def sections(draw: st.DrawFn, *, client: bool) -> bytes:
    name = draw(st.sampled_from(_SECTION_NAMES))
    items = draw(st.lists(_BRACKET_VALUES[client], max_size=3))
    out = name + b"[" + b" ".join(items) + b"]"
    if draw(st.booleans()):
        origin = draw(st.integers(0, 10**6))
        length = draw(st.none() | st.integers(1, 10**6))
        out += b"<%d>" % origin if length is None else b"<%d.%d>" % (origin, length)
    return out


def _arguments(*, client: bool) -> st.SearchStrategy[list[bytes]]:
    leaves = st.one_of(_leaves(client=client, in_brackets=False), sections(client=client))
    tree = st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=4).map(_paren), max_leaves=10
    )
    return st.lists(tree, max_size=5)


_ARGUMENTS = {client: _arguments(client=client) for client in (True, False)}
_NAMES = st.one_of(names, st.sampled_from([b"UID FETCH", b"uid store", b"APPEND"]))
_CODE_NAMES = st.text(string.ascii_uppercase + "-", min_size=1, max_size=10).map(str.encode)


@st.composite
def commands(draw: st.DrawFn) -> bytes:
    tag = draw(tags)
    name = draw(_NAMES)
    return b" ".join([tag, name, *draw(_ARGUMENTS[True])]) + CRLF


@st.composite
def codes(draw: st.DrawFn) -> bytes:
    name = draw(_CODE_NAMES)
    args = draw(st.lists(_BRACKET_VALUES[False], max_size=3))
    return b"[" + b" ".join([name, *args]) + b"]"


@st.composite
def status_responses(draw: st.DrawFn) -> bytes:
    head = draw(st.one_of(st.just(b"*"), tags)) + b" " + draw(st.sampled_from(_STATUS))
    shape = draw(st.sampled_from(["bare", "text", "code", "code+text"]))
    if shape == "text":
        text = draw(texts.filter(lambda t: not t.startswith(b"[")))
        return head + b" " + text + CRLF
    if shape == "code":
        return head + b" " + draw(codes()) + CRLF
    if shape == "code+text":
        return head + b" " + draw(codes()) + b" " + draw(texts) + CRLF
    return head + CRLF


@st.composite
def data_responses(draw: st.DrawFn) -> bytes:
    number = draw(st.none() | st.integers(0, 2**32))
    name = draw(_DATA_NAMES)
    head = [b"*", name] if number is None else [b"*", b"%d" % number, name]
    return b" ".join(head + draw(_ARGUMENTS[False])) + CRLF


_DATA_NAMES = st.sampled_from([b"FETCH", b"LIST", b"CAPABILITY", b"SEARCH", b"X-THING"])
continuations = st.one_of(st.just(b"+" + CRLF), texts.map(lambda t: b"+ " + t + CRLF))
responses = st.one_of(status_responses(), data_responses(), continuations)

command_streams = st.lists(commands(), min_size=1, max_size=4).map(b"".join)
response_streams = st.lists(responses, min_size=1, max_size=4).map(b"".join)

# Pieces that steer random input towards the interesting corners of the grammar.
_FRAGMENTS = [
    b"A1 ", b"* ", b"+ ", b"\r\n", b"\n", b"\r", b" ", b"(", b")", b"[", b"]", b'"', b"\\",
    b"{5}\r\n", b"{3+}\r\n", b"~{2}\r\n", b"{0}\r\n", b"{99999999999999999999+}\r\n", b"{70000+}\r\n",
    b"BODY[", b"BINARY.PEEK[", b"]<0.5>", b"NIL", b"\x00", b"\xff", b"\xc3\xa9", b"OK [", b"FETCH",
]  # fmt: skip
_random = st.lists(st.one_of(st.binary(max_size=12), st.sampled_from(_FRAGMENTS)), max_size=40)
_HEADS = [b"A1 X ", b"* ", b"+ ", b"A2 FETCH 1 (", b"* 1 FETCH (", b"A3 OK [", b"* 2 FETCH (BODY["]
_line_shaped = st.tuples(
    st.sampled_from(_HEADS), st.lists(st.one_of(st.sampled_from(_FRAGMENTS), atoms), max_size=8)
).map(lambda parts: parts[0] + b" ".join(parts[1]) + CRLF)


@st.composite
def _mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            data[pos:pos] = draw(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=3)))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 6))]
        elif pos < len(data):
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


# Random bytes rarely get past the tag, so most cases are valid streams with a few mutations.
garbage = st.one_of(
    _random.map(b"".join),
    st.lists(_line_shaped, min_size=1, max_size=5).map(b"".join),
    _mutated(command_streams),
    _mutated(response_streams),
)
