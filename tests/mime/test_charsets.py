"""Charset decoding and UTF-8 header re-encoding, against Japanese mail as Windows clients write it."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import time
from email.header import Header, decode_header, make_header

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roamgate.demo.mailbox import JAPANESE_SUBJECTS
from roamgate.mime.charsets import decode_text, header_to_utf8

# Windows-only characters: NEC row 13 (①, ㈱, ㍻, Ⅳ, ㍉) and the NEC-selected IBM row 92 (髙).
NEC_TEXT = "株式会社髙橋製作所の髙です。①見積書②請求書を送付します。㈱Ⅳ型、㍻三十年、５㍉。"


def sjis_to_jis(lead: int, trail: int) -> tuple[int, int]:
    """The inverse of the Shift_JIS mapping, written out here so the test does not share code."""
    row = (lead - (0x70 if lead < 0xA0 else 0xB0)) * 2
    if trail >= 0x9F:
        return row, trail - 0x7E
    return row - 1, trail - 0x1F - (trail >= 0x80)


def windows_iso2022jp(text: str) -> bytes:
    """ISO-2022-JP the way Outlook and Becky! write it: cp932 codes shifted into 7-bit JIS."""
    out, mode = bytearray(), b"\x1b(B"
    for char in text:
        code = char.encode("cp932")
        if len(code) == 2:
            wanted, data = b"\x1b$B", bytes(sjis_to_jis(*code))
        elif code[0] >= 0xA1:  # half-width katakana
            wanted, data = b"\x1b(I", bytes([code[0] - 0x80])
        else:
            wanted, data = b"\x1b(B", code
        if wanted != mode:
            out += wanted
            mode = wanted
        out += data
    if mode != b"\x1b(B":
        out += b"\x1b(B"
    return bytes(out)


def decoded_header(value: str) -> str:
    return str(make_header(decode_header(value)))


# --- bodies ---


def test_windows_iso2022jp_with_nec_and_ibm_characters_decodes() -> None:
    data = windows_iso2022jp(NEC_TEXT)
    with pytest.raises(UnicodeDecodeError):
        data.decode("iso2022_jp")  # the stdlib codec has no NEC row 13 nor IBM rows 89-92
    assert decode_text(data, "ISO-2022-JP") == NEC_TEXT


def test_hand_written_bytes() -> None:
    # ESC $ B, then ① (row 13 cell 1: 2D 21), 髙 (row 92 cell 66: 7C 62), ㈱ (2D 6A), ㍻ (2D 5F),
    # then ESC ( B and ASCII: the bytes a Windows client sends for "①髙㈱㍻ ok".
    data = b"\x1b$B\x2d\x21\x7c\x62\x2d\x6a\x2d\x5f\x1b(B ok"
    assert decode_text(data, "iso-2022-jp") == "①髙㈱㍻ ok"


@pytest.mark.parametrize("label", ["ISO-2022-JP", "iso-2022-jp", "csISO2022JP", ' "Iso-2022-Jp" '])
def test_iso2022jp_labels(label: str) -> None:
    assert decode_text(windows_iso2022jp("㈱髙橋"), label) == "㈱髙橋"


def test_standard_jis_keeps_the_jis_mapping() -> None:
    """Plain JIS X 0208 reads as Python's iso2022_jp reads it (WAVE DASH is U+301C)."""
    text = "来週の定例会議の日程変更について〜ご確認ください。"
    data = text.encode("iso2022_jp")
    assert decode_text(data, "iso-2022-jp") == data.decode("iso2022_jp") == text


def test_half_width_katakana_and_roman() -> None:
    assert decode_text(windows_iso2022jp("ﾃｽﾄ ｶﾞｲﾄﾞ"), "iso-2022-jp") == "ﾃｽﾄ ｶﾞｲﾄﾞ"
    # ESC ( J is how older mailers return to one-byte text: ~user URLs must survive it.
    assert decode_text(b"\x1b$B$+\x1b(J http://h/~u", "iso-2022-jp") == "か http://h/~u"


def test_a_missing_return_to_ascii_only_spoils_its_own_line() -> None:
    data = b"\x1b$B$3$s$K$A$O\nsecond line\n"
    assert decode_text(data, "iso-2022-jp") == "こんにちは\nsecond line\n"


