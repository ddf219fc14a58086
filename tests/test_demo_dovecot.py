"""The demo's corporate mail server: a private Dovecot with the sample mailbox, seen by imaplib."""

from __future__ import annotations

import contextlib
import email
import email.policy
import imaplib
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from email.header import decode_header, make_header
from pathlib import Path
from typing import TypeVar

import pytest

from roamgate.demo.dovecot import UNTRUSTED_SOURCE, DovecotError, PrivateDovecot
from roamgate.demo.mailbox import JAPANESE_SUBJECTS, sample_mailbox, smime_signer_certificate_pem

USER, PASSWORD = "erin", "correct horse battery staple"
MASTER, MASTER_PASSWORD = "archiver", "master key 42"
LARGE = 3_000_000
IMAP = TypeVar("IMAP", bound=imaplib.IMAP4)


@pytest.fixture(scope="module")
def mailbox() -> dict[str, list[bytes]]:
    return sample_mailbox(large_attachment_bytes=LARGE)


@pytest.fixture(scope="module")
def dovecot(
    tmp_path_factory: pytest.TempPathFactory, mailbox: dict[str, list[bytes]]
) -> Iterator[PrivateDovecot]:
    server = PrivateDovecot(tmp_path_factory.mktemp("dovecot"))
    server.add_user(USER, PASSWORD)
    server.add_master_user(MASTER, MASTER_PASSWORD)
    with server:
        assert server.populate(USER, PASSWORD, mailbox) == sum(map(len, mailbox.values()))
        yield server


class _FromUntrusted(imaplib.IMAP4):
    """A plain IMAP client on 127.0.0.2: to Dovecot neither trusted nor "local"."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        address = (self.host, self.port)
        return socket.create_connection(address, timeout, source_address=(UNTRUSTED_SOURCE, 0))


def _context(server: PrivateDovecot) -> ssl.SSLContext:
    # Built here from the CA file, as any client would, rather than with server.client_context().
    context = ssl.create_default_context(cafile=str(server.ca_file))
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    return context


@contextlib.contextmanager
def _closing(session: IMAP) -> Iterator[IMAP]:
    try:
        yield session
    finally:
        try:
            session.logout()
        except (imaplib.IMAP4.error, OSError):
            session.shutdown()


def _imaps(server: PrivateDovecot) -> contextlib.AbstractContextManager[imaplib.IMAP4_SSL]:
    port, context = server.imaps_port, _context(server)
    return _closing(imaplib.IMAP4_SSL(server.host, port, ssl_context=context, timeout=10))


def _subject(header_block: bytes) -> str:
    return str(make_header(decode_header(email.message_from_bytes(header_block)["Subject"])))


def _line(item: object) -> bytes:
    """One untagged response line from imaplib's loosely typed results."""
    assert isinstance(item, bytes), item
    return item


def _fetched(data: Sequence[object]) -> list[bytes]:
    """The literal of each FETCH response, in order."""
    return [item[1] for item in data if isinstance(item, tuple)]


def _until_tagged(imap: imaplib.IMAP4, tag: bytes) -> bytes:
    """Read raw lines until the tagged completion of a command we sent ourselves."""
    while not (line := imap.readline()).startswith(tag + b" "):
        assert line, "connection closed"
    return line


# -- the sample mailbox (pure) ----------------------------------------------------------------


def test_sample_mailbox_is_identical_on_every_call(mailbox: dict[str, list[bytes]]) -> None:
    assert sample_mailbox(large_attachment_bytes=LARGE) == mailbox  # S/MIME included


def test_sample_mailbox_messages_are_well_formed(mailbox: dict[str, list[bytes]]) -> None:
    assert set(mailbox) == {"INBOX", "Sent", "Projects"}
    assert 30 <= len(mailbox["INBOX"]) <= 40
    types: list[str] = []
    for messages in mailbox.values():
        for raw in messages:
            assert b"\n" not in raw.replace(b"\r\n", b""), "CRLF line endings only"
            message = email.message_from_bytes(raw, policy=email.policy.default)
            for header in ("Message-ID", "Date", "From", "To", "Subject"):
                assert message[header], header
            types += [part.get_content_type() for part in message.walk()]
    assert {"multipart/alternative", "text/html", "text/csv", "image/png"} <= set(types)
    assert types.count("multipart/signed") == types.count("application/pkcs7-signature") == 1
    assert sum(len(raw) > LARGE for raw in mailbox["INBOX"]) == 1
    ids = [email.message_from_bytes(raw)["Message-ID"] for raw in mailbox["INBOX"]]
    assert len(set(ids)) == len(ids)


