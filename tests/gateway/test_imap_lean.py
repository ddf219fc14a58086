"""Lean renditions through the TLS door: imaplib against the gateway and against Dovecot itself.

bob's sample mailbox holds a message with a 200 KB PDF, newsletters, Japanese mail and an
S/MIME-signed notice. A login as `bob#phs` must get lean renditions whose sizes, headers, texts
and ranges agree; a part by its number and a login as `bob#lan` must get the stored bytes.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest

from roamgate.demo.dovecot import PrivateDovecot
from roamgate.demo.mailbox import smime_signer_certificate_pem
from roamgate.imap.assemble import Assembler
from roamgate.imap.events import NEED_DATA, Atom
from roamgate.imap.response_parser import ResponseParser
from roamgate.imap.values import Response, Value, ValueList
from roamgate.mime.lean import LeanRenderer
from roamgate.profiles import BUILTIN_PROFILES
from tests.gateway.conftest import PASSWORDS, Gateway, read_line, read_until_tagged

pytestmark = pytest.mark.peer


def payload(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


@pytest.fixture
def direct(dovecot: PrivateDovecot) -> Iterator[imaplib.IMAP4_SSL]:
    """bob's mailbox straight from Dovecot: what is stored."""
    with dovecot.imap("bob", PASSWORDS["bob"]) as client:
        client.select("INBOX", readonly=True)
        yield client


def login(gateway: Gateway, name: str) -> imaplib.IMAP4_SSL:
    client = gateway.imaps()
    assert client.login(name, PASSWORDS["bob"] + gateway.code("bob"))[0] == "OK"
    assert client.select("INBOX", readonly=True)[0] == "OK"
    return client


def raw_phs(gateway: Gateway) -> ssl.SSLSocket | socket.socket:
    """A raw TLS socket logged in as bob#phs (tag a1), for byte-exact transcripts."""
    sock = gateway.raw()
    password = PASSWORDS["bob"] + gateway.code("bob")
    sock.sendall(b'a1 LOGIN "bob#phs" "' + password.encode() + b'"\r\n')
    assert read_until_tagged(sock, b"a1")[-1].startswith(b"a1 OK")
    return sock


@pytest.fixture
def phs(gateway: Gateway) -> Iterator[imaplib.IMAP4_SSL]:
    client = login(gateway, "bob#phs")
    yield client
    client.logout()


def uid_of(client: imaplib.IMAP4, subject: str) -> str:
    typ, data = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
    assert typ == "OK"
    uids = (data[0] or b"").split()
    assert len(uids) == 1, (subject, uids)
    return str(uids[0].decode())


def fetch(client: imaplib.IMAP4, uid: str, items: str) -> dict[bytes, bytes]:
    """UID FETCH; every item's value by name (literals and atoms alike)."""
    typ, data = client.uid("FETCH", uid, items)
    assert typ == "OK", data
    values: dict[bytes, bytes] = {}
    text = b""
    for entry in data:
        if isinstance(entry, tuple):
            head, literal = entry
            text += head
            name = re.search(rb"([A-Z0-9.]+(?:\[[^\]]*\](?:<\d+>)?)?) \{\d+\}$", head)
            assert name is not None, head
            values[name.group(1)] = literal
        elif entry is not None and entry != b")":
            text += entry
    for m in re.finditer(rb"(RFC822\.SIZE|UID) (\d+)", text):
        values[m.group(1)] = m.group(2)
    flags = re.search(rb"FLAGS \(([^)]*)\)", text)
    if flags:
        values[b"FLAGS"] = flags.group(1)
    return values


def test_whole_message_is_lean_and_its_size_agrees(
    phs: imaplib.IMAP4_SSL, direct: imaplib.IMAP4_SSL
) -> None:
    uid = uid_of(phs, "Signed supply agreement")
    lean = fetch(phs, uid, "(RFC822.SIZE BODY.PEEK[])")
    stored = fetch(direct, uid_of(direct, "Signed supply agreement"), "(RFC822.SIZE BODY.PEEK[])")
    assert int(lean[b"RFC822.SIZE"]) == len(lean[b"BODY[]"])
    assert len(lean[b"BODY[]"]) * 50 < len(stored[b"BODY[]"])
    msg = email.message_from_bytes(lean[b"BODY[]"], policy=email.policy.compat32)
    assert not msg.defects
    leaves = [p for p in msg.walk() if not p.is_multipart()]
    assert "Please find the files attached." in payload(leaves[0]).decode()
    stub = payload(leaves[1]).decode()
    assert '"supply-agreement.pdf"' in stub and "BODY[2]" in stub and "bob#lan" in stub
    # RFC822 (not peek) in the same session agrees with BODY.PEEK[] byte for byte.
    again = fetch(phs, uid, "(RFC822.SIZE)")
    assert again[b"RFC822.SIZE"] == lean[b"RFC822.SIZE"]


