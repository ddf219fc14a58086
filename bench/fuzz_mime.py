"""Fuzz the MIME rewriter: LeanRenderer (with its last-resort net turned into a failure), the
HTML reader, the charset decoders and the header re-encoder.

The oracle `run_lean` is a plain function shared with tests/mime/test_lean_properties.py;
`python -m bench.fuzz_mime TARGET` drives the targets with atheris for a bounded time:

    python -m bench.fuzz_mime lean -max_total_time=300 -rss_limit_mb=1024
    python -m bench.fuzz_mime text -max_total_time=300 -rss_limit_mb=1024
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from roamgate.mime import charsets, html_text
from roamgate.mime.headers import reader_header
from roamgate.mime.lean import HEADER_CAP, LINE_CAP, LeanRenderer, _Hold
from roamgate.profiles import BUILTIN_PROFILES, LinkProfile

PROFILES = {name: p for name, p in BUILTIN_PROFILES.items() if p.lean}
# What a rewritten leaf, a stub, a marker, a delimiter or an empty part may add to the output.
PART_OVERHEAD = 1024


class NetHit(AssertionError):
    """LeanRenderer's last-resort net caught an exception: a bug the net was hiding."""


class StrictRenderer(LeanRenderer):
    """A renderer whose catch-all is a failure, so the fuzzer sees what the net would hide."""

    def _copy_rest(self) -> bytes:
        raise NetHit("LeanRenderer hit its last-resort net")


def check_bounded(r: LeanRenderer) -> None:
    """Rule 2: what the renderer holds is bounded by its caps, never by the message."""
    assert len(r._line) <= LINE_CAP, len(r._line)
    assert len(r._header) <= HEADER_CAP + LINE_CAP, len(r._header)
    consumer = r._consumer
    if isinstance(consumer, _Hold):
        assert len(consumer.data) <= consumer.cap, (len(consumer.data), consumer.cap)


def run_lean(
    message: bytes, profile: LinkProfile, cuts: Sequence[int], *, strict: bool = True
) -> tuple[bytes, LeanRenderer]:
    """Render message fed in the given pieces; check the caps after every piece."""
    cls = StrictRenderer if strict else LeanRenderer
    r = cls(profile, profile_name="fuzz", original_login="fuzz#lan")
    out = bytearray()
    last = 0
    for cut in [*sorted(c % (len(message) + 1) for c in cuts), len(message)]:
        out += r.feed(message[last:cut])
        last = max(last, cut)
        check_bounded(r)
    out += r.close()
    # The output grows with the parts, not with what was left out: at most the input, the
    # kept text (quoted-printable may triple it) and a fixed overhead per delimiter line.
    # Header fields re-encoded as UTF-8 words (to_utf8) may at most double, plus a little.
    delimiters = message.count(b"\n--") + 1
    growth = len(message) + 64 * message.count(b"\n") if profile.to_utf8 else 0
    allowance = len(message) + growth + 3 * profile.text_budget + PART_OVERHEAD * (delimiters + 1)
    assert len(out) <= allowance, (len(out), allowance)
    if r.report.protected:
        assert bytes(out) == message
    return bytes(out), r


def run_text(data: bytes) -> None:
    """The text converters: any bytes, any label, never an exception; the HTML cut holds."""
    if not data:
        return
    labels = ["iso-2022-jp", "euc-jp", "shift_jis", "utf-8", "iso-8859-1", "x-unknown", None]
    label = labels[data[0] % len(labels)]
    body = data[1:]
    text = charsets.decode_text(body, label)
    assert isinstance(text, str)
    limit = 1 + data[0] * 4
    page = html_text.html_to_text(text, max_chars=limit)
    # The cut is on a word with a marker after it; the marker is short.
    assert len(page) <= limit + 200, (len(page), limit)
    value = body.decode("ascii", "surrogateescape").replace("\x00", "")
    header = charsets.header_to_utf8(value[:2000])
    assert isinstance(header, str)
    reader_header(body[:4096])


def _lean_target(data: bytes) -> None:
    if len(data) < 3:
        return
    names = sorted(PROFILES)
    profile = PROFILES[names[data[0] % len(names)]]
    cuts = [data[1] * 7, data[2] * 13]
    run_lean(data[3:], profile, cuts)


def main(argv: list[str]) -> None:
    import atheris  # only the fuzzing run needs it (the dev extra installs it)

    targets: dict[str, Callable[[bytes], object]] = {"lean": _lean_target, "text": run_text}
    if len(argv) < 2 or argv[1] not in targets:
        sys.exit(f"usage: python -m bench.fuzz_mime {{{','.join(targets)}}} [libFuzzer options]")
    atheris.instrument_all()
    atheris.Setup([argv[0], *argv[2:]], targets[argv[1]])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