def test_japanese_messages_are_iso_2022_jp(mailbox: dict[str, list[bytes]]) -> None:
    japanese = [raw for raw in mailbox["INBOX"] if b"charset=ISO-2022-JP" in raw]
    assert len(japanese) == len(JAPANESE_SUBJECTS) >= 6
    for raw in japanese:
        assert b"Subject: =?iso-2022-jp?b?" in raw
        assert all(byte < 0x80 for byte in raw), "7bit on the wire"
        message = email.message_from_bytes(raw)
        assert message["Content-Transfer-Encoding"] == "7bit"
        body = message.get_payload(decode=True)
        assert isinstance(body, bytes)
        assert "。" in body.decode("iso2022_jp")
    assert {_subject(raw.split(b"\r\n\r\n")[0]) for raw in japanese} == set(JAPANESE_SUBJECTS)


def test_large_attachment_has_the_requested_size() -> None:
    small = sample_mailbox(large_attachment_bytes=10_000)["INBOX"]
    message = email.message_from_bytes(max(small, key=len), policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    (pdf,) = (part for part in message.iter_attachments() if part.get_filename(""))
    payload = pdf.get_content()
    assert pdf["Content-Transfer-Encoding"] == "base64"
    assert len(payload) == 10_000 and payload.startswith(b"%PDF-")


@pytest.mark.peer
def test_smime_signature_verifies_with_openssl(
    tmp_path: Path, mailbox: dict[str, list[bytes]]
) -> None:
    (signed,) = (raw for raw in mailbox["INBOX"] if b"multipart/signed" in raw)
    assert b'protocol="application/pkcs7-signature"' in signed
    (tmp_path / "signed.eml").write_bytes(signed)
    (tmp_path / "signer.pem").write_bytes(smime_signer_certificate_pem())
    argv = ["openssl", "cms", "-verify", "-in", "signed.eml", "-CAfile", "signer.pem"]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, check=False, timeout=30)
    assert result.returncode == 0, result.stderr
    assert b"certificates will be renewed" in result.stdout
    tampered = signed.replace(b"18 March", b"19 March")
    (tmp_path / "signed.eml").write_bytes(tampered)
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, check=False, timeout=30)
    assert result.returncode != 0


# -- the private Dovecot (real peer) ----------------------------------------------------------


@pytest.mark.peer
def test_imaps_lists_folders_and_holds_the_sample(
    dovecot: PrivateDovecot, mailbox: dict[str, list[bytes]]
) -> None:
    with _imaps(dovecot) as imap:
        imap.login(USER, PASSWORD)
        typ, listing = imap.list()
        assert typ == "OK"
        names = {_line(line).rsplit(b" ", 1)[-1].strip(b'"').decode() for line in listing}
        assert {"INBOX", "Sent", "Projects", "Drafts", "Trash"} <= names
        for folder, messages in mailbox.items():
            typ, count = imap.select(folder, readonly=True)
            assert (typ, count) == ("OK", [str(len(messages)).encode()])
        imap.select("INBOX", readonly=True)
        typ, data = imap.fetch("1:*", "(BODY.PEEK[])")
        assert _fetched(data) == mailbox["INBOX"], "stored byte for byte, in order"


@pytest.mark.peer
def test_starttls_then_login(dovecot: PrivateDovecot) -> None:
    with _closing(imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)) as imap:
        assert "STARTTLS" in imap.capabilities
        imap.starttls(ssl_context=_context(dovecot))
        imap.login(USER, PASSWORD)
        assert imap.select("INBOX", readonly=True)[0] == "OK"


@pytest.mark.peer
def test_plaintext_login_is_refused_before_starttls(dovecot: PrivateDovecot) -> None:
    with _closing(_FromUntrusted(dovecot.host, dovecot.imap_port, timeout=10)) as imap:
        assert "LOGINDISABLED" in imap.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            imap.login(USER, PASSWORD)
        imap.starttls(ssl_context=_context(dovecot))  # the same password is fine over TLS
        assert imap.login(USER, PASSWORD)[0] == "OK"


@pytest.mark.peer
def test_loopback_clients_count_as_secured(dovecot: PrivateDovecot) -> None:
    """Dovecot's rule, kept visible: 127.0.0.1 is trusted, so plaintext LOGIN works from it."""
    with _closing(imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)) as imap:
        assert "LOGINDISABLED" not in imap.capabilities
        assert imap.login(USER, PASSWORD)[0] == "OK"


@pytest.mark.peer
def test_japanese_subjects_survive_the_server(dovecot: PrivateDovecot) -> None:
    with _imaps(dovecot) as imap:
        imap.login(USER, PASSWORD)
        imap.select("INBOX", readonly=True)
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        subjects = {_subject(block) for block in _fetched(data)}
        assert "来週の定例会議の日程変更について" in subjects
        assert set(JAPANESE_SUBJECTS) <= subjects