def test_eight_bit_body_labelled_iso2022jp_is_sniffed() -> None:
    assert decode_text("髙橋です".encode("cp932"), "iso-2022-jp") == "髙橋です"
    assert decode_text("髙橋です".encode(), "iso-2022-jp") == "髙橋です"


@pytest.mark.parametrize("label", ["shift_jis", "SJIS", "x-sjis", "Windows-31J"])
def test_shift_jis_labels_read_as_cp932(label: str) -> None:
    assert decode_text(NEC_TEXT.encode("cp932"), label) == NEC_TEXT


def test_euc_jp_with_cp51932_extensions() -> None:
    standard = "日本語のテキスト"
    assert decode_text(standard.encode("euc_jp"), "EUC-JP") == standard
    # cp51932 puts NEC row 13 and IBM row 92 at EUC rows 0xAD and 0xFC: ① = AD A1, 髙 = FC E2.
    assert decode_text(b"\xad\xa1\xfc\xe2" + "です".encode("euc_jp"), "euc-jp") == "①髙です"


def test_unknown_and_missing_charsets() -> None:
    assert decode_text("naïve café".encode(), None) == "naïve café"
    assert decode_text("naïve café".encode("cp1252"), None) == "naïve café"
    assert decode_text(b"\x93quoted\x94 \x80", "us-ascii") == "\u201cquoted\u201d \u20ac"
    assert decode_text("grüße".encode("latin-1"), "x-no-such-charset") == "grüße"
    assert decode_text(b"\xef\xbb\xbfBOM", "utf-8") == "BOM"
    assert decode_text("한국어".encode("cp949"), "ks_c_5601-1987") == "한국어"


def test_codecs_that_are_not_charsets_are_refused() -> None:
    assert decode_text(b"aGk=", "base64") == "aGk="
    assert decode_text(b"\\u0041", "unicode_escape") == "\\u0041"


def test_bad_bytes_become_replacement_characters() -> None:
    assert decode_text(b"ok \xff\xfe", "utf-8") == "ok \ufffd\ufffd"
    assert decode_text(b"\x1b$B\x30", "iso-2022-jp") == "\ufffd"  # odd-length JIS
    assert decode_text(b"abc\x1b", "iso-2022-jp") == "abc\ufffd"  # truncated escape
    assert decode_text(b"\x1b$B\x7f\x7e\x1b(B", "iso-2022-jp").startswith("\x7f")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), label=st.sampled_from(["iso-2022-jp", "euc-jp", "sjis"]))
def test_garbage_never_raises(data: bytes, label: str) -> None:
    assert isinstance(decode_text(data, label), str)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"\x1b", b"$B", b"(B", b"(I", b"$(D", b"!", b"~", b"\n", b"-"])))
def test_escape_soup_never_raises(parts: list[bytes]) -> None:
    assert isinstance(decode_text(b"".join(parts), "iso-2022-jp"), str)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(NEC_TEXT + "abc xyzｱｲｳ"), max_size=60))
def test_windows_iso2022jp_round_trips(text: str) -> None:
    assert decode_text(windows_iso2022jp(text), "iso-2022-jp") == text


def test_decoding_is_linear() -> None:
    sample = bytes(range(256)) * 4096  # 1 MB of every byte value
    for label in ("iso-2022-jp", "euc-jp", "shift_jis", None):
        started = time.perf_counter()
        decode_text(b"\x1b$B" + sample, label)
        assert time.perf_counter() - started < 5


# --- headers ---


def iso2022jp_word(text: str) -> str:
    return "=?ISO-2022-JP?B?" + base64.b64encode(windows_iso2022jp(text)).decode() + "?="


def test_iso2022jp_subject_becomes_utf8() -> None:
    subject = "【至急】㈱髙橋製作所 ①見積書の件（㍻30年度分）"
    converted = header_to_utf8(iso2022jp_word(subject), header_name="Subject")
    words = re.findall(r"=\?([^?]+)\?([QqBb])\?", converted)
    assert words
    assert {charset for charset, _ in words} == {"UTF-8"}
    assert converted.isascii()
    assert decoded_header(converted) == subject


@pytest.mark.parametrize("subject", JAPANESE_SUBJECTS)
def test_demo_subjects(subject: str) -> None:
    """The demo mailbox encodes its subjects with the stdlib's compat32 Header, as sent."""
    encoded = Header(subject, "iso-2022-jp", header_name="Subject").encode()
    assert "ISO-2022-JP" in encoded.upper()
    converted = header_to_utf8(encoded, header_name="Subject")
    assert "ISO-2022-JP" not in converted.upper()
    assert decoded_header(converted) == subject


