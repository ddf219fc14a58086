"""Callback verification through a real `roamgate serve`: OpenSSH with askpass at the SSH door,
raw TLS and imaplib at the IMAP door, a roamgate-connect process answering the dial-back, and
the provider stand-in receiving the gateway's signed messages."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import imaplib
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from roamgate.demo.dovecot import PrivateDovecot, free_port
from tests.callback.provider import ProviderStub, post_status
from tests.conftest import require_program
from tests.gateway.conftest import PASSWORDS, Gateway, read_line, running_gateway
from tests.ssh.conftest import Mailbox, SshGateway

pytestmark = pytest.mark.peer

USERS = {name: PASSWORDS[name] for name in ("bob", "carol", "dave", "erin")}
TIMEOUT = 15  # callback.timeout_seconds in this gateway

ASKPASS = """#!/bin/sh
# OpenSSH's askpass: the password, the one-time code, then the callback code the provider
# stand-in writes to ../callback_code when the gateway's message reaches it.
printf '%s\\n' "$1" >> "$ROAMGATE_ASKPASS_DIR/prompts"
case "$1" in
  *allback\\ code*)
    f="$ROAMGATE_ASKPASS_DIR/../callback_code"; i=0
    while [ ! -s "$f" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    cat "$f" ;;
  *press\\ Enter*) echo "" ;;
  *assword*) cat "$ROAMGATE_ASKPASS_DIR/password" ;;
  *code*) cat "$ROAMGATE_ASKPASS_DIR/code" ;;
  *) echo "askpass: unexpected prompt" >&2; exit 1 ;;