@pytest.mark.peer
def test_large_attachment_size_on_the_server(dovecot: PrivateDovecot) -> None:
    with _imaps(dovecot) as imap:
        imap.login(USER, PASSWORD)
        imap.select("INBOX", readonly=True)
        typ, found = imap.search(None, "LARGER", str(LARGE))
        assert typ == "OK" and len(found[0].split()) == 1
        typ, data = imap.fetch(found[0].decode(), "(RFC822.SIZE)")
        size = re.search(rb"RFC822\.SIZE (\d+)", _line(data[0]))
        assert size is not None and int(size.group(1)) > LARGE


@pytest.mark.peer
def test_compress_deflate_is_offered_after_login(dovecot: PrivateDovecot) -> None:
    if not dovecot.compress:
        pytest.skip("this Dovecot has no imap_zlib plugin")
    with _imaps(dovecot) as imap:
        imap.login(USER, PASSWORD)
        typ, data = imap.capability()
        assert typ == "OK" and b"COMPRESS=DEFLATE" in _line(data[0]).split()


@pytest.mark.peer
def test_master_user_opens_the_users_mailbox(
    dovecot: PrivateDovecot, mailbox: dict[str, list[bytes]]
) -> None:
    with _imaps(dovecot) as imap:
        imap.login(f"{USER}*{MASTER}", MASTER_PASSWORD)
        assert imap.select("INBOX", readonly=True)[1] == [str(len(mailbox["INBOX"])).encode()]
    for user, password in (
        (f"{USER}*{MASTER}", PASSWORD),
        (f"nobody-here*{MASTER}", MASTER_PASSWORD),
    ):
        with _imaps(dovecot) as imap, pytest.raises(imaplib.IMAP4.error):
            imap.login(user, password)


@pytest.mark.peer
def test_x_originating_ip_is_honoured_only_from_the_trusted_network(
    dovecot: PrivateDovecot,
) -> None:
    seen = len(dovecot.log_file.read_text())
    for client, claimed in ((imaplib.IMAP4, "203.0.113.7"), (_FromUntrusted, "203.0.113.8")):
        with _closing(client(dovecot.host, dovecot.imap_port, timeout=10)) as imap:
            imap.starttls(ssl_context=_context(dovecot))
            # Raw, because imaplib.xatom would register ID in its global command table.
            imap.send(f'T1 ID ("x-originating-ip" "{claimed}")\r\n'.encode())
            assert _until_tagged(imap, b"T1").startswith(b"T1 OK")
            imap.login(USER, PASSWORD)
    deadline = time.monotonic() + 5  # the log process writes asynchronously
    while (log := dovecot.log_file.read_text()[seen:]).count("Login: ") < 2:
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    assert "rip=203.0.113.7" in log and "rip=127.0.0.2" in log
    assert "203.0.113.8" not in log


@pytest.mark.peer
def test_deliver_wakes_an_idle_session(dovecot: PrivateDovecot) -> None:
    dovecot.add_user("kenji", "kenji-pass")  # a fresh mailbox, so other tests' counts hold
    with _imaps(dovecot) as imap:
        imap.login("kenji", "kenji-pass")
        assert imap.select("INBOX")[1] == [b"0"]
        imap.send(b"I1 IDLE\r\n")
        assert imap.readline().startswith(b"+ ")
        started = time.monotonic()
        dovecot.deliver("kenji", b"Subject: arrived\r\nFrom: a@b.example\r\n\r\nhello\r\n")
        while (line := imap.readline()) != b"* 1 EXISTS\r\n":
            assert line.startswith(b"* "), line  # also fails on EOF (b"")
        assert time.monotonic() - started < 5
        imap.send(b"DONE\r\n")
        assert _until_tagged(imap, b"I1").startswith(b"I1 OK")
        _, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert _fetched(data) == [b"Subject: arrived\r\n\r\n"]


@pytest.mark.peer
def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    server = PrivateDovecot(tmp_path)
    server.add_user(USER, PASSWORD)
    with server, _imaps(server) as imap:  # a logged-in client keeps an imap process busy
        imap.login(USER, PASSWORD)
        imap.select("INBOX")
        server.stop()
    assert not server.running
    assert _processes_mentioning(server.instance_name) == []
    assert _processes_mentioning(str(server.config_file)) == []


def _processes_mentioning(text: str) -> list[bytes]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # processes come and go while we look
            if text.encode() in (command := cmdline.read_bytes()):
                found.append(command)
    return found


@pytest.mark.peer
def test_start_fails_clearly_when_a_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = PrivateDovecot(tmp_path, imaps_port=taken.getsockname()[1])
        with pytest.raises(DovecotError, match="already in use"):
            server.start()
    assert not server.running
