"""Lean renditions: what a slow link gets of a message, checked with the email package and openssl."""

from __future__ import annotations

import base64
import email
import email.policy
import random
import re
import shutil
import subprocess
import tracemalloc
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roamgate.demo.mailbox import sample_mailbox, smime_signer_certificate_pem
from roamgate.mime.lean import LeanRenderer
from roamgate.profiles import BUILTIN_PROFILES, LinkProfile

PHS = BUILTIN_PROFILES["phs"]
PDA = BUILTIN_PROFILES["pda"]


def payload(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def render(
    message: bytes, profile: LinkProfile = PHS, chunk: int = 65536
) -> tuple[bytes, LeanRenderer]:
    r = LeanRenderer(profile, profile_name="phs", original_login="bob#lan")
    out = bytearray()
    for i in range(0, len(message), chunk):
        out += r.feed(message[i : i + chunk])
    out += r.close()
    return bytes(out), r


def parse(data: bytes) -> Message:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    assert not msg.defects, msg.defects
    for part in msg.walk():
        assert not part.defects, (part.get_content_type(), part.defects)
    return msg


@pytest.fixture(scope="module")
def inbox() -> list[bytes]:
    return sample_mailbox(large_attachment_bytes=300_000)["INBOX"]


def find(inbox: list[bytes], needle: bytes) -> bytes:
    matches = [m for m in inbox if needle in m.split(b"\r\n\r\n", 1)[0]]
    assert len(matches) == 1, needle
    return matches[0]


def mixed(text: str, files: dict[str, bytes], *, headers: dict[str, str] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Priya Raman <priya@kestrel.example>"
    msg["To"] = "bob@kestrel.example"
    msg["Subject"] = "Files"
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(text)
    for name, data in files.items():
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=email.policy.SMTP)


def test_large_attachment_becomes_a_stub_that_names_file_type_size_and_section(
    inbox: list[bytes],
) -> None:
    original = find(inbox, b"Signed supply agreement")
    out, r = render(original)
    msg = parse(out)
    parts = [p for p in msg.walk() if not p.is_multipart()]
    assert len(parts) == 2
    assert "Please find the files attached." in payload(parts[0]).decode()
    stub = payload(parts[1]).decode()
    assert '"supply-agreement.pdf"' in stub
    assert "application/pdf" in stub
    assert "BODY[2]" in stub and "bob#lan" in stub
    assert [s.section for s in r.report.stubs] == ["2"]
    assert 290_000 < r.report.stubs[0].size < 310_000
    assert len(out) < 3000 < len(original)


def test_small_attachments_and_short_text_pass_unchanged(inbox: list[bytes]) -> None:
    original = find(inbox, b"Q1 sales by region")
    assert len(original) < PHS.stub_threshold  # the premise of the test
    out, r = render(original)
    assert r.report.stubs == [] and r.report.truncated == []
    before, after = parse(original), parse(out)
    for a, b in zip(before.walk(), after.walk(), strict=True):
        if not a.is_multipart():
            assert payload(a) == payload(b)


def test_text_is_cut_at_the_budget_with_a_marker_saying_how_much_is_left() -> None:
    rng = random.Random(7)
    words = ["budget", "sensor", "calibration", "flash", "review", "supplier", "Lyon"]
    lines = [" ".join(rng.choice(words) for _ in range(11)) for _ in range(4000)]
    text = "\n".join(lines) + "\n"
    original = mixed(text, {})
    out, r = render(original)
    msg = parse(out)
    body = payload(msg).decode("utf-8")
    assert msg.get_content_charset() == "utf-8"
    kept_crlf, _, marker = body.partition("[roamgate:")
    kept = kept_crlf.replace("\r\n", "\n").rstrip("\n")
    assert 0.75 * PHS.text_budget < len(kept.encode()) <= PHS.text_budget
    assert text.startswith(kept)
    assert "more of this text was not sent over the phs link" in marker
    assert "BODY[1]" in marker
    (section, left_out), *_ = r.report.truncated
    assert section == "1"
    assert abs(left_out - (len(text) - len(kept))) < 0.03 * len(text)  # an estimate


def test_reader_header_policy_drops_trace_noise_and_keeps_what_a_reader_needs() -> None:
    noise = {
        "Received": "from mx1.kestrel.example by mail.kestrel.example; Mon, 4 Mar 2024 08:00 +0000",
        "DKIM-Signature": "v=1; a=rsa-sha256; d=kestrel.example; b=abc",
        "Authentication-Results": "mail.kestrel.example; dkim=pass",
        "X-MS-Exchange-Organization-SCL": "1",
        "ARC-Seal": "i=1; a=rsa-sha256; cv=none",
        "List-Id": "<staff.kestrel.example>",
        "Reply-To": "team@kestrel.example",
        "In-Reply-To": "<a@b>",
    }
    out, _ = render(mixed("hello\n", {}, headers=noise))
    header = out.split(b"\r\n\r\n", 1)[0].decode()
    for name in ("Received", "DKIM-Signature", "Authentication-Results", "X-MS-", "ARC-Seal"):
        assert name not in header
    for name in ("From", "To", "Subject", "List-Id", "Reply-To", "In-Reply-To", "MIME-Version"):
        assert f"{name}:" in header


def test_alternatives_keep_the_plain_text_only(inbox: list[bytes]) -> None:
    newsletter = next(m for m in inbox if b"multipart/alternative" in m)
    out, r = render(newsletter)
    msg = parse(out)
    types = [p.get_content_type() for p in msg.walk()]
    assert types == ["multipart/alternative", "text/plain"]
    assert r.report.dropped == ["2"]


def test_a_message_signed_as_a_whole_comes_out_byte_for_byte(inbox: list[bytes]) -> None:
    signed = find(inbox, b"multipart/signed")
    out, r = render(signed, chunk=7)
    assert out == signed
    assert r.report.protected


def verify_smime(message: bytes, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is installed by deploy/dev/install-peers.sh"
    (tmp_path / "msg.eml").write_bytes(message)
    (tmp_path / "signer.pem").write_bytes(smime_signer_certificate_pem())
    return subprocess.run(
        [
            openssl,
            "smime",
            "-verify",
            "-in",
            str(tmp_path / "msg.eml"),
            "-CAfile",
            str(tmp_path / "signer.pem"),
            "-out",
            str(tmp_path / "content.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_signed_message_forwarded_inside_another_keeps_its_signature(
    inbox: list[bytes], tmp_path: Path
) -> None:
    signed = find(inbox, b"multipart/signed")
    head, _, body = signed.partition(b"\r\n\r\n")
    ctype = re.search(rb"(?mi)^Content-Type:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", head)
    assert ctype is not None
    signed_part = ctype.group(0) + b"\r\n\r\n" + body
    padding = ("Filler line to push the whole message over the budget. " * 2 + "\n") * 600
    outer = (
        b"From: a@kestrel.example\r\nSubject: FW: notice\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b"--outer\r\nContent-Type: text/plain\r\n\r\n"
        + padding.replace("\n", "\r\n").encode()
        + b"\r\n--outer\r\n"
        + signed_part
        + b"\r\n--outer--\r\n"
    )
    out, r = render(outer, chunk=1000)
    assert signed_part in out
    assert r.report.truncated  # the text around it was cut, the signed part was not
    inner = [p for p in parse(out).walk() if p.get_content_type() == "multipart/signed"]
    assert len(inner) == 1
    # openssl verifies the signed part as it is in the rendition.
    check = verify_smime(out[out.index(signed_part) :][: len(signed_part)], tmp_path)
    assert check.returncode == 0, check.stderr
    assert "Verification successful" in check.stderr


def test_inline_pgp_text_is_never_cut() -> None:
    armored = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + "line\n" * 5000
    armored += "-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n"
    original = mixed(armored, {"big.bin": bytes(100_000)})
    out, r = render(original)
    msg = parse(out)
    first = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    assert payload(first) == armored.replace("\n", "\r\n").encode()
    assert [s.section for s in r.report.stubs] == ["2"]


def test_nested_sections_are_numbered_as_imap_numbers_them() -> None:
    msg = EmailMessage()
    msg["Subject"] = "nested"
    msg.set_content("plain text\n")
    msg.add_alternative("<p>html</p>", subtype="html")
    msg.add_attachment(bytes(range(256)) * 400, maintype="image", subtype="png", filename="a.png")
    out, r = render(msg.as_bytes(policy=email.policy.SMTP))
    assert [s.section for s in r.report.stubs] == ["2"]
    assert r.report.dropped == ["1.2"]
    assert "BODY[2]" in out.decode()
    parse(out)


def test_pda_turns_html_into_text_and_every_attachment_into_a_stub() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Newsletter"
    msg.set_content(
        "<html><body><h1>News</h1><p>Hello <b>world</b></p></body></html>", subtype="html"
    )
    msg.add_attachment(b"\x89PNG" + bytes(50), maintype="image", subtype="png", filename="x.png")
    out, r = render(msg.as_bytes(policy=email.policy.SMTP), PDA)
    parsed = parse(out)
    leaves = [p for p in parsed.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in leaves] == ["text/plain", "text/plain"]
    text = payload(leaves[0]).decode()
    assert "Hello world" in text and "<p>" not in text
    assert [s.filename for s in r.report.stubs] == ["x.png"]


def jis(text: str) -> bytes:
    """ISO-2022-JP as Japanese mail clients write it, NEC and IBM extensions included."""
    out, in_jis = bytearray(), False
    for ch in text:
        if ord(ch) < 128:
            if in_jis:
                out += b"\x1b(B"
                in_jis = False
            out += ch.encode()
            continue
        sj = ch.encode("cp932")
        c1, c2 = sj
        # Shift_JIS -> JIS X 0208 row/cell (cp932's extension rows map the same way).
        row = (c1 - (0x70 if c1 < 0xA0 else 0xB0)) * 2 - (1 if c2 < 0x9F else 0)
        cell = c2 - (0x1F if c2 < 0x7F else 0x20 if c2 < 0x9F else 0x7E)
        if not in_jis:
            out += b"\x1b$B"
            in_jis = True
        out += bytes([row, cell])
    if in_jis:
        out += b"\x1b(B"
    return bytes(out)


def test_pda_turns_iso_2022_jp_with_nec_extensions_into_utf8() -> None:
    text = "①会議は㈱山本の髙橋様と\r\n"
    with pytest.raises(UnicodeDecodeError):
        jis(text).decode("iso2022_jp")
    subject = "=?ISO-2022-JP?B?" + base64.b64encode(jis("①の件")).decode() + "?="
    original = (
        b"From: a@kestrel.example\r\nSubject: " + subject.encode() + b"\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\n" + jis(text)
    )
    out, _ = render(original, PDA)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert msg.get_content_charset() == "utf-8"
    assert msg.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n")
    assert str(msg["Subject"]) == "①の件"
    assert b"=?UTF-8?" in out.split(b"\r\n\r\n")[0].upper()


def test_memory_stays_flat_while_a_large_attachment_streams_through() -> None:
    original = mixed("see attached\n", {"big.bin": random.Random(1).randbytes(15_000_000)})
    tracemalloc.start()
    try:
        r = LeanRenderer(PHS, profile_name="phs")
        out = bytearray()
        for i in range(0, len(original), 65536):
            out += r.feed(original[i : i + 65536])
        out += r.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_500_000, peak
    assert len(out) < 2000
    assert r.report.stubs[0].size == 15_000_000 or abs(r.report.stubs[0].size - 15_000_000) < 4


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_chunking_gives_the_same_rendition(inbox: list[bytes], data: st.DataObject) -> None:
    message = data.draw(st.sampled_from(inbox))
    whole, _ = render(message, chunk=len(message) + 1)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=30)))
    r = LeanRenderer(PHS, profile_name="phs", original_login="bob#lan")
    out, last = bytearray(), 0
    for cut in [*cuts, len(message)]:
        out += r.feed(message[last:cut])
        last = cut
    out += r.close()
    assert bytes(out) == whole


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([PHS, PDA]))
def test_garbage_never_raises(data: bytes, profile: LinkProfile) -> None:
    r = LeanRenderer(profile, profile_name="x")
    out = r.feed(data[: len(data) // 2]) + r.feed(data[len(data) // 2 :]) + r.close()
    assert isinstance(out, bytes)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"--b\r\n",
                b"--b--\r\n",
                b"Content-Type: multipart/mixed; boundary=b\r\n",
                b"\r\n",
                b"text\r\n",
                b"Content-Type: text/plain\r\n",
                b"--c\r\n",
            ]
        ),
        max_size=40,
    )
)
def test_mime_shaped_garbage_never_raises(lines: list[bytes]) -> None:
    r = LeanRenderer(PHS, profile_name="x")
    out = r.feed(b"".join(lines)) + r.close()
    assert isinstance(out, bytes)


