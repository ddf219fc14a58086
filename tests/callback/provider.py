"""A stand-in SMS/voice provider (no real one can run here): a local aiohttp receiver.

It checks the gateway's HMAC signature on every POST, records the message, and for the tests
hands the code over (a file an askpass script reads) or reports a delivery status back to the
gateway, signed like a provider would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from roamgate.callback.signing import SignatureChecker, signed_headers
from roamgate.demo.dovecot import free_port

SECRET = b"provider-shared-secret-for-tests-0123456789"


@dataclass
class Received:
    body: dict[str, Any]
    signature_ok: bool


@dataclass
class ProviderStub:
    port: int = field(default_factory=free_port)
    messages: list[Received] = field(default_factory=list)
    # What to do with the next messages: write a code here, report this status back.
    code_file: Path | None = None
    report_status: str | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/send"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="provider-stub", daemon=True)
        self._thread.start()
        assert self._ready.wait(15), "provider stub did not start"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        checker = SignatureChecker(SECRET, 300)

        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            ok = checker.check(request.headers, body) is None
            data = json.loads(body)
            with self._cond:
                self.messages.append(Received(data, ok))
                self._cond.notify_all()
            if not ok:
                return web.Response(status=401)
            if self.code_file is not None and data.get("kind") == "code":
                self.code_file.write_text(str(data["code"]) + "\n")
            if self.report_status is not None and data.get("status_url"):
                status = self.report_status
                asyncio.get_running_loop().run_in_executor(
                    None, post_status, str(data["status_url"]), str(data["id"]), status
                )
            return web.json_response({"accepted": True})

        app = web.Application()
        app.router.add_post("/send", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def wait_message(self, kind: str, after: int = 0, timeout: float = 60) -> Received:
        """The first message of this kind at index >= after."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self.messages[after:]:
                    if msg.body.get("kind") == kind:
                        return msg
                left = deadline - time.monotonic()
                assert left > 0, f"no {kind} message within {timeout} s: {self.messages}"
                self._cond.wait(left)


def post_status(
    url: str,
    message_id: str,
    status: str,
    *,
    secret: bytes = SECRET,
    at: float | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """POST a status callback as the provider would; returns (HTTP status, body, headers sent)."""
    if body is None:
        body = json.dumps({"id": message_id, "status": status}).encode()
    if headers is None:
        headers = signed_headers(secret, body, time.time() if at is None else at)
    assert url.startswith("http://127.0.0.1:"), url
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310 (a local test URL)
            return resp.status, resp.read(), headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), headers
