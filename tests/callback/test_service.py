"""The callback service in one process: a real store, the HTTP routes on a real socket, the
provider stand-in, roamgate-connect's dial-back answerer; clients are scripted WaitingClients."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from roamgate.audit import Auditor
from roamgate.auth import otp
from roamgate.auth.passwords import hash_password
from roamgate.callback.http_listener import CallbackHttp, open_callback_http
from roamgate.callback.service import CallbackService, RegistrationError, source_keys
from roamgate.callback.waiting import LOGIN_DEVICE, WAITING_CLIENT
from roamgate.config import CallbackSettings, Listener, Lockout, OtpSettings
from roamgate.demo.dovecot import free_port
from roamgate.login.second_factor import Enrollment, SecondFactor
from roamgate.login.throttle import Throttle
from roamgate.login.verifiers import LocalVerifier
from roamgate.secretbox import SecretBox
from roamgate.store import Store, open_store
from roamgate.store.base import UserRecord
from roamgate.yamlbind import Secret
from roamgate_connect.callback_answer import CallbackAnswerer
from tests.callback.provider import SECRET, ProviderStub, post_status

PASSWORD = "Correct-Horse-7"
IP = "198.51.100.20"


@dataclass
class ScriptedClient:
    """A WaitingClient: SSH-like (answers from a queue) or IMAP-like (keep-alives only)."""

    can_ask: bool
    answers: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    asked: list[tuple[str, str]] = field(default_factory=list)
    kept_alive: list[str] = field(default_factory=list)

    async def ask(self, instruction: str, prompt: str) -> str | None:
        self.asked.append((instruction, prompt))
        return await self.answers.get()

    async def keepalive(self, text: str) -> None:
        self.kept_alive.append(text)


@dataclass
class Rig:
    store: Store
    service: CallbackService
    provider: ProviderStub
    http: CallbackHttp
    http_port: int
    user: UserRecord
    token: Enrollment
    audit_file: Path

    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/callback/status"

    def code(self) -> str:
        p = otp.TotpParams(self.token.secret)
        return otp.totp_code(p, otp.time_step(time.time(), 30))

    async def hold(
        self, client: ScriptedClient, source: str = IP, device: str | None = None
    ) -> str | None:
        LOGIN_DEVICE.set(device)
        WAITING_CLIENT.set(client)
        return await self.service.hold(self.user, source, "imaps")


@pytest.fixture
def provider() -> Iterator[ProviderStub]:
    stub = ProviderStub()
    stub.start()
    yield stub
    stub.stop()


async def make_rig(tmp_path: Path, provider: ProviderStub, wait_seconds: int = 20) -> Rig:
    store = await open_store(str(tmp_path / "gw.db"), create=True)
    box = SecretBox(os.urandom(32))
    audit_file = tmp_path / "audit.jsonl"
    auditor = Auditor(store, audit_file)
    second = SecondFactor(store, box, OtpSettings(), time.time)
    throttle = Throttle(store, auditor, Lockout(), time.time)
    http_port = free_port()
    settings = CallbackSettings(
        timeout_seconds=wait_seconds,
        provider_url=provider.url,
        provider_secret=Secret("test", SECRET),
        public_url=f"http://127.0.0.1:{http_port}",
        dialback_timeout_seconds=5,
    )
    service = CallbackService(
        settings,
        store,
        box,
        auditor,
        node="gw.example.test",
        verifier=LocalVerifier(),
        second=second,
        throttle=throttle,
    )
    http = await open_callback_http(service, Listener(port=http_port))
    user = await store.add_user("alice", time.time(), password_hash=hash_password(PASSWORD))
    token = await second.enroll(user, "totp")
    await store.set_callback_policy(user.id, "always", time.time())
    return Rig(store, service, provider, http, http_port, user, token, audit_file)


@pytest.fixture
async def rig(tmp_path: Path, provider: ProviderStub) -> AsyncIterator[Rig]:
    r = await make_rig(tmp_path, provider)
    yield r
    await r.http.close()
    await r.store.close()


async def results(rig: Rig) -> list[tuple[str, str, str | None]]:
    events = await rig.store.query_audit(kind="callback_result")
    return [(e.result, str(e.detail.get("outcome")), e.reason) for e in events]


async def test_approve_link_approves_once(rig: Rig) -> None:
    await rig.service.register(rig.user, "approve", "+15550100", actor="test")
    client = ScriptedClient(can_ask=False)
    held = asyncio.create_task(rig.hold(client))
    msg = await asyncio.to_thread(rig.provider.wait_message, "approve")
    assert msg.signature_ok and msg.body["to"] == "+15550100"
    url = str(msg.body["url"])
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            assert page.status == 200
            assert page.headers["Referrer-Policy"] == "no-referrer"
            assert "Approve" in await page.text()
        assert not held.done()  # a GET (a link preview) decides nothing
        async with http.post(url, data={"decision": "approve"}) as resp:
            assert resp.status == 200
        assert await asyncio.wait_for(held, 10) is None
        async with http.post(url, data={"decision": "approve"}) as again:
            assert again.status == 410
        async with http.post(url[:-3] + "AAA", data={"decision": "approve"}) as forged:
            assert forged.status == 410
    assert await results(rig) == [("ok", "confirmed", None)]
    assert client.kept_alive  # the IMAP door's untagged OK
    token = url.rsplit("/", 1)[1]
    assert token not in rig.audit_file.read_text()


async def test_deny_link_and_a_second_login_while_one_is_pending(rig: Rig) -> None:
    await rig.service.register(rig.user, "approve", "+15550100", actor="test")
    first = asyncio.create_task(rig.hold(ScriptedClient(can_ask=False)))
    msg = await asyncio.to_thread(rig.provider.wait_message, "approve")
    # One outstanding callback per user: the second login is refused, the first goes on.
    assert await rig.hold(ScriptedClient(can_ask=False)) == "callback_pending"
    assert len([m for m in rig.provider.messages if m.body["kind"] == "approve"]) == 1
    async with (
        aiohttp.ClientSession() as http,
        http.post(str(msg.body["url"]), data={"decision": "deny"}) as resp,
    ):
        assert resp.status == 200
    assert await asyncio.wait_for(first, 10) == "callback_denied:user_denied"
    [start_fail] = await rig.store.query_audit(kind="callback_start", result="fail")
    assert start_fail.reason == "pending"


async def test_webhook_code_typed_at_the_prompt(rig: Rig) -> None:
    await rig.service.register(rig.user, "webhook", "+15550199", actor="test")
    client = ScriptedClient(can_ask=True)
    held = asyncio.create_task(rig.hold(client))
    msg = await asyncio.to_thread(rig.provider.wait_message, "code")
    assert msg.body["to"] == "+15550199" and msg.signature_ok
    code = str(msg.body["code"])
    await client.answers.put("000000" if code != "000000" else "111111")
    await client.answers.put(f" {code} ")
    assert await asyncio.wait_for(held, 10) is None
    assert [p for _i, p in client.asked] == ["Callback code: ", "Callback code: "]
    assert "not right" in client.asked[1][0]
    assert code not in rig.audit_file.read_text()


async def test_wrong_codes_fail_and_a_webhook_is_not_used_where_nobody_can_type(rig: Rig) -> None:
    await rig.service.register(rig.user, "webhook", "+15550199", actor="test")
    assert await rig.hold(ScriptedClient(can_ask=False)) == "callback_no_registration"
    client = ScriptedClient(can_ask=True)
    for wrong in ("1", "22", "333"):
        await client.answers.put(wrong)
    assert await rig.hold(client) == "callback_failed:wrong_secret"
    assert await results(rig) == [("fail", "failed", "wrong_secret")]


async def test_provider_status_callbacks_are_verified(rig: Rig) -> None:
    await rig.service.register(rig.user, "webhook", "+15550199", actor="test")
    client = ScriptedClient(can_ask=True)
    held = asyncio.create_task(rig.hold(client))
    msg = await asyncio.to_thread(rig.provider.wait_message, "code")
    assert msg.body["status_url"] == rig.status_url()
    mid, url = str(msg.body["id"]), rig.status_url()

    async def post(**kw: object) -> tuple[int, bytes, dict[str, str]]:
        return await asyncio.to_thread(post_status, url, mid, **kw)  # type: ignore[arg-type]

    status, _b, sent = await post(status="delivered")
    assert status == 200
    body = f'{{"id": "{mid}", "status": "delivered"}}'.encode()
    assert (await post(status="x", body=body, headers=sent))[0] == 403  # replayed
    assert (await post(status="failed", secret=b"wrong secret"))[0] == 403  # forged
    assert (await post(status="failed", at=time.time() - 3600))[0] == 403  # stale
    assert (await post(status="failed", headers={"Content-Type": "application/json"}))[0] == 403
    assert not held.done()  # none of them reached the login
    assert (await post(status="failed"))[0] == 200  # a genuine failure report ends it
    await client.answers.put("123")  # the round the client sees gets its answer
    assert await asyncio.wait_for(held, 10) == "callback_failed:provider_failed"
    reasons = [e.reason for e in await rig.store.query_audit(kind="callback_status")]
    assert reasons == [None, "replayed", "bad_signature", "stale", "unsigned", None]


async def test_timeout(tmp_path: Path, provider: ProviderStub) -> None:
    rig = await make_rig(tmp_path, provider, wait_seconds=2)
    try:
        await rig.service.register(rig.user, "approve", "+15550100", actor="test")
        began = time.monotonic()
        assert await rig.hold(ScriptedClient(can_ask=False)) == "callback_expired:timeout"
        assert 1.5 < time.monotonic() - began < 30
        # Over: the next login may start a callback again.
        assert await rig.hold(ScriptedClient(can_ask=False)) == "callback_expired:timeout"
        assert await results(rig) == [("fail", "expired", "timeout")] * 2
    finally:
        await rig.http.close()
        await rig.store.close()


async def test_a_client_that_goes_away_ends_its_callback(rig: Rig) -> None:
    await rig.service.register(rig.user, "approve", "+15550100", actor="test")
    held = asyncio.create_task(rig.hold(ScriptedClient(can_ask=False)))
    await asyncio.to_thread(rig.provider.wait_message, "approve")
    held.cancel()  # what the door does when the connection is lost
    with pytest.raises(asyncio.CancelledError):
        await held
    assert await results(rig) == [("fail", "denied", "client_gone")]
    # The outstanding callback was released: the next login is called back, not refused.
    again = asyncio.create_task(rig.hold(ScriptedClient(can_ask=False)))
    await asyncio.to_thread(rig.provider.wait_message, "approve", 1)
    again.cancel()  # at once, as the call goes out: the cancellation must not be lost
    with pytest.raises(asyncio.CancelledError):
        await again


async def test_new_source_policy(rig: Rig) -> None:
    await rig.store.set_callback_policy(rig.user.id, "never", time.time())
    assert await rig.hold(ScriptedClient(can_ask=False), "192.0.2.1") is None  # remembered
    await rig.store.set_callback_policy(rig.user.id, "new_source", time.time())
    assert await rig.hold(ScriptedClient(can_ask=False), "192.0.2.77") is None
    await rig.service.register(rig.user, "approve", "+15550100", actor="test")

    async def approved(source: str, device: str | None = None) -> str | None:
        n = len(rig.provider.messages)
        held = asyncio.create_task(rig.hold(ScriptedClient(can_ask=False), source, device))
        msg = await asyncio.to_thread(rig.provider.wait_message, "approve", n)
        async with (
            aiohttp.ClientSession() as http,
            http.post(str(msg.body["url"]), data={"decision": "approve"}) as resp,
        ):
            assert resp.status == 200
        return await asyncio.wait_for(held, 10)

    assert await approved("198.51.100.20") is None
    assert await rig.hold(ScriptedClient(can_ask=False), "198.51.100.99") is None  # same /24
    assert await approved("203.0.113.5") is None  # a new network
    assert await approved("203.0.113.5", "cert:ab12") is None  # a new device
    assert await rig.hold(ScriptedClient(can_ask=False), "203.0.113.7", "cert:ab12") is None
    assert len(await rig.store.query_audit(kind="callback_result")) == 3
    assert source_keys("2001:db8::1", "addr:2001:db8::1") == ["net:2001:db8::/64"]


async def test_dialback_proof(rig: Rig) -> None:
    done = await rig.service.register(rig.user, "dialback", f"127.0.0.1:{free_port()}", actor="t")
    assert done.device_key is not None
    host, port = done.record.address.rsplit(":", 1)
    statuses: list[str] = []
    answerer = CallbackAnswerer(base64.b64decode(done.device_key), statuses.append)
    await answerer.start(host, int(port))
    try:
        assert await rig.hold(ScriptedClient(can_ask=False)) is None
        assert answerer.answered == 1
    finally:
        await answerer.close()
    impostor = CallbackAnswerer(os.urandom(32), statuses.append)
    await impostor.start(host, int(port))
    try:
        assert await rig.hold(ScriptedClient(can_ask=False)) == "callback_failed:wrong_secret"
    finally:
        await impostor.close()
    # Nobody listening: the call fails at once, not at the timeout.
    assert await rig.hold(ScriptedClient(can_ask=False)) == "callback_failed:provider_failed"
    assert [o for _r, o, _why in await results(rig)] == ["confirmed", "failed", "failed"]


async def test_changing_a_registration_needs_password_and_code_and_tells_the_old_number(
    rig: Rig,
) -> None:
    old = (await rig.service.register(rig.user, "webhook", "+15550101", actor="t")).record
    change = rig.service.change_registration
    assert await change("alice", "wrong", rig.code(), old.id, "+15550666", source=IP) is None
    assert await change("alice", PASSWORD, "000000", old.id, "+15550666", source=IP) is None
    assert await change("alice", PASSWORD, rig.code(), 999, "+15550666", source=IP) is None
    assert [r.address for r in await rig.store.list_callbacks(rig.user.id)] == ["+15550101"]
    with pytest.raises(RegistrationError):
        await change("alice", PASSWORD, rig.code(), old.id, "not a number", source=IP)
    done = await change("alice", PASSWORD, rig.code(), old.id, "+15550777", source=IP)
    assert done is not None and done.record.address == "+15550777"
    notice = await asyncio.to_thread(rig.provider.wait_message, "notice")
    assert notice.body["to"] == "+15550101" and "changed" in str(notice.body["text"])
    reasons = [(e.result, e.reason) for e in await rig.store.query_audit(kind="callback_change")]
    assert reasons == [
        ("fail", "bad_password"),
        ("fail", "bad_code"),
        ("fail", "unknown_user_or_registration"),
        ("ok", None),
    ]


async def test_an_ssh_client_gets_one_round_and_then_waits_for_the_link(rig: Rig) -> None:
    await rig.service.register(rig.user, "approve", "+15550100", actor="test")
    client = ScriptedClient(can_ask=True)
    await client.answers.put("")  # Enter, pressed before the link was opened
    held = asyncio.create_task(rig.hold(client))
    msg = await asyncio.to_thread(rig.provider.wait_message, "approve")
    await asyncio.sleep(1)
    assert not held.done()
    async with (
        aiohttp.ClientSession() as http,
        http.post(str(msg.body["url"]), data={"decision": "approve"}) as resp,
    ):
        assert resp.status == 200
    assert await asyncio.wait_for(held, 10) is None
    [(instruction, prompt)] = client.asked
    assert prompt == "Calling you back - press Enter once you have answered: "
    assert "approval link" in instruction


async def test_without_a_waiting_client_or_a_registration_a_held_login_is_refused(rig: Rig) -> None:
    assert await rig.service.hold(rig.user, IP, "cli") == "callback_no_waiting_client"
    assert await rig.hold(ScriptedClient(can_ask=True)) == "callback_no_registration"
    await rig.store.set_callback_policy(rig.user.id, "never", time.time())
    assert await rig.hold(ScriptedClient(can_ask=True)) is None