def test_long_subject_folds_within_78_columns() -> None:
    subject = "㈱髙橋製作所からのお知らせ、①から⑳までの項目を確認してください。" * 3
    converted = header_to_utf8(iso2022jp_word(subject), header_name="Subject")
    lines = ("Subject: " + converted).split("\r\n")
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith(" ") for line in lines[1:])
    assert decoded_header(converted) == subject


def parse_from(value: str) -> tuple[str, str]:
    message = email.message_from_string(f"From: {value}\n\n", policy=email.policy.default)
    address = message["From"].addresses[0]
    return address.display_name, address.addr_spec


def test_addresses_stay_intact() -> None:
    encoded = iso2022jp_word("髙橋 ㈱") + " <taka@kestrel.example>"
    converted = header_to_utf8(encoded, header_name="From")
    assert converted.endswith(" <taka@kestrel.example>")
    assert parse_from(converted) == ("髙橋 ㈱", "taka@kestrel.example")


def test_raw_utf8_quoted_display_name_is_encoded_and_address_kept() -> None:
    converted = header_to_utf8('"佐藤, 健" <ken.sato@kestrel.example>', header_name="From")
    assert converted.isascii()
    assert parse_from(converted) == ("佐藤, 健", "ken.sato@kestrel.example")


def test_an_encoded_comma_stays_encoded() -> None:
    # Decoded to plain text, "Sato, Ken" would split one address into two.
    converted = header_to_utf8("=?utf-8?q?Sato=2C_Ken?= <ken@kestrel.example>")
    assert parse_from(converted) == ("Sato, Ken", "ken@kestrel.example")


def test_plain_ascii_needs_no_encoding() -> None:
    assert header_to_utf8("Weekly status: Falcon") == "Weekly status: Falcon"
    assert header_to_utf8("=?iso-8859-1?q?Hello?= World") == "Hello World"


def test_mixed_charsets_and_folded_input() -> None:
    value = "=?iso-8859-1?q?Gr=FC=DFe?=\r\n =?utf-8?b?w6AgdG91cw==?= aus " + iso2022jp_word("東京")
    converted = header_to_utf8(value)
    assert decoded_header(converted) == "Grüßeà tous aus 東京"


def test_split_multibyte_character_across_words() -> None:
    raw = "髙".encode()
    value = f"=?utf-8?b?{base64.b64encode(raw[:1]).decode()}?= =?utf-8?b?{base64.b64encode(raw[1:]).decode()}?="
    assert decoded_header(header_to_utf8(value)) == "髙"


def test_raw_iso2022jp_in_a_header() -> None:
    raw = windows_iso2022jp("㈱髙橋").decode("ascii")
    assert decoded_header(header_to_utf8(raw)) == "㈱髙橋"


def test_no_header_injection() -> None:
    converted = header_to_utf8("hello\r\nBcc: victim@example.com\n\rX: y")
    assert "\nBcc" not in converted
    assert "\r" not in converted.replace("\r\n ", "")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_header_never_raises(value: str) -> None:
    converted = header_to_utf8(value)
    for line in converted.split("\r\n")[1:]:
        assert line[:1] in {" ", "\t"}


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=80))
def test_utf8_words_round_trip(text: str) -> None:
    word = "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="
    converted = header_to_utf8(word)
    assert converted.isascii() or not text.isascii()
    assert decoded_header(converted) == re.sub(r"[\r\n]+", " ", text).replace("\x00", "")


def test_headers_are_linear() -> None:
    for hostile in ('"\\' * 50_000, "=?a?q?" * 50_000, "<" * 100_000 + "é", "=?utf-8?b?" * 30_000):
        started = time.perf_counter()
        header_to_utf8(hostile)
        assert time.perf_counter() - started < 5


def test_a_lone_surrogate_from_utf7_becomes_a_replacement_character() -> None:
    # Found by bench/fuzz_mime.py: `+2MI-` is a lone UTF-16 surrogate in UTF-7, which made the
    # renderer's UTF-8 encode fail (its last-resort net then copied the rest unchanged).
    text = decode_text(b"a+2MI-b", "utf-7")
    assert text == "a\ufffdb"
    assert text.encode("utf-8") == b"a\xef\xbf\xbdb"
