"""HTML to plain text for the pda profile: newsletters, Outlook mail, and hostile markup."""

from __future__ import annotations

import email
import email.policy
import time
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roamgate.demo.mailbox import sample_mailbox
from roamgate.mime.html_text import html_to_text


def demo_newsletter_pages() -> list[str]:
    """The HTML alternatives of the newsletters the demo mailbox sends."""
    pages = []
    for raw in sample_mailbox(large_attachment_bytes=1000)["INBOX"]:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        for part in message.walk():
            if part.get_content_type() == "text/html":
                pages.append(part.get_content())
    return pages


def test_demo_newsletters_read_like_their_plain_alternative() -> None:
    pages = demo_newsletter_pages()
    assert pages
    for page in pages:
        text = html_to_text(page)
        heading, underline, blank, *rest = text.split("\n")
        assert underline == "=" * len(heading)
        assert blank == ""
        assert "<" not in text
        assert all(len(line) <= 72 for line in text.split("\n"))
        assert "" in rest  # paragraphs are separated by one blank line


NEWSLETTER = """\
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Kestrel News</title>
<style>.x { color: red }</style></head>
<body>
<div style="display:none;max-height:0">March news inside &zwnj;&nbsp;&#847;&zwnj;&nbsp;</div>
<table role="presentation" width="100%"><tr><td align="center">
 <table width="600"><tr><td>
  <a href="https://news.kestrel.example/?utm=1"><img src="logo.png" alt="Kestrel"></a>
  <h1>Kestrel&nbsp;News: March edition</h1>
  <p>The Tokyo office celebrated its tenth anniversary with an open day for customers and
     families &mdash; <a href="https://kestrel.example/tokyo">photos here</a>.</p>
  <h2>In this issue</h2>
  <ul><li>Tokyo <b>open day</b></li><li>Falcon pilot</li></ul>
  <p>Questions? Write to <a href="mailto:news@kestrel.example">news@kestrel.example</a>
     or <a href="mailto:news@kestrel.example?subject=Hi">the editors</a>.
     <a href="#top">Back to top</a></p>
  <img src="https://t.example/open.gif" width="1" height="1" alt="">
 </td></tr></table>
</td></tr></table>
</body></html>
"""


def test_realistic_newsletter() -> None:
    assert html_to_text(NEWSLETTER) == (
        "[image: Kestrel] [1]\n"
        "\n"
        "Kestrel News: March edition\n"
        "===========================\n"
        "\n"
        "The Tokyo office celebrated its tenth anniversary with an open day for\n"
        "customers and families \u2014 photos here [2].\n"
        "\n"
        "In this issue\n"
        "-------------\n"
        "\n"
        "- Tokyo open day\n"
        "- Falcon pilot\n"
        "\n"
        "Questions? Write to news@kestrel.example or the editors [3]. Back to top\n"
        "\n"
        "[1] https://news.kestrel.example/?utm=1\n"
        "[2] https://kestrel.example/tokyo\n"
        "[3] mailto:news@kestrel.example?subject=Hi"
    )


def test_nested_and_ordered_lists() -> None:
    page = (
        "<ol><li>First<ul><li>alpha<li>beta<ol start=7><li>deep</ol></ul>"
        "<li>Second item with enough words in it to need wrapping at the seventy-two column mark</ol>"
    )
    assert html_to_text(page) == (
        "1. First\n"
        "   - alpha\n"
        "   - beta\n"
        "     7. deep\n"
        "2. Second item with enough words in it to need wrapping at the\n"
        "   seventy-two column mark"
    )


def test_table_rows_and_cells() -> None:
    page = (
        "<p>Q1 sales</p><table><tr><th>Region</th><th>Jan</th><th>Feb</th></tr>"
        "<tr><td>EMEA<td>120<td>131<tr><td>APAC</td><td></td><td>99</td></table><p>end</p>"
    )
    assert (
        html_to_text(page) == "Q1 sales\n\nRegion | Jan | Feb\nEMEA | 120 | 131\nAPAC | 99\n\nend"
    )


