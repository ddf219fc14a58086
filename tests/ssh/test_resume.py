"""Resumable IMAP through roamgate-connect: a line cut at random bytes loses and repeats nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import imaplib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import asyncssh
import pytest

from roamgate.demo.dovecot import PrivateDovecot, free_port
from roamgate.resume.frames import Challenge, FrameDecoder, Open, Opened, Refused, Resume, encode
from roamgate.resume.handshake import proof
from tests.gateway.conftest import Gateway, running_gateway
from tests.line import Line
from tests.ssh.conftest import ASKPASS

USERS = {"frank": "frank-pw-1", "gina": "gina pw 2", "hal": "hal-pw-3"}
GRACE = 12  # seconds: long enough for a reconnect on a busy machine, short for the expiry test
CUTS = 20

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def resume_gw(
    ssh_dovecot: PrivateDovecot, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("resume")
    for user, password in USERS.items():
        ssh_dovecot.add_user(user, password)
    with running_gateway(
        ssh_dovecot,
        tmp / "gw",
        users=USERS,
        replace={
            "forwards: {}": f"resume: {{grace_seconds: {GRACE}}}\n  forwards: {{}}",
            "keepalive_seconds: 30": "keepalive_seconds: 30\n  failure_delay_ms: 100"
            "\n  max_connections_per_source: 50",
            "  max_connections_per_source: 10\n": "",
        },
    ) as gw:
        (tmp / "askpass").write_text(ASKPASS)
        (tmp / "askpass").chmod(0o755)
        yield gw


def _fingerprint(gw: Gateway) -> str:
    key = asyncssh.read_public_key(str(gw.dir / "ssh_host_ed25519_key.pub"))
    return str(key.get_fingerprint("sha256"))


class Connector:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, imap_port: int) -> None:
        self.proc = proc
        self.log = log
        self.imap_port = imap_port

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.output().count(text) < count:
            if self.proc.poll() is not None:
                pytest.fail(f"roamgate-connect exited {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} x{count} from roamgate-connect: {self.output()}")
            time.sleep(0.05)

    def imap(self, user: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=120)
        assert client.login(user, USERS[user])[0] == "OK"
        return client


@contextmanager
def connector(gw: Gateway, port: int, tmp: Path, user: str) -> Iterator[Connector]:
    answers = tmp / "answers"
    answers.mkdir()
    (answers / "password").write_text(USERS[user] + "\n")
    (answers / "code").write_text(gw.code(user) + "\n")
    (answers / "prompts").write_text("")
    imap_port = free_port()
    log = tmp / "connect.log"
    argv = [
                sys.executable,
                "-m",
                "roamgate_connect",
                "--gateway",
                f"127.0.0.1:{port}",
                "--user",
                user,
                "--host-key",
                _fingerprint(gw),
                "--imap-port",
                str(imap_port),
                "--submission-port",
                str(free_port()),
                "--askpass",
                str(gw.dir.parent / "askpass"),
                "--device-key",
                str(tmp / "device.key"),
                "--verbose",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ROAMGATE_ASKPASS_DIR": str(answers)},
        )
    try:
        yield Connector(proc, log, imap_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _events(gw: Gateway, kind: str, after: int = 0) -> list[dict[str, object]]:
    out = []
    for e in gw.audit():
        if e["kind"] == kind and int(str(e["id"])) > after:
            detail = e.get("detail")
            out.append({**e, **(detail if isinstance(detail, dict) else {})})
    return out


def _last_id(gw: Gateway) -> int:
    records = gw.audit()
    return int(str(records[-1]["id"])) if records else 0


def _big_message(size: int, marker: str) -> bytes:
    body = base64.encodebytes(random.Random(marker).randbytes(size * 3 // 4))
    return (
        f"From: boss@example.com\r\nTo: frank@example.com\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + body.replace(b"\n", b"\r\n")


def _body(data: Sequence[object]) -> bytes:
    """The literal of an imaplib FETCH answer."""
    first = data[0]
    assert isinstance(first, tuple) and isinstance(first[1], bytes), data
    return first[1]


class Cutter:
    """Per connection, a random byte count (both ways) after which the line drops it."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.on = False

    def __call__(self) -> int | None:
        return self.rng.randint(30_000, 80_000) if self.on else None


def _cut_run(line: Line, cutter: Cutter) -> None:
    cutter.on = True
    line.cut()  # the connection made before cutting began has no budget: start the cycle


