"""The rendition cache follows the mailbox the client really has selected, message by message.

carol's own folders (so no other test's mail moves under them): Big (60 notes, more than the
phs prefetch depth of 50), Small (3) and Q (4). Raw TLS transcripts, the mail server read
directly for comparison.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator

import pytest

from roamgate.demo.dovecot import PrivateDovecot
from tests.gateway.conftest import PASSWORDS, Gateway, read_until_tagged

pytestmark = pytest.mark.peer
CACHE = b"(from the gateway's cache)"


def note(folder: str, n: int) -> bytes:
    return (
        f"From: a@kestrel.example\r\nSubject: {folder} note {n}\r\nMessage-ID: <{folder}{n}@k>\r\n"
        f"\r\n{folder} note number {n}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def folders(dovecot: PrivateDovecot, gateway: Gateway) -> Iterator[None]:
    dovecot.populate(
        "carol",
        PASSWORDS["carol"],
        {name: [note(name, n) for n in range(1, count + 1)] for name, count in
         (("Big", 60), ("Small", 3), ("Q", 4))},
    )  # fmt: skip
    yield
    # Other tests expect carol to be asked for a code: leave no travel window behind.
    assert gateway.cli("session", "revoke", "--user", "carol").returncode == 0


def ask(sock: ssl.SSLSocket | socket.socket, tag: bytes, line: bytes) -> bytes:
    sock.sendall(tag + b" " + line + b"\r\n")
    answer = b""
    while b"\r\n" + tag + b" " not in b"\r\n" + answer or not answer.endswith(b"\r\n"):
        chunk = sock.recv(65536)
        assert chunk, answer[-300:]
        answer += chunk
    return answer


def carol_phs(gateway: Gateway) -> ssl.SSLSocket | socket.socket:
    sock = gateway.raw()
    password = PASSWORDS["carol"] + gateway.code("carol")
    sock.sendall(b'a1 LOGIN "carol#phs" "' + password.encode() + b'"\r\n')
    assert read_until_tagged(sock, b"a1")[-1].startswith(b"a1 OK")
    return sock


def subjects(answer: bytes) -> list[bytes]:
    return re.findall(rb"Subject: ([^\r]*)\r\n", answer)


def test_the_newest_of_a_big_mailbox_come_from_the_cache_and_a_bad_set_does_not(
    gateway: Gateway, folders: None
) -> None:
    sock = carol_phs(gateway)
    try:
        assert b"60 EXISTS" in ask(sock, b"a2", b"EXAMINE Big")
        answer = ask(sock, b"a3", b"FETCH 51:60 (RFC822.SIZE BODY.PEEK[HEADER])")
        assert CACHE in answer
        assert subjects(answer) == [b"Big note %d" % n for n in range(51, 61)]
        # Messages the prefetch did not cover go to the mail server.
        older = ask(sock, b"a4", b"FETCH 1:2 (RFC822.SIZE BODY.PEEK[HEADER])")
        assert CACHE not in older and subjects(older) == [b"Big note 1", b"Big note 2"]
        # A number past EXISTS is the mail server's to refuse, not the cache's to answer.
        bad = ask(sock, b"a5", b"FETCH 59:61 (RFC822.SIZE)")
        assert CACHE not in bad and re.search(rb"(?m)^a5 (BAD|NO|OK)", bad)
    finally:
        sock.close()


def test_a_select_written_with_a_literal_is_followed_too(gateway: Gateway, folders: None) -> None:
    sock = carol_phs(gateway)
    try:
        ask(sock, b"a2", b"EXAMINE Big")
        assert CACHE in ask(sock, b"a3", b"FETCH 58:60 (BODY.PEEK[HEADER])")
        answer = ask(sock, b"a4", b"EXAMINE {5+}\r\nSmall")
        assert b"3 EXISTS" in answer
        small = ask(sock, b"a5", b"FETCH 1:3 (BODY.PEEK[HEADER])")
        assert subjects(small) == [b"Small note 1", b"Small note 2", b"Small note 3"]
    finally:
        sock.close()


def test_qresync_expunges_stop_the_cache_for_that_mailbox(
    gateway: Gateway, dovecot: PrivateDovecot, folders: None
) -> None:
    sock = carol_phs(gateway)
    try:
        ask(sock, b"a2", b"ENABLE QRESYNC")
        ask(sock, b"a3", b"SELECT Q")
        assert subjects(ask(sock, b"a4", b"FETCH 1:2 (BODY.PEEK[HEADER])")) == [
            b"Q note 1",
            b"Q note 2",
        ]
        with dovecot.imap("carol", PASSWORDS["carol"]) as admin:
            admin.select("Q")
            admin.store("1", "+FLAGS", r"(\Deleted)")
            admin.expunge()
        assert b"VANISHED" in ask(sock, b"a5", b"NOOP")
        after = ask(sock, b"a6", b"FETCH 1:3 (RFC822.SIZE BODY.PEEK[HEADER])")
        assert subjects(after) == [b"Q note 2", b"Q note 3", b"Q note 4"]
    finally:
        sock.close()