def test_link_list_numbers_each_url_once() -> None:
    page = (
        '<p><a href="https://a.example/x">one</a>, <a href="https://b.example/">two</a>, '
        '<a href="https://a.example/x">one again</a>, <a href="https://c.example/">https://c.example/</a>, '
        '<a href="/relative">relative</a>, <a href="javascript:void(0)">script</a>, '
        '<a href="#section">anchor</a>, <a href="mailto:erin@kestrel.example">Erin@Kestrel.example</a></p>'
    )
    assert html_to_text(page) == (
        "one [1], two [2], one again [1], https://c.example/, relative, script,\n"
        "anchor, Erin@Kestrel.example\n"
        "\n"
        "[1] https://a.example/x\n"
        "[2] https://b.example/"
    )


def test_script_style_head_and_comments_vanish() -> None:
    page = (
        "<html><head><title>Secret title</title><script>var a = '<p>no</p>';</script></head>"
        "<body><style>p { x: y }</style><!-- a comment <p>no</p> -->"
        "<!--[if mso]><p>Outlook only</p><![endif]--><p>yes</p><svg><title>icon</title></svg>"
        "<noscript>shown</noscript><template><p>no</p></template></body></html>"
    )
    assert html_to_text(page) == "yes\n\nshown"


def test_head_without_end_tag_does_not_swallow_the_body() -> None:
    assert html_to_text("<head><title>t</title><p>body text") == "body text"


def test_entities_and_whitespace() -> None:
    page = "<p>  A&amp;B &lt;tag&gt; caf&eacute; &#x2460;&#12849; &copy;\n\n   2024 &nbsp; end &bogus;</p>"
    assert html_to_text(page) == "A&B <tag> café ①㈱ © 2024 end &bogus;"


def test_line_breaks_headings_and_blank_lines() -> None:
    page = (
        "<div>Gmail line</div><div><br></div><div>after an empty line</div>"
        "<p>a<br>b<br><br><br>c<br></p><p></p><p></p><h3>Small heading</h3><hr><p>last</p>"
    )
    assert html_to_text(page) == (
        "Gmail line\n\nafter an empty line\n\na\nb\n\nc\n\nSmall heading\n-------------\n\n"
        + "-" * 20
        + "\n\nlast"
    )


def test_outlook_msonormal_lines() -> None:
    page = (
        '<div class="WordSection1"><p class="MsoNormal">Hi Erin,<o:p></o:p></p>'
        '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>'
        '<p class="MsoNormal">The figures are attached.<o:p></o:p></p>'
        '<p class="MsoNormal">Tom<o:p></o:p></p></div>'
        "<blockquote><p>Earlier message</p><p>second paragraph</p></blockquote>"
    )
    assert html_to_text(page) == (
        "Hi Erin,\n\nThe figures are attached.\nTom\n\n> Earlier message\n>\n> second paragraph"
    )


def test_pre_keeps_its_layout() -> None:
    page = "<p>log:</p><pre>\n  a   b\n\tc  <b>d</b>\n</pre>"
    assert html_to_text(page) == "log:\n\n  a   b\n        c  d"


def test_wrapping_keeps_long_urls_whole_and_breaks_japanese() -> None:
    url = "https://kestrel.example/" + "long-path-segment/" * 6
    text = html_to_text(f"<p>Please read {url} before Friday.</p>")
    assert text.split("\n") == ["Please read", url, "before Friday."]
    japanese = html_to_text("<p>" + "来週の定例会議の日程変更について。" * 6 + "</p>")
    lines = japanese.split("\n")
    assert len(lines) > 1
    assert all(len(line) <= 36 for line in lines)  # 72 columns of double-width characters


