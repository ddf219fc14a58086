"""The SSH door's `imap-resume` service: IMAP sessions that outlive the SSH connection they came on.

A connector opens a direct-tcpip channel to `imap-resume` and speaks roamgate.resume's framing on
it. The stream and the IMAP session behind it (the gateway's own proxy, upstream session and
all) live in a table, not in the channel: when the SSH connection drops, the session goes on
(IDLE is renewed, keep-alives are queued) for `ssh.resume.grace_seconds`, and a new channel from
the same user that proves the stream's secret over a fresh nonce takes it over; each side then
sends again what the other did not receive. At the end of the grace period the upstream session
is logged out. Drops, resumes (with the bytes sent again), refusals and expiries are audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

from roamgate.config import ResumeSettings
from roamgate.gateway.imap_door import ImapDoor
from roamgate.gateway.pump import CHUNK, Counted
from roamgate.gateway.upstream import READ_SIZE
from roamgate.resume.endpoint import Endpoint, StreamError
from roamgate.resume.frames import NONCE_BYTES, Resume
from roamgate.resume.handshake import (
    Entry,
    OpenRequested,
    Refusal,
    ResumeRequested,
    ServerCarrier,
    StreamTable,
)
from roamgate.runtime import Runtime
from roamgate.store.base import JsonValue

log = logging.getLogger("roamgate.resume")

SERVICE = "imap-resume"


class _Stream:
    """The IMAP session's reader and writer: bytes go through the stream's endpoint, whichever
    carrier (if any) is bound to it now."""

    def __init__(self, endpoint: Endpoint, user: str) -> None:
        self.endpoint = endpoint
        self.user = user
        self.entry: Entry[_Stream] | None = None
        self.carrier: ServerCarrier | None = None
        self.channel: Counted | None = None
        self.task: asyncio.Task[None] | None = None
        self.dead = False  # expired: reads see the end, writes go nowhere
        self.detached_at: float | None = None
        self.resumes = 0
        self.bytes_resent = 0
        self._pending = bytearray()  # written by the session, not yet in the endpoint (no room)
        self._closing = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def stream_id(self) -> str:
        return self.entry.stream_id.hex() if self.entry is not None else "?"

    # -- Reader
    async def read(self, n: int = -1, /) -> bytes:
        while True:
            if self.dead:
                return b""
            if self.endpoint.available:
                data = self.endpoint.read(n if n > 0 else READ_SIZE)
                self.flush()  # an acknowledgement may be due
                return data
            if self.endpoint.at_eof:
                return b""
            await self._wait()

    # -- Writer
    def write(self, data: bytes, /) -> None:
        if self.dead or self._closing:
            return
        self._pending += data
        self._move()

    async def drain(self) -> None:
        while self._pending and not self.dead:
            await self._wait()

    def close(self) -> None:
        self._closing = True
        self._move()

    def get_extra_info(self, name: str, default: Any = None, /) -> Any:
        return default

    # -- carriers
    def _move(self) -> None:
        """Pending bytes into the endpoint as far as its cap allows (acks make room)."""
        end = self.endpoint
        n = min(len(self._pending), end.room)
        if n:
            end.write(bytes(self._pending[:n]))
            del self._pending[:n]
        if self._closing and not self._pending and not end.closed:
            end.close()
            end.discard_input()  # the session reads no more
        self.flush()

    def flush(self) -> None:
        if self.carrier is None or self.channel is None:
            return
        data = self.carrier.data_to_send()
        if data:
            with contextlib.suppress(OSError, RuntimeError):
                self.channel.write(data)

    def fed(self) -> None:
        """The carrier delivered frames: data to read, room to write, acks to send."""
        self._move()
        self._notify()

    def bind(self, carrier: ServerCarrier, channel: Counted) -> None:
        old = self.channel
        self.carrier, self.channel, self.detached_at = carrier, channel, None
        if old is not None and old is not channel:
            old.close()  # a half-open carrier the gateway had not noticed dropping yet

    def unbind(self, carrier: ServerCarrier) -> bool:
        """The carrier is gone; True if it was the one bound (the stream is now detached)."""
        if self.carrier is not carrier:
            return False
        self.endpoint.detach()
        self.carrier = self.channel = None
        self.detached_at = time.monotonic()
        return True

    def expire(self) -> None:
        self.dead = True
        self._notify()

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class ResumableService:
    """The table of resumable streams of one SSH door, and its grace-period clock."""

    def __init__(self, rt: Runtime, imap: ImapDoor, settings: ResumeSettings, door: str) -> None:
        self.rt = rt
        self.imap = imap
        self.settings = settings
        self.door = door
        self.table: StreamTable[_Stream] = StreamTable(
            grace=float(settings.grace_seconds),
            max_per_user=settings.max_streams_per_user,
            token_bytes=secrets.token_bytes,
        )
        self._timer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().create_task(
            self._expire_loop(), name="resume-expiry"
        )

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        # The IMAP sessions themselves are ended by the IMAP door's close (BYE, upstream closed).

    async def _audit(
        self,
        kind: str,
        result: str,
        user: str,
        source: str | None,
        *,
        reason: str | None = None,
        detail: dict[str, JsonValue] | None = None,
    ) -> None:
        await self.rt.auditor.record(
            kind, result, user=user, source=source, door=self.door, reason=reason, detail=detail
        )

    async def _expire_loop(self) -> None:
        poll = min(1.0, self.settings.grace_seconds / 4)
        while True:
            await asyncio.sleep(poll)
            for entry in self.table.expired(time.monotonic()):
                await self._expire(entry, "grace_period_over")

    async def _expire(self, entry: Entry[_Stream], reason: str) -> None:
        stream = entry.state
        stream.expire()  # the session reads the end and logs out upstream
        detached = time.monotonic() - (stream.detached_at or time.monotonic())
        await self._audit(
            "stream_expire",
            "ok",
            entry.user,
            None,
            reason=reason,
            detail={"stream_id": stream.stream_id, "detached_seconds": round(detached, 3)},
        )

    async def serve_channel(
        self, channel: Counted, user: str, source: str, port: int, *, link_compressed: bool
    ) -> str:
        """One carrier: the challenge, OPEN or RESUME, then frames until it drops or the stream ends."""
        carrier = ServerCarrier(secrets.token_bytes(NONCE_BYTES))
        channel.write(carrier.data_to_send())
        stream: _Stream | None = None
        reason = "connection_lost"
        try:
            while True:
                data = await channel.read(CHUNK)
                if not data:
                    if stream is not None and stream.endpoint.finished:
                        reason = "closed"
                    break
                try:
                    events = carrier.receive_data(data)
                except StreamError as exc:
                    await self._audit(
                        "stream_error",
                        "fail",
                        user,
                        source,
                        reason="protocol_error",
                        detail={"error": str(exc)[:200], "stream_id": _sid(stream)},
                    )
                    reason = "protocol_error"
                    break
                for event in events:
                    if isinstance(event, OpenRequested):
                        stream = await self._open(
                            carrier, channel, user, source, port, link_compressed
                        )
                    elif isinstance(event, ResumeRequested):
                        stream = await self._resume(carrier, channel, event.request, user, source)
                if stream is None:
                    channel.write(carrier.data_to_send())
                    if carrier.refused:
                        reason = "refused"
                        await channel.drain()
                        break
                    continue
                stream.fed()
                if stream.endpoint.finished:
                    reason = "closed"
                    break
        finally:
            if stream is not None:
                await self._carrier_gone(stream, carrier, source)
        return reason

    async def _open(
        self,
        carrier: ServerCarrier,
        channel: Counted,
        user: str,
        source: str,
        port: int,
        link_compressed: bool,
    ) -> _Stream | None:
        stream = _Stream(Endpoint(self.settings.buffer_bytes), user)
        entry = self.table.open(user, stream.endpoint, stream)
        if isinstance(entry, Refusal):
            # The oldest stream left without a carrier makes room (a connector that lost an
            # OPENED answer leaves such orphans); else the new one is refused.
            idle = [e for e in self.table.of_user(user) if e.expires_at is not None]
            if idle:
                oldest = min(idle, key=lambda e: e.expires_at or 0.0)
                self.table.remove(oldest, expired=True)
                await self._expire(oldest, "replaced")
                entry = self.table.open(user, stream.endpoint, stream)
        if isinstance(entry, Refusal):
            carrier.refuse()
            await self._audit("stream_open", "fail", user, source, reason=entry.reason)
            return None
        stream.entry = entry
        carrier.accept_open(stream.endpoint, entry.stream_id, entry.secret)
        stream.bind(carrier, channel)
        stream.flush()
        await self._audit("stream_open", "ok", user, source, detail={"stream_id": stream.stream_id})
        stream.task = asyncio.get_running_loop().create_task(
            self._session(stream, user, source, port, link_compressed),
            name=f"imap-resume-{stream.stream_id[:8]}",
        )
        return stream

    async def _session(
        self, stream: _Stream, user: str, source: str, port: int, link_compressed: bool
    ) -> None:
        try:
            await self.imap.serve_stream(
                stream,
                stream,
                source,
                port,
                tunnel_user=user,
                link_compressed=link_compressed,
                logout_when_gone=True,
            )
        finally:
            stream.close()  # serve_stream closed it already; a cancel may not have
            entry = stream.entry
            if stream.dead and entry is not None:
                self.table.remove(entry)

    async def _resume(
        self, carrier: ServerCarrier, channel: Counted, request: Resume, user: str, source: str
    ) -> _Stream | None:
        found = self.table.resume(user, request, nonce=carrier.nonce, now=time.monotonic())
        asked = request.stream_id.hex()
        if isinstance(found, Refusal):
            carrier.refuse()
            await self._audit(
                "stream_resume", "fail", user, source, reason=found.reason,
                detail={"stream_id": asked},
            )  # fmt: skip
            return None
        stream = found.state
        old = stream.carrier
        if old is not None:
            stream.unbind(old)  # its channel is closed by bind()
        try:
            resent = carrier.accept_resume(stream.endpoint, request.received)
        except StreamError as exc:
            carrier.refuse()
            self.table.detached(found, time.monotonic())
            await self._audit(
                "stream_resume", "fail", user, source, reason="bad_offset",
                detail={"stream_id": asked, "error": str(exc)[:200]},
            )  # fmt: skip
            return None
        stream.bind(carrier, channel)
        stream.resumes += 1
        stream.bytes_resent += resent
        await self._audit(
            "stream_resume",
            "ok",
            user,
            source,
            detail={
                "stream_id": asked,
                "bytes_resent": resent,
                "client_received": request.received,
                "gateway_received": stream.endpoint.received,
                "resumes": stream.resumes,
            },
        )
        return stream

    async def _carrier_gone(self, stream: _Stream, carrier: ServerCarrier, source: str) -> None:
        entry = stream.entry
        if entry is None or not stream.unbind(carrier):
            return
        end = stream.endpoint
        if end.finished or stream.dead:
            self.table.remove(entry)
            await self._audit(
                "stream_close", "ok", stream.user, source,
                detail={"stream_id": stream.stream_id, "resumes": stream.resumes,
                        "bytes_resent": stream.bytes_resent},
            )  # fmt: skip
            return
        self.table.detached(entry, time.monotonic())
        await self._audit(
            "stream_drop",
            "ok",
            stream.user,
            source,
            detail={
                "stream_id": stream.stream_id,
                "unacknowledged": end.sent - end.acked,
                "grace_seconds": self.settings.grace_seconds,
            },
        )


def _sid(stream: _Stream | None) -> str | None:
    return stream.stream_id if stream is not None else None