def test_a_part_by_its_number_is_the_real_part(
    phs: imaplib.IMAP4_SSL, direct: imaplib.IMAP4_SSL
) -> None:
    uid = uid_of(phs, "Signed supply agreement")
    through = fetch(phs, uid, "(BODY.PEEK[2] BODYSTRUCTURE)")
    stored = fetch(direct, uid_of(direct, "Signed supply agreement"), "(BODY.PEEK[2])")
    assert through[b"BODY[2]"] == stored[b"BODY[2]"]
    assert len(stored[b"BODY[2]"]) > 200_000


def test_ranges_headers_and_texts_are_slices_of_the_same_rendition(
    phs: imaplib.IMAP4_SSL,
) -> None:
    uid = uid_of(phs, "Signed supply agreement")
    whole = fetch(phs, uid, "(BODY.PEEK[])")[b"BODY[]"]
    header_len = whole.index(b"\r\n\r\n") + 4
    parts = fetch(
        phs,
        uid,
        "(BODY.PEEK[]<0.100> BODY.PEEK[HEADER] RFC822.HEADER BODY.PEEK[TEXT] BODY.PEEK[TEXT]<10.20>)",
    )
    assert parts[b"BODY[]<0>"] == whole[:100]
    assert parts[b"BODY[HEADER]"] == whole[:header_len]
    assert parts[b"RFC822.HEADER"] == whole[:header_len]
    assert parts[b"BODY[TEXT]"] == whole[header_len:]
    assert parts[b"BODY[TEXT]<10>"] == whole[header_len + 10 : header_len + 30]
    tail = fetch(phs, uid, f"(BODY.PEEK[]<{len(whole) - 5}.100>)")
    assert tail[b"BODY[]<" + str(len(whole) - 5).encode() + b">"] == whole[-5:]


def test_the_lan_login_gets_every_message_as_stored(
    gateway: Gateway, direct: imaplib.IMAP4_SSL
) -> None:
    client = login(gateway, "bob#lan")
    try:
        for subject in ("Signed supply agreement", "Security notice"):
            through = fetch(client, uid_of(client, subject), "(RFC822.SIZE BODY.PEEK[])")
            stored = fetch(direct, uid_of(direct, subject), "(RFC822.SIZE BODY.PEEK[])")
            assert through == stored
    finally:
        client.logout()


