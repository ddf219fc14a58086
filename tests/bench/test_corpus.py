"""The benchmark corpus: the same bytes every run, the issue's mix, parseable, real NEC bytes."""

from __future__ import annotations

import email
import email.policy
from collections import Counter
from functools import cache

import pytest

from bench.corpus import (
    COUNTS,
    NEC_SAMPLES,
    SMALL_SCALE,
    CorpusMessage,
    build_corpus,
    jis_to_text,
    text_to_jis,
)


@cache
def _small() -> tuple[CorpusMessage, ...]:
    return tuple(build_corpus(SMALL_SCALE))


def test_two_calls_give_identical_bytes() -> None:
    assert tuple(build_corpus(SMALL_SCALE)) == _small()


def test_the_scale_changes_only_the_attachments() -> None:
    larger = build_corpus(SMALL_SCALE * 3)
    for small, large in zip(_small(), larger, strict=True):
        assert small.kind == large.kind
        if small.kind != "attachment":
            assert small.data == large.data


def test_counts_of_each_kind() -> None:
    counts = Counter(message.kind for message in _small())
    assert counts == Counter(COUNTS)
    assert sum(counts.values()) >= 300


def test_every_message_parses_with_the_email_package() -> None:
    for message in _small():
        parsed = email.message_from_bytes(message.data, policy=email.policy.default)
        assert parsed["Message-ID"] and parsed["Date"] and parsed["From"]
        assert not parsed.defects, (message.kind, parsed.defects)
        content = parsed.get_content_type()
        expected = {
            "plain": "text/plain",
            "iso2022jp": "text/plain",
            "newsletter": "multipart/alternative",
            "attachment": "multipart/mixed",
            "smime": "multipart/signed",
        }[message.kind]
        assert content == expected, (message.kind, content)
        assert b"\r\n" in message.data and b"\n" not in message.data.replace(b"\r\n", b"")


def test_the_iso_2022_jp_mail_carries_the_nec_and_ibm_characters() -> None:
    japanese = [m.data for m in _small() if m.kind == "iso2022jp"]
    texts = []
    for data in japanese:
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert parsed.get_content_charset() == "iso-2022-jp"
        body = parsed.get_payload(decode=True)
        assert isinstance(body, bytes) and max(body) < 0x80  # 7bit, escape sequences only
        texts.append(jis_to_text(body.replace(b"\r\n", b"\n")))
        assert any(char in texts[-1] for char in NEC_SAMPLES), texts[-1]
    for char, code in NEC_SAMPLES.items():
        with pytest.raises(UnicodeEncodeError):
            char.encode("iso2022_jp")  # why the corpus builds these bytes itself
        assert any(char in text for text in texts), char
        assert any(code in data for data in japanese), char


def test_the_jis_conversion_round_trips() -> None:
    line = "①㈱髙橋 test 【重要】ワンタイムコード"
    assert jis_to_text(text_to_jis(line)) == line
    assert text_to_jis("髙") == b"\x1b$B" + NEC_SAMPLES["髙"] + b"\x1b(B"


def test_the_newest_five_are_the_documented_mix() -> None:
    assert [m.kind for m in _small()[-5:]] == [
        "attachment",
        "iso2022jp",
        "attachment",
        "newsletter",
        "plain",
    ]