def test_a_large_fetch_survives_twenty_cuts(
    resume_gw: Gateway, ssh_dovecot: PrivateDovecot, tmp_path: Path
) -> None:
    user = "frank"
    message = _big_message(1_300_000, "fetch-through-cuts")
    ssh_dovecot.deliver(user, message)
    with ssh_dovecot.imap(user, USERS[user]) as direct:
        direct.select("INBOX", readonly=True)
        typ, data = direct.search(None, "HEADER", "Message-ID", "fetch-through-cuts")
        (num,) = data[0].split()
        typ, data = direct.fetch(num, "(BODY.PEEK[])")
        expected = _body(data)
    assert len(expected) > 1_300_000
    cutter = Cutter(9)
    before = _last_id(resume_gw)
    with (
        Line(resume_gw.ssh_port, cut_after=cutter) as line,
        connector(resume_gw, line.port, tmp_path, user) as c,
    ):
        c.wait_for("link up")
        client = c.imap(user)
        assert client.select("INBOX", readonly=True)[0] == "OK"
        _cut_run(line, cutter)
        typ, data = client.fetch(num, "(BODY.PEEK[])")
        cutter.on = False
        assert typ == "OK"
        assert _body(data) == expected
        assert line.cuts >= CUTS, line.cuts
        assert client.noop()[0] == "OK"
        client.logout()
    resumes = _events(resume_gw, "stream_resume", before)
    assert len([e for e in resumes if e["result"] == "ok"]) >= CUTS
    assert not [e for e in resumes if e["result"] != "ok"]
    assert sum(int(str(e["bytes_resent"])) for e in resumes) > 0
    assert len(_events(resume_gw, "stream_drop", before)) >= CUTS
    # One IMAP session upstream for the whole fetch: no new login, no new SELECT.
    opens = [e for e in _events(resume_gw, "session_open", before) if e["door"] == "ssh-imap"]
    assert len(opens) == 1
    assert USERS[user] not in resume_gw.logs() + c.output()


def test_an_append_with_a_literal_survives_twenty_cuts(
    resume_gw: Gateway, ssh_dovecot: PrivateDovecot, tmp_path: Path
) -> None:
    user = "frank"
    marker = f"append-through-cuts-{os.getpid()}"
    message = _big_message(1_300_000, marker)
    cutter = Cutter(17)
    with (
        Line(resume_gw.ssh_port, cut_after=cutter) as line,
        connector(resume_gw, line.port, tmp_path, user) as c,
    ):
        c.wait_for("link up")
        client = c.imap(user)
        _cut_run(line, cutter)
        typ, data = client.append("INBOX", None, None, message)
        cutter.on = False
        assert typ == "OK", data
        assert line.cuts >= CUTS, line.cuts
        client.logout()
    with ssh_dovecot.imap(user, USERS[user]) as direct:
        direct.select("INBOX", readonly=True)
        typ, hits = direct.search(None, "HEADER", "Message-ID", marker)
        found = _body([(b"", hits[0])]).split()
        assert len(found) == 1  # stored exactly once
        typ, fetched = direct.fetch(found[0].decode(), "(BODY.PEEK[])")
        assert _body(fetched) == message


# -- refusals, with asyncssh as the client and the frames written by hand
class _Kbd(asyncssh.SSHClient):
    def __init__(self, password: str, code: str) -> None:
        self.answers = {"Password: ": password, "One-time code: ": code}

    def kbdint_auth_requested(self) -> str | None:
        return ""

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str]:
        return [self.answers.get(p, "") for p, _echo in prompts]


async def _ssh(gw: Gateway, user: str) -> asyncssh.SSHClientConnection:
    conn, _ = await asyncssh.create_connection(
        lambda: _Kbd(USERS[user], gw.code(user)),
        "127.0.0.1",
        gw.ssh_port,
        username=user,
        known_hosts=None,
        agent_path=None,
        preferred_auth="keyboard-interactive",
        connect_timeout=15,
    )
    return conn


class _Carrier:
    def __init__(
        self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.frames: list[object] = []

    async def frame(self) -> object:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), 15)
            assert data, "the gateway closed the channel"
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    async def challenge(self) -> bytes:
        first = await self.frame()
        assert isinstance(first, Challenge)
        return first.nonce


async def _carrier(conn: asyncssh.SSHClientConnection) -> _Carrier:
    reader, writer = await conn.open_connection("imap-resume", 143)
    return _Carrier(reader, writer)


async def _refused(gw: Gateway, reason: str, after: int) -> None:
    for _ in range(100):
        found = [
            e for e in _events(gw, "stream_resume", after)
            if e["result"] == "fail" and e["reason"] == reason
        ]  # fmt: skip
        if found:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no stream_resume refusal {reason!r} audited")