esac
"""


class CbGateway:
    def __init__(self, gw: Gateway, provider: ProviderStub, http_port: int, tmp: Path) -> None:
        self.gw = gw
        self.provider = provider
        self.http_port = http_port
        self.tmp = tmp
        pub = (gw.dir / "ssh_host_ed25519_key.pub").read_text().split()
        known_hosts = tmp / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{gw.ssh_port} {pub[0]} {pub[1]}\n")
        (tmp / "askpass").write_text(ASKPASS)
        (tmp / "askpass").chmod(0o755)
        self.ssh = SshGateway(gw, Mailbox(), 0, known_hosts, tmp)

    def cli_ok(self, *args: str) -> str:
        r = self.gw.cli(*args)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def audit(self, kind: str, user: str) -> list[dict[str, object]]:
        return [e for e in self.gw.audit() if e["kind"] == kind and e.get("user") == user]


@pytest.fixture(scope="module")
def cb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CbGateway]:
    require_program("oathtool")
    require_program("ssh")
    tmp = tmp_path_factory.mktemp("callback-gw")
    provider = ProviderStub()
    provider.start()
    from tests.callback.provider import SECRET

    secret_file = tmp / "provider.secret"
    secret_file.write_bytes(SECRET)
    secret_file.chmod(0o600)
    http_port = free_port()
    section = (
        "callback:\n"
        f"  timeout_seconds: {TIMEOUT}\n"
        f"  provider_url: {provider.url}\n"
        f"  provider_secret_file: {secret_file}\n"
        f"  public_url: http://127.0.0.1:{http_port}\n"
        "  dialback_timeout_seconds: 5\n"
        f"  http: {{host: 127.0.0.1, port: {http_port}}}\n\n"
        "audit:\n"
    )
    try:
        with (
            PrivateDovecot(tmp / "dovecot") as dovecot,
        ):
            for user, password in USERS.items():
                dovecot.add_user(user, password)
            with running_gateway(
                dovecot,
                tmp / "gw",
                users=USERS,
                replace={
                    "\naudit:\n": "\n" + section,
                    "keepalive_seconds: 30": "keepalive_seconds: 30\n  failure_delay_ms: 100",
                },
            ) as gw:
                yield CbGateway(gw, provider, http_port, tmp)
    finally:
        provider.stop()


def _prompts(answers: Path) -> list[str]:
    # OpenSSH puts "(user@host) " before the server's prompt.
    return [p.split(") ", 1)[-1] for p in (answers / "prompts").read_text().splitlines()]


def _no_secret_leaked(cb: CbGateway, *secrets: str) -> None:
    trail = (cb.gw.dir / "audit.jsonl").read_text()
    log = cb.gw.logs()
    for secret in secrets:
        assert secret not in trail and secret not in log


def test_ssh_login_waits_for_the_code_sent_to_the_registered_phone(cb: CbGateway) -> None:
    assert "callback policy always" in cb.cli_ok(
        "user", "set", "bob", "--callback-policy", "always"
    )
    cb.cli_ok("callback", "register", "bob", "--channel", "webhook", "--address", "+15550100")
    listed = cb.cli_ok("callback", "list", "bob")
    assert "webhook" in listed and "+15550100" in listed and "always" in listed
    code_file = cb.tmp / "callback_code"
    code_file.unlink(missing_ok=True)
    cb.provider.code_file = code_file
    n = len(cb.provider.messages)
    port = free_port()
    with cb.ssh.openssh_tunnel(
        "bob", PASSWORDS["bob"], cb.gw.code("bob"), f"127.0.0.1:{port}:imap:143"
    ) as (proc, answers):
        assert proc.poll() is None, (answers / "ssh.log").read_text()
        client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        client.login("bob", PASSWORDS["bob"])
        assert client.select("INBOX")[0] == "OK"
        client.logout()
    assert _prompts(answers) == ["Password: ", "One-time code: ", "Callback code: "]
    msg = cb.provider.wait_message("code", n)
    assert msg.signature_ok and msg.body["to"] == "+15550100"  # the registered number
    [result] = cb.audit("callback_result", "bob")
    assert (result["result"], result["door"]) == ("ok", "ssh")
    assert result["detail"]["outcome"] == "confirmed"  # type: ignore[index]
    _no_secret_leaked(cb, str(msg.body["code"]))


def test_ssh_wrong_callback_code_is_refused(cb: CbGateway) -> None:
    cb.cli_ok("user", "set", "bob", "--callback-policy", "always")
    cb.provider.code_file = None
    (cb.tmp / "callback_code").write_text("000000\n")  # never the code: it has 6 random digits
    before = len(cb.audit("callback_result", "bob"))
    port = free_port()
    with cb.ssh.openssh_tunnel(
        "bob", PASSWORDS["bob"], cb.gw.code("bob"), f"127.0.0.1:{port}:imap:143"
    ) as (proc, answers):
        assert proc.wait(timeout=60) != 0
    # The password alone before (the first test's login opened a travel window), then 3 tries.
    assert _prompts(answers) == ["Password: "] + ["Callback code: "] * 3
    results = cb.audit("callback_result", "bob")[before:]
    assert [(r["result"], r["reason"]) for r in results] == [("fail", "wrong_secret")]
    code = next(m for m in reversed(cb.provider.messages) if m.body["kind"] == "code")
    assert str(code.body["code"]) != "000000"


def _imap_login_raw(cb: CbGateway, user: str) -> socket.socket:
    sock = cb.gw.raw()
    sock.settimeout(TIMEOUT + 30)
    secret = PASSWORDS[user] + cb.gw.code(user)
    sock.sendall(f'a1 LOGIN {user} "{secret}"\r\n'.encode())
    return sock


def _read_to_tag(sock: socket.socket) -> list[bytes]:
    lines = []
    while True:
        line = read_line(sock)
        lines.append(line)
        if not line or line.startswith(b"a1 "):
            return lines


def test_imap_login_held_with_keepalives_until_the_link_is_approved(cb: CbGateway) -> None:
    cb.cli_ok("user", "set", "carol", "--callback-policy", "always")
    cb.cli_ok("callback", "register", "carol", "--channel", "approve", "--address", "+15550123")
    n = len(cb.provider.messages)
    sock = _imap_login_raw(cb, "carol")
    try:
        msg = cb.provider.wait_message("approve", n)
        assert msg.body["to"] == "+15550123"
        first = read_line(sock)
        assert first.startswith(b"* OK ") and b"approval link" in first
        # A second login for carol while this one is pending is refused at once.
        other = cb.gw.imaps()
        with pytest.raises(imaplib.IMAP4.error):
            other.login("carol", PASSWORDS["carol"] + cb.gw.code("carol"))
        other.shutdown()
        time.sleep(6)  # at least one keep-alive
        url = str(msg.body["url"])

        async def approve() -> int:
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, data={"decision": "approve"}) as resp,
            ):
                return resp.status

        assert asyncio.run(approve()) == 200
        lines = _read_to_tag(sock)
        assert lines[-1].startswith(b"a1 OK"), lines
        assert any(line.startswith(b"* OK ") for line in lines[:-1])  # the keep-alive
    finally:
        sock.close()
    starts = [(e["result"], e["reason"]) for e in cb.audit("callback_start", "carol")]
    assert starts == [("ok", None), ("fail", "pending")]
    _no_secret_leaked(cb, url.rsplit("/", 1)[1])


def test_imap_login_times_out_then_no(cb: CbGateway) -> None:
    cb.cli_ok("user", "set", "carol", "--callback-policy", "always")
    began = time.monotonic()
    sock = _imap_login_raw(cb, "carol")
    try:
        lines = _read_to_tag(sock)
    finally:
        sock.close()
    took = time.monotonic() - began
    assert lines[-1].startswith(b"a1 NO"), lines
    assert TIMEOUT - 1 < took < TIMEOUT + 30
    assert sum(1 for line in lines if line.startswith(b"* OK ")) >= 2
    last = cb.audit("callback_result", "carol")[-1]
    assert (last["result"], last["reason"]) == ("fail", "timeout")


def _connector(key_file: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roamgate_connect",
                "--callback-only",
                "--callback-listen",
                f"127.0.0.1:{port}",
                "--callback-key-file",
                str(key_file),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while b"answering dial-backs" not in log.read_bytes():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


def test_dialback_to_a_listening_roamgate_connect(cb: CbGateway) -> None:
    port = free_port()
    key_file = cb.tmp / "dave.key"
    cb.cli_ok("user", "set", "dave", "--callback-policy", "always")
    out = cb.cli_ok(
        "callback", "register", "dave", "--channel", "dialback",
        "--address", f"127.0.0.1:{port}", "--key-out", str(key_file),
    )  # fmt: skip
    assert str(key_file) in out and (key_file.stat().st_mode & 0o777) == 0o600
    proc = _connector(key_file, port, cb.tmp / "connect.log")
    try:
        client = cb.gw.imaps()
        client.login("dave", PASSWORDS["dave"] + cb.gw.code("dave"))
        client.logout()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert b"answered a dial-back" in (cb.tmp / "connect.log").read_bytes()
    # A device with the wrong key is refused.
    wrong = cb.tmp / "wrong.key"
    wrong.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    wrong.chmod(0o600)
    proc = _connector(wrong, port, cb.tmp / "connect-wrong.log")
    try:
        client = cb.gw.imaps()
        with pytest.raises(imaplib.IMAP4.error):
            client.login("dave", PASSWORDS["dave"] + cb.gw.code("dave"))
        client.shutdown()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    results = [(e["result"], e["reason"]) for e in cb.audit("callback_result", "dave")]
    assert results == [("ok", None), ("fail", "wrong_secret")]


def test_forged_and_replayed_status_callbacks_are_refused(cb: CbGateway) -> None:
    url = f"http://127.0.0.1:{cb.http_port}/callback/status"
    mid = "cb_" + "0" * 16
    status, _b, sent = post_status(url, mid, "delivered")
    assert status == 404  # genuine, but no such callback is pending
    body = f'{{"id": "{mid}", "status": "delivered"}}'.encode()
    assert post_status(url, mid, "x", body=body, headers=sent)[0] == 403  # replayed
    assert post_status(url, mid, "failed", secret=b"guessed")[0] == 403
    assert post_status(url, mid, "failed", at=time.time() - 3600)[0] == 403
    reasons = [e["reason"] for e in cb.gw.audit() if e["kind"] == "callback_status"][-4:]
    assert reasons == ["no_pending_callback", "replayed", "bad_signature", "stale"]


def test_a_user_with_policy_never_is_not_called(cb: CbGateway) -> None:
    cb.cli_ok("callback", "register", "erin", "--channel", "approve", "--address", "+15550999")
    n = len(cb.provider.messages)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        client = pool.submit(cb.gw.login, "erin").result(timeout=30)
    client.logout()
    assert len(cb.provider.messages) == n
    assert cb.audit("callback_start", "erin") == []


def test_the_web_door_serves_the_callback_routes(cb: CbGateway) -> None:
    from roamgate.config import load_config

    web = load_config(cb.gw.config).listeners.web
    assert web is not None
    ctx = ssl.create_default_context(cafile=str(cb.gw.ca_file))
    body = b'{"id": "cb_0000000000000000", "status": "failed"}'
    req = urllib.request.Request(
        f"https://127.0.0.1:{web.port}/callback/status",
        data=body,
        headers={"X-Roamgate-Timestamp": str(int(time.time())), "X-Roamgate-Signature": "v1=00"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=15, context=ctx)  # noqa: S310
    assert refused.value.code == 403  # the signature check, not the web app's CSRF check
    refused.value.close()
    assert cb.gw.audit()[-1]["reason"] == "bad_signature"
    url = f"https://127.0.0.1:{web.port}/callback/approve/{'A' * 43}"
    with urllib.request.urlopen(url, timeout=15, context=ctx) as page:
        assert page.status == 200 and b"Approve" in page.read()
    deadline = time.monotonic() + 10
    while "/callback/approve/[token]" not in cb.gw.logs():  # the access log line, token cut out
        assert time.monotonic() < deadline, cb.gw.logs()[-2000:]
        time.sleep(0.1)
    assert "A" * 43 not in cb.gw.logs()


def test_changing_the_number_on_the_web_needs_password_and_code_and_tells_the_old_one(
    cb: CbGateway,
) -> None:
    import re

    from roamgate.config import load_config

    web = load_config(cb.gw.config).listeners.web
    assert web is not None
    old, new = "+15550111", "+15550222"
    cb.cli_ok("callback", "register", "dave", "--channel", "webhook", "--address", old)
    ctx = ssl.create_default_context(cafile=str(cb.gw.ca_file))
    base = f"https://127.0.0.1:{web.port}/account/callback"
    good_code = cb.gw.code("dave")

    async def attempt(code: str) -> tuple[int, str]:
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(base, ssl=ctx) as form:
                token = re.search(r'name="csrf" value="([^"]+)"', await form.text())
            assert token is not None
            fields = {
                "csrf": token.group(1),
                "user": "dave",
                "password": USERS["dave"],
                "code": code,
                "channel": "webhook",
                "address": new,
            }
            async with http.post(base, data=fields, ssl=ctx) as answer:
                return answer.status, await answer.text()

    status, _page = asyncio.run(attempt("000000"))
    assert status == 403
    assert old in cb.cli_ok("callback", "list", "dave")
    n = len(cb.provider.messages)
    status, page = asyncio.run(attempt(good_code))
    assert status == 200 and "Changed" in page, page
    listed = cb.cli_ok("callback", "list", "dave")
    assert new in listed and old not in listed
    notice = cb.provider.wait_message("notice", n)
    assert notice.body["to"] == old and notice.signature_ok
    changes = cb.audit("callback_change", "dave")
    assert [c["result"] for c in changes] == ["fail", "ok"]
    _no_secret_leaked(cb, USERS["dave"], good_code)