def test_an_8bit_byte_in_a_content_field_is_no_crash() -> None:
    original = (
        b"From: a@kestrel.example\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: 8bit\xe9\r\n\r\nhello\r\n"
    )
    out, _ = render(original)
    assert out.endswith(b"\r\n\r\nhello\r\n")


def test_a_non_ascii_boundary_still_separates_the_parts() -> None:
    original = (
        b'From: a@kestrel.example\r\nContent-Type: multipart/mixed; boundary="b\xe9"\r\n\r\n'
        b"--b\xe9\r\nContent-Type: text/plain\r\n\r\nhello part\r\n--b\xe9--\r\n"
    )
    out, _ = render(original)
    assert b"hello part" in out


def test_an_oversized_part_header_keeps_its_delimiter() -> None:
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"y" * 200) for i in range(400))
    original = (
        b'From: a@kestrel.example\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
        b"--b\r\nContent-Type: text/plain\r\n" + pad + b"\r\npart two\r\n--b--\r\n"
    )
    out, r = render(original)
    assert r.report.copied_rest
    leaves = [p for p in parse(out).walk() if not p.is_multipart()]
    assert [payload(p).strip() for p in leaves] == [b"part one", b"part two"]


def test_every_later_alternative_goes_once_the_plain_text_is_kept() -> None:
    image = b"iVBORw0KGgo" + b"A" * 12_000
    original = (
        b'From: a@kestrel.example\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="a"\r\n\r\n'
        b"--a\r\nContent-Type: text/plain\r\n\r\nplain words\r\n"
        b'--a\r\nContent-Type: multipart/related; boundary="r"\r\n\r\n'
        b"--r\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n"
        b"--r\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + image
        + b"\r\n--r--\r\n--a--\r\n"
    )
    out, r = render(original, BUILTIN_PROFILES["isdn"])
    assert r.report.dropped == ["2"]
    assert b"plain words" in out and b"html words" not in out and len(out) < 500


