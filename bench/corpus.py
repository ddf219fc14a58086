"""A deterministic mailbox for the slow-link benchmark: the same bytes on every run.

    python -m bench.corpus [--small | --scale X] [--out DIR]

The mix of the bandwidth issue, oldest first, 320 messages by default:
plain business text (with replies), ISO-2022-JP mail from the Tokyo office carrying NEC
special characters (① ㈱) and the IBM extension 髙 (which Python's iso2022_jp codec rejects:
the bytes are made from cp932 -> Shift_JIS -> JIS, the way Windows mailers send them),
HTML newsletters (multipart/alternative), attachments from a few KB to several MB (PDF, PNG
and ZIP look-alikes of seeded random bytes, base64) and S/MIME-signed notices.

The five newest messages, which the triage workflow opens whole, are fixed: a medium PNG
attachment, an ISO-2022-JP mail, a multi-MB PDF, an HTML newsletter and a plain mail (newest).
`scale` multiplies every attachment size (1.0: about 42 MB in all; SMALL_SCALE: about 1 MB, for tests);
only the attachments' bytes depend on it.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import functools
import hashlib
import html
import random
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path

from roamgate.demo.mailbox import (
    _NEWSLETTERS,
    _PROJECTS,
    _REPLIES,
    _TEMPLATES,
    OWNER,
    _address,
    _attachments,
    _entries,
    _fill,
    _finish,
    _new,
    _pdf,
    _plain,
    _png,
    _signed,
    _stamp,
    _wrap,
)
from roamgate.demo.mailbox import _japanese_entries as japanese_entries

__all__ = [
    "COUNTS",
    "KINDS",
    "NEC_SAMPLES",
    "SMALL_SCALE",
    "CorpusMessage",
    "build_corpus",
    "jis_to_text",
    "text_to_jis",
]

Builder = Callable[[dt.datetime, str], bytes]
KINDS = ("plain", "iso2022jp", "newsletter", "attachment", "smime")
COUNTS = {"plain": 170, "iso2022jp": 60, "newsletter": 40, "attachment": 40, "smime": 10}
SMALL_SCALE = 0.01
# (characters, their JIS X 0208 bytes as Windows sends them): NEC row 13 and NEC-selected IBM.
NEC_SAMPLES = {"①": b"\x2d\x21", "㈱": b"\x2d\x6a", "髙": b"\x7c\x62"}
_JST = dt.timezone(dt.timedelta(hours=9))
_ESC_JIS, _ESC_ASCII = b"\x1b$B", b"\x1b(B"


@dataclass(frozen=True)
class CorpusMessage:
    """One message of the corpus and what kind of mail it stands for."""

    kind: str
    data: bytes


# -- ISO-2022-JP the way Windows mailers write it (CP50220-like) ------------------------------


@functools.cache
def _nec_selected() -> dict[str, bytes]:
    """Character -> its NEC-selected IBM extension code (Shift_JIS 0xED40-0xEEFC)."""
    out: dict[str, bytes] = {}
    for lead in (0xED, 0xEE):
        for trail in range(0x40, 0xFD):
            code = bytes((lead, trail))
            try:
                out.setdefault(code.decode("cp932"), code)
            except UnicodeDecodeError:
                continue
    return out


def _sjis_to_jis(code: bytes) -> bytes:
    s1, s2 = code
    j1 = (s1 - (0x71 if s1 <= 0x9F else 0xB1)) * 2 + 1
    if s2 > 0x7F:
        s2 -= 1
    if s2 >= 0x9E:
        return bytes((j1 + 1, s2 - 0x7D))
    return bytes((j1, s2 - 0x1F))


def _jis_to_sjis(j1: int, j2: int) -> bytes:
    s1 = (j1 + 1) // 2 + (0x70 if j1 <= 0x5E else 0xB0)
    s2 = j2 + (0x7E if j1 % 2 == 0 else (0x1F if j2 <= 0x5F else 0x20))
    return bytes((s1, s2))


def text_to_jis(line: str) -> bytes:
    """One line as ISO-2022-JP bytes via cp932; IBM extensions become NEC-selected codes."""
    out, kanji = bytearray(), False
    for ch in line:
        code = ch.encode("cp932")
        if len(code) == 1:
            if code[0] >= 0x80:
                raise ValueError(f"half-width katakana has no place in ISO-2022-JP: {ch!r}")
            if kanji:
                out += _ESC_ASCII
                kanji = False
            out += code
            continue
        if code[0] >= 0xFA:  # IBM extension rows: outside JIS's 94x94, use NEC's copy
            code = _nec_selected()[ch]
        if not kanji:
            out += _ESC_JIS
            kanji = True
        out += _sjis_to_jis(code)
    if kanji:
        out += _ESC_ASCII
    return bytes(out)


def jis_to_text(data: bytes) -> str:
    """The inverse of text_to_jis (ESC $ B and ESC ( B only): for tests and readers."""
    out, kanji, i = [], False, 0
    while i < len(data):
        if data[i] == 0x1B:
            kanji = data[i : i + 3] == _ESC_JIS
            i += 3
        elif kanji:
            out.append(_jis_to_sjis(data[i], data[i + 1]).decode("cp932"))
            i += 2
        else:
            out.append(chr(data[i]))
            i += 1
    return "".join(out)


def _encoded_words(text: str) -> bytes:
    """RFC 2047 B encoded-words of ISO-2022-JP, a few characters each, folded."""
    words = [
        b"=?ISO-2022-JP?B?" + base64.b64encode(text_to_jis(text[i : i + 10])) + b"?="
        for i in range(0, len(text), 10)
    ]
    return b"\r\n ".join(words)


_JAPANESE_MAIL = """
髙橋 浩|hiroshi.takahashi|㈱関西電機様との打ち合わせ①
ウォルシュ様

お疲れ様です。髙橋です。
㈱関西電機様との打ち合わせ内容をご報告します。
① 試験導入は来月第2週に開始
② 計測器3台を貸し出し、{n}日間の評価
③ 評価後に正式な見積もりを提出
詳細は添付の議事録をご確認ください。

髙橋 浩
%%
佐藤 健|ken.sato|【ご確認】{project}プロジェクトの日程①
ウォルシュ様

{project}プロジェクトの日程について、以下の通りご確認をお願いします。
① 設計レビュー：{weekday}午前10時
② 部品発注の締め切り：今月{n}日
③ ㈱ミナト精機様の工場監査：来月上旬
ご不明な点があればお知らせください。

佐藤 健
%%
山本 美咲|misaki.yamamoto|㈱大和部品様 請求書の件
ウォルシュ様

㈱大和部品様からの請求書（{n}件）を受領しました。
髙木部長の承認後、今月末の支払いに回します。
① 金額の確認：完了
② 発注書との照合：{weekday}までに完了予定

山本 美咲
%%
情報システム部|it-tokyo|【重要】メールゲートウェイ切り替えのお知らせ①
各位

社外からのメール閲覧は、来月より新しいゲートウェイ経由となります。
① パスワードとワンタイムコードが必要です
② 大きな添付ファイルは開いたときだけ受信されます
③ PHSや携帯電話でもご利用いただけます
ご不明点は情報システム部 髙田までお問い合わせください。

情報システム部
"""


def _japanese_entries() -> list[tuple[str, str, str, str]]:
    return japanese_entries(_JAPANESE_MAIL)


def _japanese(rng: random.Random, index: int) -> Builder:
    name, local, subject, body = _japanese_entries()[index % len(_japanese_entries())]
    values = {"project": rng.choice(_PROJECTS), "weekday": rng.choice(["月曜日", "水曜日"])}
    values["n"] = str(rng.randint(3, 19))
    subject, body = subject.format(**values), body.format(**values)

    def build(date: dt.datetime, mid: str) -> bytes:
        head = [
            b"From: " + _encoded_words(name) + f" <{local}@{OWNER[1].split('@')[1]}>".encode(),
            f"To: {OWNER[0]} <{OWNER[1]}>".encode(),
            b"Subject: " + _encoded_words(subject),
            f"Date: {format_datetime(date.astimezone(_JST))}".encode(),
            f"Message-ID: {mid}".encode(),
            b"MIME-Version: 1.0",
            b"Content-Type: text/plain; charset=ISO-2022-JP",
            b"Content-Transfer-Encoding: 7bit",
        ]
        lines = [text_to_jis(line) for line in body.split("\n")]
        return b"\r\n".join(head) + b"\r\n\r\n" + b"\r\n".join(lines)

    return build


# -- HTML newsletters ----------------------------------------------------------------------

_STYLE = (
    'style="font-family:Helvetica,Arial,sans-serif;font-size:14px;line-height:20px;'
    'color:#333333;padding:12px 24px;background-color:#ffffff"'
)


def _newsletter(rng: random.Random, index: int) -> Builder:
    entries = _entries(_NEWSLETTERS)
    subject, heading, *paragraphs = _fill(entries[index % len(entries)], rng)
    # A newsletter repeats its items with tracking links, tables and inline styles.
    articles = []
    for n in range(rng.randint(6, 18)):
        _, title, *lines = _fill(entries[rng.randrange(len(entries))], rng)
        token = hashlib.sha256(f"{index}/{n}".encode()).hexdigest()[:24]
        articles.append((title, " ".join(lines), f"https://news.kestrel.example/r/{token}"))
    page = [f"<html><head><title>{html.escape(subject)}</title></head><body>"]
    page.append('<table width="100%" cellpadding="0" cellspacing="0" border="0">')
    page.append(f"<tr><td {_STYLE}><h1>{html.escape(heading)}</h1></td></tr>")
    page += [f"<tr><td {_STYLE}><p>{html.escape(p)}</p></td></tr>" for p in paragraphs]
    for title, text, link in articles:
        page.append(
            f"<tr><td {_STYLE}><h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>"
            f'<p><a href="{link}" style="color:#0b5cad;text-decoration:underline">Read more'
            f"</a></p></td></tr>"
        )
    page.append("</table></body></html>")
    markup = "\n".join(page) + "\n"
    plain = [heading, *paragraphs]
    plain += [f"{title}\n{text}\nRead more: {link}" for title, text, link in articles]

    def build(date: dt.datetime, mid: str) -> bytes:
        msg = _new(_address("Internal Communications", "news"), OWNER, subject, date, mid)
        msg.set_content(_wrap(*plain))
        msg.add_alternative(markup, subtype="html")
        return _finish(msg, mid)

    return build


# -- attachments -----------------------------------------------------------------------------

_SUBJECTS = [
    "Signed supply agreement",
    "Field trial photos",
    "Firmware image for the pilot",
    "Q1 figures",
    "Scanned receipts",
    "Test report",
]


def _binary(rng: random.Random, kind: str, size: int) -> bytes:
    """Seeded random bytes behind the format's magic number: as incompressible as the real ones."""
    size = max(size, 64)
    if kind == "pdf":
        return _pdf(rng, size)
    magic = {"png": b"\x89PNG\r\n\x1a\n", "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00"}[kind]
    return magic + rng.randbytes(size - len(magic))


def _attachment(rng: random.Random, size: int, kind: str | None = None) -> Builder:
    kind = kind or rng.choice(["pdf", "png", "zip"])
    subject = rng.choice(_SUBJECTS)
    # The bytes come from their own generator, and `rng` is drawn from the same number of
    # times whatever the size: the rest of the corpus does not move with the scale.
    noise, small_png, logo = random.Random(rng.getrandbits(64)), rng.random() < 0.5, _png(rng)
    if size <= 20_000 and small_png:
        files: dict[str, bytes | str] = {"logo.png": logo}  # a real small PNG now and then
    else:
        name = f"{subject.lower().replace(' ', '-')}.{kind}"
        files = {name: _binary(noise, kind, size)}
    return _attachments(rng, subject, files)


def _attachment_sizes(rng: random.Random, count: int, scale: float) -> list[int]:
    """Half small (2-40 KB), 30 % medium (100-600 KB), 20 % large (1.5-6 MB)."""
    sizes = []
    for i in range(count):
        if i % 10 < 5:
            size = rng.randint(2_000, 40_000)
        elif i % 10 < 8:
            size = rng.randint(100_000, 600_000)
        else:
            size = rng.randint(1_500_000, 6_000_000)
        sizes.append(int(size * scale))
    return sizes


# -- the corpus ------------------------------------------------------------------------------


def build_corpus(scale: float = 1.0) -> list[CorpusMessage]:
    """The corpus, oldest first; identical bytes for the same `scale` on every call."""
    rng = random.Random(20261204)
    templates = len(_entries(_TEMPLATES))
    kinds: list[tuple[str, Builder]] = []
    for i in range(COUNTS["plain"] - 1):
        reply = _REPLIES[i % len(_REPLIES)] if i % 4 == 3 else None
        kinds.append(("plain", _plain(rng, i % templates, reply=reply)))
    kinds += [("iso2022jp", _japanese(rng, i)) for i in range(COUNTS["iso2022jp"] - 1)]
    kinds += [("newsletter", _newsletter(rng, i)) for i in range(COUNTS["newsletter"] - 1)]
    sizes = _attachment_sizes(rng, COUNTS["attachment"] - 2, scale)
    kinds += [("attachment", _attachment(rng, size)) for size in sizes]
    kinds += [("smime", _signed) for _ in range(COUNTS["smime"])]
    rng.shuffle(kinds)
    kinds += [  # the five newest, which triage opens whole: see the module doc
        ("attachment", _attachment(rng, int(300_000 * scale), "png")),
        ("iso2022jp", _japanese(rng, 0)),
        ("attachment", _attachment(rng, int(3_500_000 * scale), "pdf")),
        ("newsletter", _newsletter(rng, 0)),
        ("plain", _plain(rng, 0)),
    ]
    data = _stamp([build for _, build in kinds], "INBOX", rng)
    return [CorpusMessage(kind, message) for (kind, _), message in zip(kinds, data, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="attachment size factor")
    parser.add_argument("--small", action="store_true", help=f"--scale {SMALL_SCALE}")
    parser.add_argument("--out", type=Path, help="write NNNN-kind.eml files here")
    args = parser.parse_args(argv)
    corpus = build_corpus(SMALL_SCALE if args.small else args.scale)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for i, message in enumerate(corpus):
            (args.out / f"{i:04d}-{message.kind}.eml").write_bytes(message.data)
    sizes: Counter[str] = Counter()
    for message in corpus:
        sizes[message.kind] += len(message.data)
    counts = Counter(message.kind for message in corpus)
    for kind in KINDS:
        print(f"{kind:11} {counts[kind]:4d} messages {sizes[kind] / 1e6:9.2f} MB")
    total = sum(sizes.values())
    digest = hashlib.sha256(b"".join(m.data for m in corpus)).hexdigest()[:16]
    print(f"{'total':11} {len(corpus):4d} messages {total / 1e6:9.2f} MB  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