def test_images() -> None:
    page = '<p>Logo: <img src="l.png" alt="Kestrel logo">, spacer: <img src="s.gif" alt="">.</p>'
    assert html_to_text(page) == "Logo: [image: Kestrel logo] , spacer: ."


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (
            "<p>unclosed <b>bold <i>italic <a href='https://x.example/'>link",
            "unclosed bold italic link [1]\n\n[1] https://x.example/",
        ),
        ("<p>a</b></i></p></div>b", "a\n\nb"),
        ("<div>x<li>y</div>z", "x\n- y\nz"),
        ("if a < b and c > d then", "if a < b and c > d then"),
        ("<p>cut <a href='https://x.example/", "cut"),
        ("<p>unterminated comment <!-- rest", "unterminated comment"),
        ("<![foo[ text ]]> after <![ if y", "<![foo[ text ]]> after <![ if y"),
        ("<p>text</p><script>never closed <p>", "text"),
        ("tail &amp", "tail &"),
    ],
)
def test_malformed_html(page: str, expected: str) -> None:
    assert html_to_text(page) == expected


def test_max_chars_cuts_on_a_word_and_marks_the_cut() -> None:
    paragraph = "<p>The quick brown fox jumps over the lazy dog near the river bank.</p>"
    page = "<p>See <a href='https://k.example/a'>this</a>.</p>" + paragraph * 200
    page += "<p><a href='https://k.example/late'>late link</a></p>"
    text = html_to_text(page, max_chars=300)
    assert len(text) <= 300
    body, links = text.split("\n[...]\n")
    assert body.startswith("See this [1].")
    assert body.split()[-1] in paragraph
    assert links == "\n[1] https://k.example/a"  # only links the kept text cites


def test_max_chars_is_bounded_work_on_a_10_mb_page() -> None:
    page = "<html><body>" + "<div><p>Newsletter paragraph with some words.</p></div>\n" * 200_000
    assert len(page) > 10_000_000
    started = time.perf_counter()
    text = html_to_text(page, max_chars=2000)
    assert time.perf_counter() - started < 2
    assert len(text) <= 2000
    assert text.endswith("[...]")


def test_max_chars_stops_on_markup_only_pages() -> None:
    page = "<p>hello</p>" + "<div>" * 2_000_000
    started = time.perf_counter()
    assert html_to_text(page, max_chars=1000) == "hello\n[...]"
    assert time.perf_counter() - started < 2


def test_short_pages_are_not_marked() -> None:
    assert html_to_text("<p>short</p>", max_chars=100) == "short"


@pytest.mark.parametrize(
    "hostile",
    [
        '<a b="' * 40_000,  # Python 3.11's close() is quadratic on this: 45 s for 120 kB
        "<!--" * 60_000,
        "<a" * 120_000,
        "</a" * 80_000,
        "<![if" * 50_000,
        "<b>" * 80_000 + "</i>" * 60_000,
        "<ul><li>" * 30_000,
    ],
)
def test_hostile_markup_is_linear(hostile: str) -> None:
    started = time.perf_counter()
    html_to_text(hostile)
    html_to_text(hostile, max_chars=500)
    assert time.perf_counter() - started < 5


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=500))
def test_arbitrary_text_never_raises(page: str) -> None:
    assert isinstance(html_to_text(page), str)


TAGS = ["<p>", "</p>", "<a href='http://x/'>", "</a>", "<li>", "<ul>", "</ul>", "<ol>", "<td>"]
TAGS += ["<tr>", "<table>", "</table>", "<br>", "<pre>", "</pre>", "<h1>", "</h1>", "<![", "<!--"]
TAGS += ["-->", "<script>", "</script>", "<blockquote>", "<img alt='i'>", "&amp;", "<", ">", '"']
TAGS += ["<div style='display:none'>", "</div>", "<head>", "<body>", " ", "\n", "word", "語"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TAGS), max_size=80), st.none() | st.integers(0, 200))
def test_tag_soup_never_raises(parts: list[str], max_chars: int | None) -> None:
    text = html_to_text("".join(parts), max_chars=max_chars)
    if max_chars is not None:
        assert len(text) <= max(max_chars, len("[...]"))
    for line in text.split("\n"):
        assert len(line) <= 72 or " " not in line.strip()
