"""COMPRESS=DEFLATE toward the client (RFC 4978): a zlib client on a raw TLS socket, real Dovecot.

imaplib cannot speak COMPRESS, so the client here is hand-rolled on plain zlib (raw DEFLATE,
sync flush after every command), the way RFC 4978 clients do it. Every compressed answer is
compared with the same command's answer on an uncompressed session.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import zlib
from collections.abc import Iterator

import pytest

from tests.gateway.conftest import PASSWORDS, Gateway

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")
_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


class Client:
    """An IMAP client on a socket, plain or (after compress()) DEFLATE both ways."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        _opened.append(sock)
        self.buf = bytearray()
        self.wire_in = 0  # bytes received from the socket, as they were on the wire
        self.wire_out = 0
        self.plain_in = 0  # the same bytes after inflating
        self._out: zlib._Compress | None = None
        self._in: zlib._Decompress | None = None
        self._tag = 0

    def compress(self) -> None:
        """Compress from now on (after the server's OK to COMPRESS)."""
        assert not self.buf, "the server sent something after its OK in plain text"
        self._out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._in = zlib.decompressobj(-15)

    def send_raw(self, data: bytes) -> None:
        """Bytes exactly as given, compressed or not, no flush marker added."""
        self.sock.sendall(data)
        self.wire_out += len(data)

    def send(self, data: bytes) -> None:
        if self._out is not None:
            data = self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)
        self.send_raw(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.wire_in += len(chunk)
        if self._in is not None:
            chunk = self._in.decompress(chunk)
        self.plain_in += len(chunk)
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n") + 2
        line = bytes(self.buf[:end])
        del self.buf[:end]
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def response(self, tag: bytes) -> list[bytes]:
        """Every response up to the tagged one, each with its literals folded in."""
        out = []
        while True:
            line = self.line()
            whole = line
            while (m := _LITERAL.search(line)) is not None:
                whole += self.exactly(int(m.group(1)))
                line = self.line()
                whole += line
            out.append(whole)
            if whole.startswith(tag + b" "):
                return out

    def command(self, text: bytes) -> list[bytes]:
        self._tag += 1
        tag = b"t%d" % self._tag
        self.send(tag + b" " + text + b"\r\n")
        return self.response(tag)

    def until_closed(self, timeout: float = 15) -> bytes:
        """What arrives (inflated) until the server closes the connection."""
        self.sock.settimeout(timeout)
        try:
            while True:
                self._fill()
        except (EOFError, ConnectionError, ssl.SSLError):
            pass
        self.sock.close()
        return bytes(self.buf)


def _login(gateway: Gateway, user: str = "bob") -> Client:
    client = Client(gateway.raw())
    secret = PASSWORDS[user] + gateway.code(user)
    answer = client.command(b'LOGIN %s "%s"' % (user.encode(), secret.encode()))
    assert answer[-1].startswith(b"t1 OK [CAPABILITY "), answer
    return client


def _compressed(gateway: Gateway, user: str = "bob") -> Client:
    client = _login(gateway, user)
    assert client.command(b"COMPRESS DEFLATE") == [b"t2 OK DEFLATE active\r\n"]
    client.compress()
    return client


def _ok(answer: list[bytes]) -> list[bytes]:
    """The untagged responses of a command that succeeded (the tagged line has timings)."""
    assert re.match(rb"t\d+ OK", answer[-1]), answer
    return answer[:-1]


def _large_message_uid(client: Client) -> bytes:
    _ok(client.command(b"EXAMINE INBOX"))
    found = _ok(client.command(b"UID SEARCH LARGER 200000"))[0]
    uids = found.split()[2:]
    assert len(uids) == 1, found
    return uids[0]


def test_compress_is_announced_after_login_only_and_the_upstreams_is_not_passed(
    gateway: Gateway,
) -> None:
    plain = Client(gateway.raw())
    before = plain.command(b"CAPABILITY")
    assert b"COMPRESS" not in b"".join(before)
    # Before login COMPRESS is refused like any other post-login command.
    assert plain.command(b"COMPRESS DEFLATE")[-1].startswith(b"t2 BAD ")
    plain.sock.close()

    client = Client(gateway.raw())
    secret = PASSWORDS["bob"] + gateway.code("bob")
    login_ok = client.command(b'LOGIN bob "%s"' % secret.encode())[-1]
    assert login_ok.split(b"]")[0].split().count(b"COMPRESS=DEFLATE") == 1, login_ok
    caps = _ok(client.command(b"CAPABILITY"))[0]
    # The proxy's own, once, whether or not the upstream offers COMPRESS itself.
    assert caps.split().count(b"COMPRESS=DEFLATE") == 1, caps
    assert not [c for c in caps.split() if c.startswith(b"COMPRESS=") and c != b"COMPRESS=DEFLATE"]
    client.sock.close()


def test_a_compressed_session_answers_byte_for_byte_what_a_plain_one_does(
    gateway: Gateway,
) -> None:
    plain = _login(gateway)
    client = _compressed(gateway)
    started_out = client.wire_in

    assert _ok(client.command(b'LIST "" "*"')) == _ok(plain.command(b'LIST "" "*"'))
    selected = _ok(client.command(b"SELECT INBOX"))
    assert any(re.fullmatch(rb"\* \d+ EXISTS\r\n", line) for line in selected), selected
    uid = _large_message_uid(client)
    assert uid == _large_message_uid(plain)

    headers = b"FETCH 1:* (UID FLAGS BODY.PEEK[HEADER])"
    before = (client.wire_in, client.plain_in)
    compressed = _ok(client.command(headers))
    headers_ratio = (client.wire_in - before[0]) / (client.plain_in - before[1])
    assert compressed == _ok(plain.command(headers))

    fetch = b"UID FETCH " + uid + b" (BODY.PEEK[])"
    before = (client.wire_in, client.plain_in)
    compressed = _ok(client.command(fetch))
    wire, inflated = client.wire_in - before[0], client.plain_in - before[1]
    uncompressed = _ok(plain.command(fetch))
    assert compressed == uncompressed
    assert len(compressed[0]) > 270_000  # the 200 KB PDF, base64 in MIME

    # Text (headers) shrinks to a fraction; the base64 of the PDF's random bytes loses about
    # the quarter base64 wastes, through the cheap Huffman-only stream.
    assert headers_ratio < 0.4, headers_ratio
    assert wire < 0.8 * inflated, (wire, inflated)
    print(
        f"headers ratio {headers_ratio:.3f}; PDF message {wire}/{inflated} = {wire / inflated:.3f}"
    )

    # The audit trail counts the compressed bytes that went on the wire.
    closes = len([e for e in gateway.audit() if e["kind"] == "session_close"])
    assert _ok(client.command(b"LOGOUT"))[0].startswith(b"* BYE")
    client.until_closed()
    received = client.wire_in - started_out
    plain.sock.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        events = [e for e in gateway.audit() if e["kind"] == "session_close"]
        if len(events) > closes and any(
            isinstance(e["detail"], dict)
            and e["detail"].get("bytes_out") == received + len(b"t2 OK DEFLATE active\r\n")
            for e in events[closes:]
        ):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no session_close counting {received} compressed bytes out")


def test_a_second_compress_or_another_mechanism_is_refused(gateway: Gateway) -> None:
    client = _login(gateway)
    assert client.command(b"COMPRESS GZIP")[-1].startswith(b"t2 BAD ")
    assert client.command(b"COMPRESS")[-1].startswith(b"t3 BAD ")
    assert client.command(b"COMPRESS DEFLATE") == [b"t4 OK DEFLATE active\r\n"]
    client.compress()
    again = client.command(b"COMPRESS DEFLATE")
    assert again == [b"t5 NO [COMPRESSIONACTIVE] DEFLATE is active already.\r\n"]
    _ok(client.command(b"NOOP"))
    assert _ok(client.command(b"LOGOUT"))[0].startswith(b"* BYE")
    client.sock.close()


def test_an_invalid_deflate_stream_ends_the_session_without_a_traceback(
    gateway: Gateway,
) -> None:
    client = _compressed(gateway)
    _ok(client.command(b"NOOP"))
    client.send_raw(b"\xff\xff\xff\xff not a deflate stream\r\n")
    rest = client.until_closed()
    assert rest in (b"", b"* BYE Invalid compressed data.\r\n"), rest
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if "invalid compressed data from the client" in gateway.logs():
            break
        time.sleep(0.2)
    logs = gateway.logs()
    assert "invalid compressed data from the client" in logs
    assert "Traceback" not in logs


def test_commands_pipelined_after_compress_end_the_session(gateway: Gateway) -> None:
    client = _login(gateway)
    # The second command is in plain text, sent before the OK: it cannot be told apart.
    client.send(b"t2 COMPRESS DEFLATE\r\nt3 NOOP\r\n")
    rest = client.until_closed()
    assert rest.startswith(b"* BYE "), rest
    assert b"t2 OK" not in rest
