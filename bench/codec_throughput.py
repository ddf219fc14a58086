"""Prints ResponseParser throughput for a 20 MB FETCH literal and for metadata-heavy FETCH lines.

Run with `python -m bench.codec_throughput`; input arrives in 64 KiB feeds.

A figure, not a timed test: machines differ, the number is for comparing changes.
"""

from __future__ import annotations

import time

from roamgate.imap.events import NEED_DATA, PAUSED, LiteralChunk
from roamgate.imap.limits import KIB, MIB, Limits
from roamgate.imap.response_parser import ResponseParser
from roamgate.imap.serialize import EventWriter

SIZE = 20 * MIB
FEED = 64 * KIB


def run(relay: bool) -> tuple[float, int]:
    body = (b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * (SIZE // 58 + 1))[
        :SIZE
    ]
    data = b"* 12 FETCH (UID 7 BODY[] {%d}\r\n" % SIZE + body + b")\r\n"
    pieces = [data[i : i + FEED] for i in range(0, len(data), FEED)]
    parser = ResponseParser(Limits.upstream())
    writer = EventWriter()
    received = 0
    start = time.perf_counter()
    for piece in pieces:
        parser.receive_data(piece)
        while (event := parser.next_event()) is not NEED_DATA:
            if event is PAUSED:  # server literals never wait; keeps the type checker honest
                raise AssertionError("ResponseParser paused")
            if isinstance(event, LiteralChunk):
                received += len(event.data)
            if relay:
                writer.write(event)
    elapsed = time.perf_counter() - start
    assert received == SIZE
    return elapsed, received


# A metadata-heavy FETCH line as a mail client's folder sync asks for it, many times over.
FETCH_LINE = (
    b'* %d FETCH (UID 4 RFC822.SIZE 1234 FLAGS (\\Seen) BODYSTRUCTURE (("text" "plain"'
    b' ("charset" "utf-8") NIL NIL "7bit" 12 1 NIL NIL NIL NIL) "mixed" ("boundary" "x")'
    b' NIL NIL NIL) ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "subject" (("Terry Gray"'
    b' NIL "gray" "cac.washington.edu")) NIL NIL NIL NIL NIL NIL'
    b' "<B27397-0100000@cac.washington.edu>"))\r\n'
)
LINES = 10_000


def run_lines() -> float:
    data = b"".join(FETCH_LINE % (i + 1) for i in range(LINES))
    pieces = [data[i : i + FEED] for i in range(0, len(data), FEED)]
    parser = ResponseParser(Limits.upstream())
    start = time.perf_counter()
    for piece in pieces:
        parser.receive_data(piece)
        while parser.next_event() is not NEED_DATA:
            pass
    return time.perf_counter() - start


def main() -> None:
    for relay in (False, True):
        best = min(run(relay)[0] for _ in range(3))
        label = "parse + serialize" if relay else "parse"
        print(f"{label:18} 20 MiB FETCH literal, 64 KiB feeds: {best * 1000:6.1f} ms"
              f"  ({SIZE / MIB / best:7.0f} MiB/s)")  # fmt: skip
    best = min(run_lines() for _ in range(3))
    print(f"{'parse':18} {LINES} BODYSTRUCTURE+ENVELOPE FETCH lines: {best * 1000:6.1f} ms"
          f"  ({LINES / best:7.0f} lines/s)")  # fmt: skip


if __name__ == "__main__":
    main()