def test_signed_mail_passes_byte_for_byte_and_its_signature_verifies(
    phs: imaplib.IMAP4_SSL, direct: imaplib.IMAP4_SSL, tmp_path: Path
) -> None:
    through = fetch(phs, uid_of(phs, "Security notice"), "(BODY.PEEK[])")[b"BODY[]"]
    stored = fetch(direct, uid_of(direct, "Security notice"), "(BODY.PEEK[])")[b"BODY[]"]
    assert through == stored
    openssl = shutil.which("openssl")
    assert openssl is not None
    (tmp_path / "m.eml").write_bytes(through)
    (tmp_path / "ca.pem").write_bytes(smime_signer_certificate_pem())
    check = subprocess.run(
        [openssl, "smime", "-verify", "-in", str(tmp_path / "m.eml"), "-CAfile",
         str(tmp_path / "ca.pem"), "-out", str(tmp_path / "out.txt")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert check.returncode == 0 and "Verification successful" in check.stderr, check.stderr


def test_reader_headers_leave_out_trace_fields_on_phs_only(
    phs: imaplib.IMAP4_SSL, direct: imaplib.IMAP4_SSL
) -> None:
    uid = uid_of(phs, "Signed supply agreement")
    lean = fetch(phs, uid, "(BODY.PEEK[HEADER])")[b"BODY[HEADER]"]
    stored = fetch(direct, uid, "(BODY.PEEK[HEADER])")[b"BODY[HEADER]"]
    names = {line.split(b":")[0].lower() for line in lean.split(b"\r\n") if b":" in line}
    assert {b"from", b"to", b"subject", b"date", b"message-id"} <= names
    assert all(not n.startswith(b"x-") and n != b"received" for n in names)
    assert len(lean) <= len(stored)


def test_seen_is_set_by_rfc822_and_not_by_peek(gateway: Gateway) -> None:
    client = login(gateway, "bob#phs")
    try:
        client.select("INBOX")  # read-write for this test
        uid = uid_of(client, "Q1 sales by region")
        client.uid("STORE", uid, "-FLAGS", r"(\Seen)")
        assert b"\\Seen" not in fetch(client, uid, "(FLAGS BODY.PEEK[])").get(b"FLAGS", b"")
        assert b"\\Seen" not in fetch(client, uid, "(FLAGS)")[b"FLAGS"]
        fetch(client, uid, "(RFC822)")
        assert b"\\Seen" in fetch(client, uid, "(FLAGS)")[b"FLAGS"]
        client.uid("STORE", uid, "-FLAGS", r"(\Seen)")
    finally:
        client.logout()


def test_pipelined_fetches_each_get_their_own_answers(gateway: Gateway) -> None:
    sock = raw_phs(gateway)
    try:
        sock.sendall(
            b"a2 EXAMINE INBOX\r\n"
            b"a3 FETCH 1:3 (FLAGS RFC822.SIZE)\r\n"
            b"a4 FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n"
            b"a5 FETCH 1 (RFC822.SIZE BODY.PEEK[])\r\n"
            b"a6 NOOP\r\n"
        )
        lines: list[bytes] = []
        while not lines or not lines[-1].startswith(b"a6 "):
            line = read_line(sock)
            assert line, lines
            literal = re.search(rb"\{(\d+)\}\r\n$", line)
            if literal:
                body = b""
                while len(body) < int(literal.group(1)):
                    body += sock.recv(int(literal.group(1)) - len(body))
                line += body
            lines.append(line)
        text = b"".join(lines)
        for tag in (b"a2", b"a3", b"a4", b"a5", b"a6"):
            assert re.search(rb"(?m)^" + tag + rb" OK", text), (tag, text[-500:])
        sizes = re.findall(rb"\* (\d+) FETCH \(FLAGS \([^)]*\) RFC822\.SIZE (\d+)\)", text)
        assert [n for n, _ in sizes] == [b"1", b"2", b"3"]
        one = re.search(rb"\* 1 FETCH \(RFC822\.SIZE (\d+) BODY\[\] \{(\d+)\}", text)
        assert one is not None and one.group(1) == one.group(2) == sizes[0][1]
        assert b"SUBJECT" in text.upper()
    finally:
        sock.close()


def test_a_bad_command_after_a_good_one_in_the_same_packet_drops_only_itself(
    gateway: Gateway,
) -> None:
    sock = raw_phs(gateway)
    try:
        sock.sendall(b"a2 NOOP\r\na3 FETCH 1 (BODY[\r\na4 NOOP\r\n")
        lines = read_until_tagged(sock, b"a4")
        text = b"".join(lines)
        assert re.search(rb"(?m)^a2 OK", text), text
        assert re.search(rb"(?m)^a3 BAD", text), text
        assert lines[-1].startswith(b"a4 OK")
    finally:
        sock.close()


def test_pda_gets_japanese_mail_in_utf8(gateway: Gateway, direct: imaplib.IMAP4_SSL) -> None:
    client = login(gateway, "bob#pda")
    try:
        typ, data = client.uid("SEARCH", "HEADER", "Content-Type", "ISO-2022-JP")
        assert typ == "OK"
        uid = (data[0] or b"").split()[0].decode()
        lean = fetch(client, uid, "(BODY.PEEK[])")[b"BODY[]"]
        stored = fetch(direct, uid, "(BODY.PEEK[])")[b"BODY[]"]
        msg = email.message_from_bytes(lean, policy=email.policy.default)
        original = email.message_from_bytes(stored, policy=email.policy.default)
        assert msg.get_content_charset() == "utf-8"
        assert msg.get_content().replace("\r\n", "\n") == original.get_content().replace(
            "\r\n", "\n"
        )
        assert str(msg["Subject"]) == str(original["Subject"])
    finally:
        client.logout()


def closed_session(
    gateway: Gateway, login_name: str, work: Callable[[imaplib.IMAP4_SSL], None]
) -> dict[str, object]:
    """Log in, do the work, log out; the session_close record's detail."""
    client = login(gateway, login_name)
    work(client)
    before = len([e for e in gateway.audit() if e["kind"] == "session_close"])
    client.logout()
    deadline = time.monotonic() + 10
    while True:
        closes = [e for e in gateway.audit() if e["kind"] == "session_close"]
        if len(closes) > before or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(closes) > before, "session_close is written when the relay ends"
    detail = closes[-1]["detail"]
    assert isinstance(detail, dict)
    return detail


def test_the_prefetch_renders_a_mailbox_once_and_session_close_counts_it(
    gateway: Gateway,
) -> None:
    def open_one(client: imaplib.IMAP4_SSL) -> None:
        fetch(client, uid_of(client, "Signed supply agreement"), "(BODY.PEEK[])")

    first = closed_session(gateway, "bob#phs", open_one)
    again = closed_session(gateway, "bob#phs", open_one)
    # The first SELECT of bob's INBOX on phs in this gateway rendered its newest messages
    # (INBOX has 35; an earlier test may have been first); a second SELECT renders none.
    everything = [
        int(e["detail"].get("prefetched", 0))
        for e in gateway.audit()
        if e["kind"] == "session_close" and isinstance(e["detail"], dict)
        and e["detail"].get("profile") == "phs" and e["user"] == "bob"
    ]  # fmt: skip
    assert sum(everything) >= 30, everything
    assert again["prefetched"] == 0, again
    assert int(str(first["cache_hits"])) >= 1 and int(str(again["cache_hits"])) >= 1


def render_direct(direct: imaplib.IMAP4_SSL, uid: str, profile: str = "phs") -> bytes:
    """The rendition made here, independently of the gateway, from the stored bytes."""
    stored = fetch(direct, uid, "(BODY.PEEK[])")[b"BODY[]"]
    r = LeanRenderer(BUILTIN_PROFILES[profile], profile_name=profile, original_login="bob#lan")
    return r.feed(stored) + r.close()


def test_renditions_from_the_cache_are_the_renditions_of_the_stored_bytes(
    phs: imaplib.IMAP4_SSL, direct: imaplib.IMAP4_SSL
) -> None:
    typ, data = phs.uid("SEARCH", "ALL")
    assert typ == "OK"
    uids = (data[0] or b"").decode().split()
    for uid in uids[-6:]:
        got = fetch(phs, uid, "(RFC822.SIZE BODY.PEEK[])")
        assert got[b"BODY[]"] == render_direct(direct, uid)
        assert int(got[b"RFC822.SIZE"]) == len(got[b"BODY[]"])


def test_sequence_numbers_follow_expunges_and_new_mail(
    gateway: Gateway, dovecot: PrivateDovecot
) -> None:
    def note(n: int) -> bytes:
        return (
            f"From: a@kestrel.example\r\nSubject: note {n}\r\nMessage-ID: <n{n}@k>\r\n\r\n"
            + f"note number {n}\r\n" * (n * 700)
        ).encode()

    with dovecot.imap("erin", PASSWORDS["erin"]) as admin:
        admin.select("INBOX")
        for n in range(1, 5):
            admin.append("INBOX", "", None, note(n))
        client = gateway.imaps()
        assert client.login("erin#phs", PASSWORDS["erin"] + gateway.code("erin"))[0] == "OK"
        try:
            assert client.select("INBOX", readonly=True)[0] == "OK"
            # Another client removes the first two notes and a new one arrives.
            typ, data = admin.search(None, "ALL")
            first, second = (data[0] or b"").split()[:2]
            admin.store(f"{first.decode()},{second.decode()}", "+FLAGS", r"(\Deleted)")
            admin.expunge()
            admin.append("INBOX", "", None, note(9))
            client.noop()
            typ, data = client.fetch("1:*", "(RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK"
            subjects = [bytes(d[1]).strip() for d in data if isinstance(d, tuple)]
            typ, data = admin.search(None, "ALL")
            assert len(subjects) == len((data[0] or b"").split())
            last = fetch(
                client, str(int(admin.uid("SEARCH", "ALL")[1][0].split()[-1])), "(BODY.PEEK[])"
            )
            assert b"note number 9" in last[b"BODY[]"]
            whole = client.fetch(str(len(subjects)), "(RFC822.SIZE BODY.PEEK[])")[1][0]
            assert isinstance(whole, tuple)
            assert b"Subject: note 9" in whole[1]
        finally:
            client.logout()


def test_header_fetches_after_select_are_answered_from_the_cache(
    gateway: Gateway, direct: imaplib.IMAP4_SSL
) -> None:
    sock = raw_phs(gateway)
    try:
        sock.sendall(b"a2 EXAMINE INBOX\r\n")
        lines = read_until_tagged(sock, b"a2")
        exists = int(re.search(rb"\* (\d+) EXISTS", b"".join(lines)).group(1))  # type: ignore[union-attr]
        first = exists - 4
        sock.sendall(b"a3 FETCH %d:%d (RFC822.SIZE BODY.PEEK[HEADER])\r\n" % (first, exists))
        answer = b""
        while not answer.endswith(b"\r\n") or b"\r\na3 " not in b"\r\n" + answer:
            answer += sock.recv(65536)
        assert b"a3 OK Fetch completed (from the gateway's cache)." in answer
        for seq in range(first, exists + 1):
            m = re.search(
                rb"\* %d FETCH \(RFC822\.SIZE (\d+) BODY\[HEADER\] \{(\d+)\}\r\n" % seq, answer
            )
            assert m is not None, (seq, answer[:300])
            header = answer[m.end() : m.end() + int(m.group(2))]
            uid = direct.fetch(str(seq), "(UID)")[1][0]
            assert isinstance(uid, bytes)
            rendition = render_direct(direct, re.search(rb"UID (\d+)", uid).group(1).decode())  # type: ignore[union-attr]
            assert int(m.group(1)) == len(rendition)
            assert rendition.startswith(header) and header.endswith(b"\r\n\r\n")
    finally:
        sock.close()


def fetch_items(raw: bytes) -> dict[int, dict[bytes, Value]]:
    """Untagged FETCH responses parsed by the codec: sequence number -> item name -> value."""
    parser, assembler = ResponseParser(), Assembler(max_literal_total=1 << 24)
    parser.receive_data(raw)
    out: dict[int, dict[bytes, Value]] = {}
    while (event := parser.next_event()) is not NEED_DATA:
        item = assembler.push(event)  # type: ignore[arg-type]
        if isinstance(item, Response) and item.verb == "FETCH" and item.number is not None:
            (listed,) = item.args
            assert isinstance(listed, ValueList)
            pairs = listed.items
            names = [p.value.upper() if isinstance(p, Atom) else b"?" for p in pairs[::2]]
            out[item.number] = dict(zip(names, pairs[1::2], strict=True))
    return out


def test_envelope_and_structure_of_prefetched_messages_come_from_the_cache_as_stored(
    gateway: Gateway, dovecot: PrivateDovecot
) -> None:
    items = b"(UID ENVELOPE BODYSTRUCTURE INTERNALDATE RFC822.SIZE)"

    def ask(sock: ssl.SSLSocket | socket.socket, tag: bytes, line: bytes) -> bytes:
        sock.sendall(tag + b" " + line + b"\r\n")
        answer = b""
        while b"\r\n" + tag + b" " not in b"\r\n" + answer or not answer.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            assert chunk
            answer += chunk
        return answer

    sock = raw_phs(gateway)
    direct = socket.create_connection(("127.0.0.1", dovecot.imaps_port), timeout=30)
    direct = dovecot.client_context().wrap_socket(direct, server_hostname="127.0.0.1")
    try:
        exists = int(re.search(rb"\* (\d+) EXISTS", ask(sock, b"a2", b"EXAMINE INBOX")).group(1))  # type: ignore[union-attr]
        answer = ask(sock, b"a3", b"FETCH %d:%d %s" % (exists - 3, exists, items))
        assert b"a3 OK Fetch completed (from the gateway's cache)." in answer
        read_line(direct)
        assert b"d1 OK" in ask(direct, b"d1", b'LOGIN bob "' + PASSWORDS["bob"].encode() + b'"')
        ask(direct, b"d2", b"EXAMINE INBOX")
        stored = ask(direct, b"d3", b"FETCH %d:%d %s" % (exists - 3, exists, items))
        mine, theirs = fetch_items(answer), fetch_items(stored)
        assert sorted(mine) == sorted(theirs) == list(range(exists - 3, exists + 1))
        # Every immutable item is the mail server's, message by message.
        for seq in mine:
            for name in (b"UID", b"ENVELOPE", b"BODYSTRUCTURE", b"INTERNALDATE"):
                assert mine[seq][name] == theirs[seq][name], (seq, name)
    finally:
        sock.close()
        direct.close()
