"""LeanRenderer on generated MIME trees: never its last-resort net, buffers within their caps,
the text within the profile's budget, attachments within the stub threshold, signed parts byte
for byte. The oracle is bench/fuzz_mime.py's, which atheris drives too."""

from __future__ import annotations

import base64
import email
import email.policy
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.fuzz_mime import PROFILES, run_lean, run_text
from roamgate.profiles import LinkProfile

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_MARKER = re.compile(rb"\[roamgate: [^\r\n]*\]")
_WORDS = st.text(
    st.sampled_from("abc xyz 0123\n\u3042\u30a2\u6f22\u00e9\u2460"), min_size=0, max_size=400
)


@dataclass
class Built:
    data: bytes
    signed: list[bytes] = field(default_factory=list)  # protected parts, header and body


def _text_leaf(text: str, charset: str, cte: str, html: bool) -> bytes:
    if html:
        text = "<html><body><p>" + text.replace("\n", "<br>") + "</p></body></html>"
    raw = text.encode("iso-2022-jp" if charset == "iso-2022-jp" else "utf-8", "replace")
    if cte == "base64":
        body = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    elif cte == "quoted-printable":
        body = quopri.encodestring(raw.replace(b"\n", b"\r\n"))
    else:
        body = raw.replace(b"\n", b"\r\n") + b"\r\n"
        cte = "8bit"
    ctype = "text/html" if html else "text/plain"
    return (
        f"Content-Type: {ctype}; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode() + body


@st.composite
def text_leaves(draw: st.DrawFn) -> Built:
    words = draw(_WORDS) * draw(st.integers(1, 60))
    charset = draw(st.sampled_from(["utf-8", "iso-2022-jp", "us-ascii"]))
    if charset == "us-ascii":
        words = words.encode("ascii", "ignore").decode()
    cte = draw(st.sampled_from(["8bit", "base64", "quoted-printable"]))
    return Built(_text_leaf(words, charset, cte, draw(st.booleans())))


@st.composite
def attachments(draw: st.DrawFn) -> Built:
    size = draw(st.integers(0, 40_000))
    data = bytes(draw(st.integers(0, 255)) for _ in range(8)) * (size // 8)
    name = draw(st.sampled_from(["report.pdf", "a b.bin", "\u8cc7\u6599.xlsx"]))
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    header = (
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'
    ).encode()
    return Built(header + encoded)


@st.composite
def signed_parts(draw: st.DrawFn) -> Built:
    inner = draw(text_leaves())
    boundary = b"sig-%d" % draw(st.integers(0, 10**6))
    signature = base64.encodebytes(draw(st.binary(min_size=1, max_size=300))).replace(
        b"\n", b"\r\n"
    )
    part = (
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
        b' micalg=sha-256; boundary="' + boundary + b'"\r\n\r\n'
        b"--" + boundary + b"\r\n" + inner.data + b"\r\n--" + boundary + b"\r\n"
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + signature + b"\r\n--" + boundary + b"--\r\n"
    )
    return Built(part, [part])


def _multipart(draw: st.DrawFn, depth: int) -> Built:
    subtype = draw(st.sampled_from(["mixed", "alternative", "related"]))
    boundary = f"b{depth}-{draw(st.integers(0, 999))}"
    children = draw(st.lists(parts(depth + 1), min_size=1, max_size=4))
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + c.data + b"\r\n" for c in children)
    data = (
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\npreamble\r\n'.encode()
        + body
        + b"--"
        + boundary.encode()
        + b"--\r\nepilogue\r\n"
    )
    return Built(data, [s for c in children for s in c.signed])


@st.composite
def parts(draw: st.DrawFn, depth: int = 0) -> Built:
    kind = draw(st.integers(0, 3 if depth < 3 else 2))
    if kind == 3:
        return _multipart(draw, depth)
    return draw([text_leaves(), attachments(), signed_parts()][kind])


@st.composite
def messages(draw: st.DrawFn) -> Built:
    body = draw(parts())
    head = (
        b"Received: from relay.example by mx.example; Fri, 4 Dec 2026 07:00:00 +0000\r\n"
        b"From: Priya <priya@kestrel.example>\r\nTo: bob@kestrel.example\r\n"
        b"Subject: =?ISO-2022-JP?B?GyRCJEskWxsoQg==?=\r\nMIME-Version: 1.0\r\n"
    )
    return Built(head + body.data, body.signed)


def _decoded(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _inside_signed(msg: Message) -> set[int]:
    inside: set[int] = set()
    for part in msg.walk():
        if part.get_content_type() == "multipart/signed":
            inside.update(id(p) for p in part.walk())
    return inside


def _signed_twin(text: bytes) -> bytes:
    return (
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
        b' micalg=sha-256; boundary="sig-0"\r\n\r\n--sig-0\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + b"\r\n--sig-0\r\n"
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAA==\r\n--sig-0--\r\n"
    )


# Found by hypothesis: two signed alternatives with the same boundary (legal: siblings), one
# before the plain text (kept whole) and one after it (left out whole).
_TWINS = [_signed_twin(b"0"), _signed_twin(b"")]
_TWIN_MESSAGE = Built(
    b"From: a@kestrel.example\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b0-0"\r\n\r\n--b0-0\r\n'
    + _TWINS[0]
    + b"\r\n--b0-0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n\r\n--b0-0\r\n"
    + _TWINS[1]
    + b"\r\n--b0-0--\r\n",
    _TWINS,
)

# Found by hypothesis: text of short lines over the budget; the cut was counted in LF lines and
# sent in CRLF ones, one byte a line over (4130 of 4096 on the pda profile).
_SHORT_LINES = b"0" * 27 + b"\r\n\r\n\r\n\r\n" + "\u2460".encode() * 8
_SHORT_LINES_PART = (
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + _SHORT_LINES * 35
    + b"\r\n"
)
_SHORT_LINES_MESSAGE = Built(
    b"From: a@kestrel.example\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b0-0"\r\n\r\n--b0-0\r\n'
    + _SHORT_LINES_PART
    + b"\r\n--b0-0\r\n"
    + _SHORT_LINES_PART
    + b"\r\n--b0-0--\r\n"
)


@PROPERTY
@given(
    message=messages(),
    profile=st.sampled_from(sorted(PROFILES)),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
)
@example(message=_TWIN_MESSAGE, profile="isdn", cuts=[])
@example(message=_SHORT_LINES_MESSAGE, profile="pda", cuts=[])
def test_generated_messages_stay_within_the_profile(
    message: Built, profile: str, cuts: list[int]
) -> None:
    p: LinkProfile = PROFILES[profile]
    out, r = run_lean(message.data, p, cuts)  # no net hit, caps held after every piece
    assert not r.report.copied_rest, "valid MIME must not need the copy-the-rest fallback"
    # Signed parts pass byte for byte, with their own header, or (a later alternative than
    # the plain text) are left out whole: never changed.
    kept = [s for s in message.signed if s.rstrip(b"\r\n") in out]
    for signed in message.signed:
        if signed in kept:
            continue
        # Left out whole: its header line shows no more often than in the kept signed parts
        # (two of them may share it: hypothesis found siblings with the same boundary).
        header = signed.split(b"\r\n", 1)[0]
        assert r.report.dropped
        assert out.count(header) <= sum(k.split(b"\r\n", 1)[0] == header for k in kept)
    msg = email.message_from_bytes(out, policy=email.policy.compat32)
    inside = _inside_signed(msg)
    text = 0
    for part in msg.walk():
        if part.is_multipart() or id(part) in inside:
            continue
        payload = _decoded(part)
        if part.get_content_maintype() == "text":
            text += len(_MARKER.sub(b"", payload).strip())
        else:
            # An attachment reaches the output whole only under the stub threshold.
            assert len(payload) <= p.stub_threshold, (part.get_content_type(), len(payload))
    assert text <= p.text_budget, (text, p.text_budget)
    if p.max_message_bytes and not message.signed:
        assert len(out) <= p.max_message_bytes + 8 * 1024 + len(message.data) // 4


@PROPERTY
@given(message=messages(), cuts=st.lists(st.integers(0, 10**6), max_size=6))
def test_a_message_signed_as_a_whole_comes_out_identical(message: Built, cuts: list[int]) -> None:
    inner = message.data.split(b"MIME-Version: 1.0\r\n", 1)[1]
    signed = (
        b"From: a@kestrel.example\r\nSubject: signed\r\n"
        b'Content-Type: multipart/signed; protocol="application/pgp-signature"; boundary="s"\r\n'
        b"\r\n--s\r\n" + inner + b"\r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\n"
        b"-----BEGIN PGP SIGNATURE-----\r\nxx\r\n-----END PGP SIGNATURE-----\r\n--s--\r\n"
    )
    for p in PROFILES.values():
        out, r = run_lean(signed, p, cuts)
        assert r.report.protected and out == signed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_text_converters_take_any_bytes(data: bytes) -> None:
    run_text(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    b"--b\r\n",
                    b"--b--\r\n",
                    b"--c\r\n",
                    b"\r\n",
                    b"text\r\n",
                    b"Content-Type: multipart/mixed; boundary=b\r\n",
                    b"Content-Type: multipart/alternative; boundary=c\r\n",
                    b"Content-Type: multipart/signed; boundary=b\r\n",
                    b"Content-Type: text/html; charset=iso-2022-jp\r\n",
                    b"Content-Transfer-Encoding: base64\r\n",
                    b"Content-Transfer-Encoding: quoted-printable\r\n",
                    b"Content-Disposition: attachment; filename*=utf-8''%E8%B3%87\r\n",
                    b"-----BEGIN PGP MESSAGE-----\r\n",
                    b"=\r\n",
                    b"=E3=81\r\n",
                    b'\x1b$B$"\r\n',
                    b" folded\r\n",
                    b"<p>x</p>\r\n",
                    b"AAAA\r\n",
                ]
            ),
            st.binary(max_size=20),
        ),
        max_size=60,
    ),
    st.sampled_from(sorted(PROFILES)),
    st.lists(st.integers(0, 10**4), max_size=5),
)
def test_mime_shaped_garbage_never_hits_the_net(
    lines: list[bytes], profile: str, cuts: list[int]
) -> None:
    run_lean(b"".join(lines), PROFILES[profile], cuts)
