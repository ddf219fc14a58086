"""The callback service: policy, the login hold that runs a callback, and what the HTTP routes,
the CLI and the web app call (provider status, approve links, registrations).

The login hold builds one CallbackMachine (roamgate.auth.callback) per held login and carries
out its actions: it always calls the endpoint registered in the store, never one the client
names. One outstanding callback per user holds across nodes through the store's
compare-and-set; a second login while one is pending is refused, not superseding the first
(else whoever logs in last would get the approval the user meant for their own login).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from roamgate.audit import Auditor
from roamgate.auth.callback import (
    CHANNELS,
    Action,
    Audit,
    CallbackMachine,
    Confirmation,
    Deny,
    Event,
    Notify,
    PlaceCall,
    ProviderAccepted,
    ProviderStatus,
    RemoteApproval,
    Start,
    State,
    Tick,
    secret_digest,
)
from roamgate.auth.dialback import KEY_BYTES, NONCE_BYTES, Call, proof
from roamgate.callback.dialback import dial, split_endpoint
from roamgate.callback.signing import SignatureChecker
from roamgate.callback.waiting import LOGIN_DEVICE, WAITING_CLIENT, WaitingClient
from roamgate.callback.webhook import Provider
from roamgate.config import CallbackSettings
from roamgate.login.second_factor import SecondFactor
from roamgate.login.throttle import Throttle
from roamgate.login.verifiers import Outcome, PasswordVerifier
from roamgate.secretbox import SecretBox, SecretBoxError
from roamgate.store.base import (
    AuditRecord,
    CallbackPolicy,
    CallbackRecord,
    DuplicateError,
    JsonValue,
    PendingCallback,
    Store,
    UserRecord,
)

log = logging.getLogger("roamgate.callback")

CODE_DIGITS = 6
POLL_SECONDS = 0.5  # how often a held login looks at the store (status, approval)
KEEPALIVE_SECONDS = 5.0  # an untagged OK this often while an IMAP LOGIN is held
CODE_PROMPT = "Callback code: "
ENTER_PROMPT = "Calling you back - press Enter once you have answered: "
POLICIES: tuple[CallbackPolicy, ...] = ("never", "always", "new_source")
_PHONE = re.compile(r"\+?[0-9][0-9 ()./-]{2,31}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_STATUS_ID = re.compile(r"cb_[0-9a-f]{16}")


class RegistrationError(ValueError):
    """A registration the service refuses; the message is fit for the user."""


def check_address(channel: str, address: str) -> str:
    """The address normalised for its channel, or RegistrationError."""
    address = address.strip()
    if channel not in CHANNELS:
        raise RegistrationError(f"unknown channel {channel!r} (choose {', '.join(CHANNELS)})")
    if channel in ("webhook", "approve"):
        if not _PHONE.fullmatch(address):
            raise RegistrationError(f"expected a phone number like +15550100, got {address!r}")
        return address
    try:
        host, _port = split_endpoint(address)
    except ValueError as exc:
        raise RegistrationError(str(exc)) from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise RegistrationError(f"not a host name or IP address: {host!r}") from None
    return address


def source_keys(source: str, device: str | None) -> list[str]:
    """What `new_source` compares: the source's network (IPv4 /24, IPv6 /64) and the device."""
    try:
        ip = ipaddress.ip_address(source)
        prefix = 24 if ip.version == 4 else 64
        keys = [f"net:{ipaddress.ip_network(f'{ip}/{prefix}', strict=False)}"]
    except ValueError:
        keys = [f"addr:{source[:64]}"]
    if device is not None and not device.startswith("addr:"):
        keys.append(f"device:{device[:200]}")
    return keys


@dataclass(frozen=True)
class Registered:
    record: CallbackRecord
    device_key: str | None  # base64, dial-back only: shown once, for the device's key file


