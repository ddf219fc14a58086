"""Back-pressure: a slow client fetching a large message does not make the gateway hold it.

The relay writes to the client and waits for the write buffer to drain before it reads more from
the upstream, so the bytes waiting for a slow reader stay in the kernel's socket buffers and
Dovecot's, not in roamgate serve. The client here reads a 12 MB message at about 1.5 MB/s; the
gateway's resident memory is sampled from /proc while it does.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from roamgate.demo.dovecot import PrivateDovecot
from tests.gateway.conftest import PASSWORDS, Gateway, read_line, read_until_tagged

pytestmark = pytest.mark.peer

SIZE = 12_000_000


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert m is not None
    return int(m.group(1))


@pytest.fixture(scope="module")
def big_message(dovecot: PrivateDovecot) -> Iterator[str]:
    msg = EmailMessage()
    msg["From"] = "archive@kestrel.example"
    msg["To"] = "dave@kestrel.example"
    msg["Subject"] = "Back-pressure sample"
    msg.set_content("The whole archive is attached.\n")
    data = random.Random(5).randbytes(SIZE * 3 // 4)
    msg.add_attachment(data, maintype="application", subtype="zip", filename="archive.zip")
    dovecot.deliver("dave", msg.as_bytes(policy=SMTP))
    yield "Back-pressure sample"


@pytest.mark.parametrize("profile", ["lan", "phs"])
def test_a_slow_reader_does_not_fill_the_gateways_memory(
    gateway: Gateway, big_message: str, profile: str
) -> None:
    sock = gateway.raw()
    try:
        password = PASSWORDS["dave"] + gateway.code("dave")
        sock.sendall(b'a LOGIN "dave#' + profile.encode() + b'" "' + password.encode() + b'"\r\n')
        assert read_until_tagged(sock, b"a")[-1].startswith(b"a OK")
        sock.sendall(b'b SELECT INBOX\r\nc UID SEARCH SUBJECT "' + big_message.encode() + b'"\r\n')
        lines = read_until_tagged(sock, b"c")
        uid = b"".join(lines).split(b"* SEARCH ")[1].split()[0]
        before = rss_kib(gateway.process.pid)
        sock.sendall(b"d UID FETCH " + uid + b" (BODY.PEEK[])\r\n")
        header = read_line(sock)
        m = re.search(rb"\{(\d+)\}\r\n$", header)
        assert m is not None, header
        size = int(m.group(1))
        got, peak, started = 0, before, time.monotonic()
        while got < size:
            chunk = sock.recv(min(32768, size - got))
            assert chunk
            got += len(chunk)
            # About 1.5 MB/s: far slower than the upstream, which can send it all at once.
            time.sleep(max(0.0, got / 1_500_000 - (time.monotonic() - started)))
            peak = max(peak, rss_kib(gateway.process.pid))
        assert read_until_tagged(sock, b"d")[-1].startswith(b"d OK")
    finally:
        sock.close()
    if profile == "lan":
        assert size > SIZE * 0.99  # the stored message, passed through
    else:
        assert size < 10_000  # the lean rendition: text and a stub
    grown_mib = (peak - before) / 1024
    print(
        f"{profile}: {size} bytes to a slow reader; serve RSS {before} KiB, peak +{grown_mib:.1f} MiB"
    )
    assert grown_mib < 6, grown_mib