async def test_resumes_with_a_wrong_proof_a_replayed_nonce_or_by_another_user_are_refused(
    resume_gw: Gateway,
) -> None:
    conn = await _ssh(resume_gw, "frank")
    try:
        first = await _carrier(conn)
        await first.challenge()
        first.writer.write(encode(Open()))
        opened = await first.frame()
        assert isinstance(opened, Opened)
        sid, secret = opened.stream_id, opened.secret
        first.writer.close()
        await asyncio.sleep(0.3)
        before = _last_id(resume_gw)
        # A wrong proof.
        c = await _carrier(conn)
        nonce = await c.challenge()
        c.writer.write(encode(Resume(sid, nonce, proof(b"x" * 32, sid, nonce), 0)))
        assert await c.frame() == Refused("refused")
        await _refused(resume_gw, "wrong_proof", before)
        # The right proof on one carrier, replayed on the next: its nonce is spent.
        c = await _carrier(conn)
        nonce = await c.challenge()
        good = encode(Resume(sid, nonce, proof(secret, sid, nonce), 0))
        c.writer.write(good)
        resumed = await c.frame()
        assert type(resumed).__name__ == "Resumed"
        c.writer.close()
        await asyncio.sleep(0.3)
        c = await _carrier(conn)
        await c.challenge()
        c.writer.write(good)
        assert await c.frame() == Refused("refused")
        await _refused(resume_gw, "replayed_nonce", before)
        # Another user, even with the secret.
        other = await _ssh(resume_gw, "gina")
        try:
            c = await _carrier(other)
            nonce = await c.challenge()
            c.writer.write(encode(Resume(sid, nonce, proof(secret, sid, nonce), 0)))
            assert await c.frame() == Refused("refused")
            await _refused(resume_gw, "other_user", before)
        finally:
            other.close()
        # The owner still gets the stream: the refusals did not end it.
        c = await _carrier(conn)
        nonce = await c.challenge()
        c.writer.write(encode(Resume(sid, nonce, proof(secret, sid, nonce), 0)))
        assert type(await c.frame()).__name__ == "Resumed"
        data = await c.frame()
        assert b"* OK" in getattr(data, "payload", b"")  # the greeting, sent again
    finally:
        conn.close()
    log = resume_gw.logs() + "\n".join(map(str, resume_gw.audit()))
    assert secret.hex() not in log


def test_a_resume_outside_the_travel_window_asks_for_a_new_code(
    resume_gw: Gateway, tmp_path: Path
) -> None:
    user = "hal"
    before = _last_id(resume_gw)
    with (
        Line(resume_gw.ssh_port) as line,
        connector(resume_gw, line.port, tmp_path, user) as c,
    ):
        c.wait_for("link up")
        client = c.imap(user)
        assert client.select("INBOX")[0] == "OK"
        listed = resume_gw.cli("session", "list", "--user", user, "--json")
        windows = [w["id"] for w in json.loads(listed.stdout)["windows"]]
        assert windows
        for window in windows:  # the travel window ends: the next login needs a code
            assert resume_gw.cli("session", "revoke", window).returncode == 0
        (tmp_path / "answers" / "code").write_text(resume_gw.code(user) + "\n")
        line.cut()
        c.wait_for("imap stream resumed")
        assert client.noop()[0] == "OK"  # the same session: no new login, no new SELECT
        client.logout()
    prompts = (tmp_path / "answers" / "prompts").read_text().splitlines()
    assert prompts == ["Password: ", "One-time code: ", "One-time code: "]
    resumed = [e for e in _events(resume_gw, "stream_resume", before) if e["result"] == "ok"]
    assert len(resumed) == 1
    logins = [
        e
        for e in _events(resume_gw, "auth", before)
        if e.get("user") == user and e["door"] == "ssh"
    ]
    assert [e["result"] for e in logins].count("ok") == 2  # the first link, the one after the cut
    assert all("window" not in str(e["factor"]) for e in logins if e["result"] == "ok")


def test_a_stream_gone_past_its_grace_is_logged_out_upstream_and_refused(
    resume_gw: Gateway, tmp_path: Path
) -> None:
    user = "gina"
    before = _last_id(resume_gw)
    with (
        Line(resume_gw.ssh_port) as line,
        connector(resume_gw, line.port, tmp_path, user) as c,
    ):
        c.wait_for("link up")
        client = c.imap(user)
        assert client.select("INBOX")[0] == "OK"
        line.down()
        deadline = time.monotonic() + GRACE + 30
        while not _events(resume_gw, "stream_expire", before):
            assert time.monotonic() < deadline, "no stream_expire"
            time.sleep(0.5)
        while not [
            e for e in _events(resume_gw, "session_close", before) if e["door"] == "ssh-imap"
        ]:
            assert time.monotonic() < deadline, "the upstream session was not closed"
            time.sleep(0.5)
        closes = [e for e in _events(resume_gw, "session_close", before) if e["door"] == "ssh-imap"]
        assert closes[0]["reason"] == "logout"  # logged out upstream, not dropped
        line.up()
        c.wait_for("no longer has this stream")
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            client.noop()
        with contextlib.suppress(OSError):
            client.shutdown()
    refused = [e for e in _events(resume_gw, "stream_resume", before) if e["result"] == "fail"]
    assert [e["reason"] for e in refused] == ["expired"]
    assert re.search(r"stream_drop", str(_events(resume_gw, "stream_drop", before)))
