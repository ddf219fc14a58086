"""The upstream IDLE is renewed (DONE + a fresh IDLE) without the idling client noticing.

THE SLOW TEST (~40 s): the shortest renewal interval the config allows is 30 s, and the
client idles past it. Everything else under tests/gateway/ takes seconds.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from roamgate.demo.dovecot import PrivateDovecot
from tests.gateway.conftest import PASSWORDS, Gateway, running_gateway

RENEW_S = 30  # imap_proxy.idle_renew_seconds: its minimum


@pytest.fixture(scope="module")
def renewing_gateway(
    dovecot: PrivateDovecot, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with running_gateway(
        dovecot,
        tmp_path_factory.mktemp("renew") / "gw",
        users={"erin": ""},
        proxy_settings={"idle_renew_seconds": RENEW_S, "keepalive_seconds": 10},
    ) as gw:
        yield gw


class _Lines:
    """Lines from a socket, with a deadline per read (a timeout loses no partial line)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.seen: list[bytes] = []

    def next(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                return None
            assert chunk, f"connection closed; seen {self.seen!r}"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        self.seen.append(line)
        return line

    def until(self, done: re.Pattern[bytes], timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            line = self.next(left)
            if line is not None and done.match(line):
                return line
        raise AssertionError(f"no line like {done.pattern!r} within {timeout} s: {self.seen!r}")


def test_a_long_idle_is_renewed_upstream_and_still_sees_new_mail(
    renewing_gateway: Gateway,
) -> None:
    gw = renewing_gateway
    sock = gw.raw()
    lines = _Lines(sock)
    try:
        secret = PASSWORDS["erin"] + gw.code("erin")
        sock.sendall(b'A1 LOGIN erin "' + secret.encode() + b'"\r\n')
        assert lines.until(re.compile(rb"A1 "), 15).startswith(b"A1 OK")
        sock.sendall(b"A2 SELECT INBOX\r\n")
        assert lines.until(re.compile(rb"A2 "), 15).startswith(b"A2 OK")
        exists = max(int(m[1]) for x in lines.seen if (m := re.match(rb"\* (\d+) EXISTS", x)))
        sock.sendall(b"A3 IDLE\r\n")
        lines.until(re.compile(rb"\+ "), 15)
        idle_began, idle_lines = time.monotonic(), len(lines.seen)

        # Idle past the renewal; keep-alives (ours or Dovecot's) may arrive meanwhile.
        while "renewed upstream IDLE" not in gw.logs():
            assert time.monotonic() - idle_began < RENEW_S + 10, gw.logs()[-2000:]
            lines.next(1.0)
        renewed_after = time.monotonic() - idle_began
        assert renewed_after >= RENEW_S - 1

        gw.dovecot.deliver("erin", b"From: ops@example.com\r\nSubject: after renewal\r\n\r\nhi\r\n")
        lines.until(re.compile(rb"\* %d EXISTS" % (exists + 1)), 15)
        sock.sendall(b"DONE\r\n")
        done = lines.until(re.compile(rb"[^*+]"), 15)
        assert done.startswith(b"A3 OK"), lines.seen
        # The client saw one IDLE: no second continuation, no answer under the proxy's tag.
        during = lines.seen[idle_lines:]
        assert [x for x in during if not x.startswith(b"* ")] == [done], during
        sock.sendall(b"A4 NOOP\r\n")
        assert lines.until(re.compile(rb"A4 "), 15).startswith(b"A4 OK")
        sock.sendall(b"A5 LOGOUT\r\n")
        lines.until(re.compile(rb"A5 "), 15)
    finally:
        sock.close()
    print(f"upstream IDLE renewed after {renewed_after:.1f} s")