def test_raw_bytes_beside_an_encoded_word_do_not_blow_up_a_pda_header() -> None:
    # Found by bench/fuzz_mime.py: each raw byte became a replacement character, four bytes
    # and more once encoded again, so a 11 KB message grew to a 26 KB rendition.
    subject = b"Subject: =?iso-2022-jp?B?GyRCJEskWxsoQg==?= " + b"\xff" * 4000 + b"\r\n"
    original = b"From: a@kestrel.example\r\n" + subject + b"\r\nhello\r\n"
    out, r = render(original, PDA)
    assert not r.report.copied_rest
    assert len(out) <= 2 * len(original)
    assert out.endswith(b"\r\n\r\nhello\r\n")
    # A well-formed ISO-2022-JP subject is still re-encoded as UTF-8.
    out, _ = render(b"Subject: =?iso-2022-jp?B?GyRCJEskWxsoQg==?=\r\n\r\nhi\r\n", PDA)
    assert b"=?UTF-8?" in out.upper() or b"=?utf-8?" in out


def test_a_utf7_text_with_a_lone_surrogate_is_rendered_not_copied() -> None:
    body = b"+2MI-" + b"word " * 4000
    original = b"From: a@kestrel.example\r\nContent-Type: text/plain; charset=utf-7\r\n\r\n" + body
    out, r = render(original)
    assert not r.report.copied_rest
    assert r.report.truncated and len(out) < 10_000