class CallbackService:
    """Everything callback verification does on the asyncio side."""

    def __init__(
        self,
        settings: CallbackSettings,
        store: Store,
        box: SecretBox,
        auditor: Auditor,
        *,
        node: str,
        verifier: PasswordVerifier | None = None,
        second: SecondFactor | None = None,
        throttle: Throttle | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.box = box
        self.auditor = auditor
        self.node = node
        self.verifier = verifier
        self.second = second
        self.throttle = throttle
        self.clock = clock
        secret = settings.provider_secret.value if settings.provider_secret is not None else b""
        base = (settings.public_url or "").rstrip("/")
        self.public_url = base
        self.provider: Provider | None = None
        if settings.provider_url and secret:
            self.provider = Provider(
                settings.provider_url,
                secret,
                float(settings.provider_timeout_seconds),
                f"{base}/callback/status" if base else None,
                clock,
            )
        self.status_checker = (
            SignatureChecker(secret, float(settings.status_max_age_seconds), clock)
            if secret
            else None
        )

    # -- the login hold
    async def hold(self, user: UserRecord, source: str, door: str) -> str | None:
        """LoginHold: None lets the login through, a reason refuses it."""
        policy = await self.store.get_callback_policy(user.id) or self.settings.default_policy
        keys = source_keys(source, LOGIN_DEVICE.get())
        if policy == "never":
            # Remembered all the same: a later new_source policy starts from the known ones.
            await self.store.note_known_sources(user.id, keys, self.clock())
            return None
        if policy == "new_source" and not await self.store.unknown_sources(user.id, keys):
            await self.store.note_known_sources(user.id, keys, self.clock())
            return None
        reason = await self._call_back(user, source, door, WAITING_CLIENT.get(), policy)
        if reason is None:
            await self.store.note_known_sources(user.id, keys, self.clock())
        return reason

    async def _call_back(
        self,
        user: UserRecord,
        source: str,
        door: str,
        client: WaitingClient | None,
        policy: str,
    ) -> str | None:
        async def refuse(reason: str, channel: str | None = None) -> str:
            await self.auditor.record(
                "callback_start",
                "fail",
                user=user.name,
                source=source,
                door=door,
                reason=reason,
                detail={"channel": channel, "policy": policy},
            )
            return f"callback_{reason}"

        if client is None:
            return await refuse("no_waiting_client")
        usable = [
            r
            for r in await self.store.list_callbacks(user.id)
            if r.channel in self.settings.channels and (client.can_ask or r.channel != "webhook")
        ]
        usable.sort(key=lambda r: (self.settings.channels.index(r.channel), r.id))
        if not usable:
            return await refuse("no_registration")
        reg = usable[0]
        run = _Run(self, user, source, door, reg, client, policy)
        try:
            await run.prepare()
        except (SecretBoxError, RegistrationError) as exc:
            log.error("callback registration %d of %s is unusable: %s", reg.id, user.name, exc)
            return await refuse("registration_unusable", reg.channel)
        if not await self.store.claim_pending_callback(run.pending):
            return await refuse("pending", reg.channel)
        try:
            return await run.execute()
        finally:
            await self.store.finish_pending_callback(run.pending.id)

    # -- provider status callbacks and approve links (any node: state is in the store)
    async def provider_status(self, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
        """(HTTP status, text) for POST /callback/status."""
        if self.status_checker is None:
            return 404, "Not found"
        problem = self.status_checker.check(headers, body)
        detail: dict[str, JsonValue] = {}
        if problem is None:
            try:
                data = json.loads(body)
                pending_id, status = str(data["id"]), str(data["status"])
            except (ValueError, KeyError, TypeError):
                problem = "malformed"
            else:
                detail = {"pending_id": pending_id[:40], "status": status[:20]}
                if not _STATUS_ID.fullmatch(pending_id) or status not in ("delivered", "failed"):
                    problem = "malformed"
                else:
                    before = ["pending"] if status == "delivered" else ["pending", "delivered"]
                    if not await self.store.update_pending_callback(
                        pending_id, before, status, self.clock()
                    ):
                        problem = "no_pending_callback"
        await self.auditor.record(
            "callback_status",
            "fail" if problem else "ok",
            actor="provider",
            reason=problem,
            detail=detail,
        )
        if problem in ("unsigned", "bad_signature", "stale", "replayed"):
            return 403, "Forbidden"
        if problem == "malformed":
            return 400, "Bad request"
        if problem is not None:
            return 404, "No such callback"
        return 200, "OK"

    def token_shape_ok(self, token: str) -> bool:
        return bool(_TOKEN.fullmatch(token))

    async def answer_approval(self, token: str, approve: bool, source: str) -> bool:
        """The approve link's form was sent: approve or deny, once, before it expires."""
        answered = None
        if self.token_shape_ok(token):
            token_hash = self.box.keyed_hash("callback-approve", token)
            status = "approved" if approve else "denied"
            answered = await self.store.answer_pending_callback(token_hash, status, self.clock())
        user = None
        if answered is not None:
            record = await self.store.get_user_by_id(answered.user_id)
            user = record.name if record is not None else None
        await self.auditor.record(
            "callback_approval",
            "ok" if answered is not None else "fail",
            user=user,
            source=source,
            reason=None if answered is not None else "unknown_used_or_expired_link",
            detail={"decision": "approve" if approve else "deny"},
        )
        return answered is not None

    # -- registrations (admin CLI, and the self-service path for the web app)
    async def register(
        self, user: UserRecord, channel: str, address: str, *, actor: str
    ) -> Registered:
        address = check_address(channel, address)
        try:
            record = await self.store.add_callback(user.id, channel, address, self.clock())
        except DuplicateError:
            raise RegistrationError(
                f"{user.name} has this {channel} registration already"
            ) from None
        key_text = None
        if channel == "dialback":
            key = secrets.token_bytes(KEY_BYTES)
            await self.store.set_callback_key(record.id, self.box.seal(key, _key_binding(record)))
            key_text = base64.b64encode(key).decode()
        await self.auditor.record(
            "callback_register",
            "ok",
            user=user.name,
            actor=actor,
            detail={"channel": channel, "callback_id": record.id},
        )
        return Registered(record, key_text)

    async def remove(self, user: UserRecord, callback_id: int, *, actor: str) -> bool:
        mine = {r.id for r in await self.store.list_callbacks(user.id)}
        removed = callback_id in mine and await self.store.remove_callback(callback_id)
        await self.auditor.record(
            "callback_remove",
            "ok" if removed else "fail",
            user=user.name,
            actor=actor,
            reason=None if removed else "no_such_registration",
            detail={"callback_id": callback_id},
        )
        return removed

    async def change_registration(
        self,
        user_name: str,
        password: str,
        code: str,
        callback_id: int,
        new_address: str,
        *,
        source: str,
        door: str = "web",
    ) -> Registered | None:
        """Self-service change of a registered number or endpoint: needs password and code.

        The old endpoint is told (webhook/approve: a notice through the provider), so a thief
        who changed it cannot do so silently. None if a check failed (audited, counted).
        """
        assert self.verifier is not None and self.second is not None and self.throttle is not None

        async def fail(reason: str, user: str | None = user_name) -> None:
            await self.auditor.record(
                "callback_change", "fail", user=user, source=source, door=door, reason=reason,
                detail={"callback_id": callback_id},
            )  # fmt: skip

        if await self.throttle.check(user_name, source) is not None:
            await fail("locked")
            return None
        user = await self.store.get_user(user_name)
        old = None
        if user is not None and user.enabled:
            old = next(
                (r for r in await self.store.list_callbacks(user.id) if r.id == callback_id), None
            )
        if user is None or not user.enabled or old is None:
            await fail("unknown_user_or_registration")
            await self.throttle.failure(None, source, door)
            return None
        # Checked before the code, so a typo in the number does not use the code up.
        new_address = check_address(old.channel, new_address)
        if await self.verifier.verify(user, password) is not Outcome.ACCEPTED:
            await fail("bad_password")
            await self.throttle.failure(user.name, source, door)
            return None
        if not (await self.second.verify(user, code)).ok:
            await fail("bad_code")
            await self.throttle.failure(user.name, source, door)
            return None
        await self.store.remove_callback(old.id)
        registered = await self.register(user, old.channel, new_address, actor=user.name)
        notified = False
        if old.channel in ("webhook", "approve") and self.provider is not None:
            notified = await self.provider.send(
                "cb_" + secrets.token_hex(8),
                "notice",
                old.address,
                text="Your roamgate callback number was changed. If this was not you, call IT now.",
            )
        await self.auditor.record(
            "callback_change",
            "ok",
            user=user.name,
            source=source,
            door=door,
            detail={
                "channel": old.channel,
                "old_callback_id": old.id,
                "callback_id": registered.record.id,
                "old_endpoint_notified": notified,
            },
        )
        return registered


def _key_binding(record: CallbackRecord) -> str:
    return f"callback-key:{record.id}:{record.user_id}"


class _Run:
    """One held login's callback: a machine and the I/O its actions ask for."""

    def __init__(
        self,
        service: CallbackService,
        user: UserRecord,
        source: str,
        door: str,
        reg: CallbackRecord,
        client: WaitingClient,
        policy: str,
    ) -> None:
        self.s = service
        self.user = user
        self.source = source
        self.door = door
        self.reg = reg
        self.client = client
        self.policy = policy
        self.changed = asyncio.Event()
        self.notice = ""
        self.tasks: list[asyncio.Task[None]] = []
        self.writes: list[asyncio.Future[AuditRecord]] = []
        self._code = ""
        self._token = ""
        self._nonce = b""
        self._status = "pending"
        self.machine: CallbackMachine
        self.pending: PendingCallback

    async def prepare(self) -> None:
        """Make this call's secret, the machine and the outstanding-callback record."""
        s, reg = self.s, self.reg
        now = s.clock()
        expected: bytes | None = None
        token_hash: bytes | None = None
        if reg.channel == "webhook":
            self._code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
            expected = secret_digest(self._code.encode())
        elif reg.channel == "approve":
            self._token = secrets.token_urlsafe(32)
            token_hash = s.box.keyed_hash("callback-approve", self._token)
        else:
            sealed = await s.store.get_callback_key(reg.id)
            if sealed is None:
                raise RegistrationError("the dial-back registration has no device key")
            key = s.box.open(sealed, _key_binding(reg))
            self._nonce = secrets.token_bytes(NONCE_BYTES)
            expected = secret_digest(proof(key, s.node, self.user.name, self._nonce))
        timeout = float(s.settings.timeout_seconds)
        self.machine = CallbackMachine(
            reg.channel,
            reg.address,
            expected,
            timeout=timeout,
            # A device's proof is right or not: it gets no second try.
            max_attempts=1 if reg.channel == "dialback" else s.settings.max_attempts,
        )
        self.pending = PendingCallback(
            "cb_" + secrets.token_hex(8), self.user.id, reg.channel, s.node, token_hash,
            "pending", now, now + timeout,
        )  # fmt: skip

    async def execute(self) -> str | None:
        ask: asyncio.Task[None] | None = None
        try:
            await self.feed(Start(self.s.clock()))
            if self.client.can_ask and not self.machine.done:
                ask = asyncio.get_running_loop().create_task(self._ask())
            next_keepalive = time.monotonic() + KEEPALIVE_SECONDS
            while not self.machine.done:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                # that comes as the event is set, and a login whose client left would run on.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_SECONDS):
                        await self.changed.wait()
                self.changed.clear()
                await self._poll_store()
                await self.feed(Tick(self.s.clock()))
                if not self.client.can_ask and time.monotonic() >= next_keepalive:
                    next_keepalive = time.monotonic() + KEEPALIVE_SECONDS
                    await self.client.keepalive(self.notice or "Waiting for callback verification")
        finally:
            for task in [*self.tasks, *([ask] if ask else [])]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not self.machine.done:
                # Cancelled (the client went away): the outcome is still audited once.
                await self._act(self.machine.handle(Deny(self.s.clock(), "client_gone")))
            # Audit events of the tasks just cancelled are written whole (they were shielded).
            await asyncio.gather(*self.writes, return_exceptions=True)
        m = self.machine
        if m.state is State.CONFIRMED:
            return None
        return f"callback_{m.state.value}" + (f":{m.reason}" if m.reason else "")

    async def feed(self, event: Event) -> None:
        await self._act(self.machine.handle(event))
        self.changed.set()

    async def _act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Audit):
                detail: dict[str, JsonValue] = {
                    "channel": action.channel,
                    "callback_id": self.reg.id,
                    "pending_id": self.pending.id,
                    "policy": self.policy,
                }
                if action.outcome is not None:
                    detail["outcome"] = action.outcome
                write = asyncio.ensure_future(
                    self.s.auditor.record(
                        action.kind, action.result, user=self.user.name, source=self.source,
                        door=self.door, reason=action.reason, detail=detail,
                    )
                )  # fmt: skip
                self.writes.append(write)
                # Shielded: the task feeding this event may be cancelled once the machine is done.
                await asyncio.shield(write)
            elif isinstance(action, Notify):
                self.notice = action.text
                if not self.client.can_ask:
                    await self.client.keepalive(action.text)
            elif isinstance(action, PlaceCall):
                # Rule 1: action.endpoint is the registration's, which the machine was given.
                self.tasks.append(asyncio.get_running_loop().create_task(self._place(action)))

    async def _place(self, call: PlaceCall) -> None:
        s = self.s
        if call.channel == "dialback":
            answer = await dial(
                call.endpoint,
                Call(s.node, self.user.name, self._nonce),
                float(s.settings.dialback_timeout_seconds),
            )
            if answer is None:
                await self.feed(ProviderStatus(s.clock(), "failed"))
                return
            await self.feed(ProviderAccepted(s.clock()))
            await self.feed(Confirmation(s.clock(), answer))
            return
        if s.provider is None:
            await self.feed(ProviderStatus(s.clock(), "failed"))
            return
        if call.channel == "webhook":
            text = f"Your roamgate callback code is {self._code}"
            sent = await s.provider.send(
                self.pending.id, "code", call.endpoint, code=self._code, text=text
            )
        else:
            url = f"{s.public_url}/callback/approve/{self._token}"
            text = f"Approve or deny your roamgate login: {url}"
            sent = await s.provider.send(
                self.pending.id, "approve", call.endpoint, url=url, text=text
            )
        self._code = self._token = ""  # the gateway keeps only digests from here on
        await self.feed(
            ProviderAccepted(s.clock()) if sent else ProviderStatus(s.clock(), "failed")
        )

    async def _poll_store(self) -> None:
        current = await self.s.store.get_pending_callback(self.pending.id)
        status = current.status if current is not None else "gone"
        if status == self._status:
            return
        self._status = status
        now = self.s.clock()
        if status in ("delivered", "failed"):
            await self.feed(ProviderStatus(now, status))
        elif status == "approved":
            await self.feed(RemoteApproval(now))
        elif status == "denied":
            await self.feed(Deny(now, "user_denied"))

    async def _ask(self) -> None:
        """SSH: a keyboard-interactive round; codes until the machine is done, else one Enter."""
        while not self.machine.done:
            if self.machine.state is State.CALLING:
                await asyncio.sleep(0.05)  # the notice is not known until the call went out
                continue
            instruction = f"roamgate is calling you back. {self.notice}".strip()
            prompt = CODE_PROMPT if self.reg.channel == "webhook" else ENTER_PROMPT
            answer = await self.client.ask(instruction, prompt)
            if answer is None:
                await self.feed(Deny(self.s.clock(), "client_gone"))
                return
            if self.reg.channel != "webhook":
                return  # the device or the link decides; the login waits for it
            await self.feed(Confirmation(self.s.clock(), answer.strip().encode()[:600]))
