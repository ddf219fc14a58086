"""Alerts to a webhook: lockouts, bursts of failures from one source, the upstream down and back.

The alerts are derived from the audit trail (the Auditor tells every listener of each event)
and from a probe of the upstream, so they carry only what the trail carries: never a password,
code or secret. Sending never blocks a login: `notify` only puts the alert in a bounded queue,
and one worker posts it with retries and exponential back-off. A full queue drops the new
alert (counted and logged) rather than wait.

Each POST is JSON, signed with HMAC-SHA256 over `TIMESTAMP.BODY` with the configured secret:
header `X-Roamgate-Timestamp` (Unix seconds) and `X-Roamgate-Signature: sha256=HEX`. A receiver
recomputes it and refuses old timestamps, so a captured alert cannot be replayed later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp

from roamgate.auth.lockout import source_key
from roamgate.config import AlertSettings
from roamgate.store.base import AuditRecord, JsonValue

log = logging.getLogger("roamgate.alerts")

SIGNATURE_HEADER = "X-Roamgate-Signature"
TIMESTAMP_HEADER = "X-Roamgate-Timestamp"
# Sources tracked for failure bursts at once: a scan from many addresses cannot grow it further.
_MAX_TRACKED_SOURCES = 10_000


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The value of X-Roamgate-Signature for one POST."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class AlertSender:
    """The bounded queue and the worker that posts alerts to the webhook."""

    def __init__(
        self, settings: AlertSettings, hostname: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.hostname = hostname
        self.clock = clock
        self.queue: asyncio.Queue[dict[str, JsonValue]] = asyncio.Queue(settings.queue_size)
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self._worker: asyncio.Task[None] | None = None
        # Failure times per source network, for the burst alert; and when each last alerted.
        self._failures: dict[str, deque[float]] = {}
        self._burst_alerted: dict[str, float] = {}

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="alert-sender")

    async def close(self, flush_seconds: float = 2.0) -> None:
        """Give queued alerts a moment to leave (serve_stop comes after), then stop."""
        if self._worker is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), flush_seconds)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None

    # -- what becomes an alert
    def notify(self, event: str, **fields: JsonValue) -> None:
        """Queue an alert; never waits. `fields` are audit facts (no secrets reach here)."""
        now = self.clock()
        alert: dict[str, JsonValue] = {
            "event": event,
            "node": self.hostname,
            "ts": now,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            **fields,
        }
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("alert queue full (%d); dropped a %s alert", self.queue.maxsize, event)

    def on_audit(self, record: AuditRecord) -> None:
        """Auditor listener: a lock is an alert; so is a burst of failures from one source."""
        if record.kind == "lock":
            self.notify(
                "lockout",
                scope=record.detail.get("scope"),
                user=record.user_name,
                source=record.source,
                door=record.door,
                reason=record.reason,
                hard=record.result == "hard",
                seconds=record.detail.get("seconds"),
            )
        elif record.result == "fail" and record.kind == "auth" and record.source:
            self._count_failure(record.source, record.ts, record.door)

    def _count_failure(self, source: str, ts: float, door: str | None) -> None:
        key = source_key(source)
        window = float(self.settings.failure_window_seconds)
        times = self._failures.get(key)
        if times is None:
            if len(self._failures) >= _MAX_TRACKED_SOURCES:
                self._forget_quiet(ts - window)
            if len(self._failures) >= _MAX_TRACKED_SOURCES:
                return
            times = self._failures[key] = deque()
        times.append(ts)
        while times and times[0] <= ts - window:
            times.popleft()
        # Only the last `threshold` times matter: the deque stays that short.
        while len(times) > self.settings.failure_threshold:
            times.popleft()
        last = self._burst_alerted.get(key)
        if len(times) >= self.settings.failure_threshold and (last is None or ts - last >= window):
            self._burst_alerted[key] = ts
            self.notify(
                "repeated_failures",
                source=source,
                source_network=key,
                door=door,
                failures=len(times),
                window_seconds=self.settings.failure_window_seconds,
            )

    def _forget_quiet(self, before: float) -> None:
        for key in [k for k, t in self._failures.items() if not t or t[-1] <= before]:
            del self._failures[key]
            self._burst_alerted.pop(key, None)

    # -- sending
    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                alert = await self.queue.get()
                try:
                    await self._deliver(http, alert)
                finally:
                    self.queue.task_done()

    async def _deliver(self, http: aiohttp.ClientSession, alert: dict[str, Any]) -> None:
        body = json.dumps(alert, sort_keys=True, ensure_ascii=False).encode("utf-8")
        secret = self.settings.secret.value.strip()
        delay = float(self.settings.retry_base_seconds)
        for attempt in range(1, self.settings.max_attempts + 1):
            stamp = str(int(self.clock()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: stamp,
                SIGNATURE_HEADER: signature(secret, stamp, body),
                "User-Agent": "roamgate-alerts",
            }
            try:
                async with http.post(self.settings.url, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        self.sent += 1
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = type(exc).__name__
            if attempt == self.settings.max_attempts:
                break
            log.info("alert %s not delivered (%s); retry in %g s", alert["event"], problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)
        self.failed += 1
        log.error(
            "alert %s not delivered after %d attempts (%s)",
            alert["event"],
            self.settings.max_attempts,
            problem,
        )
