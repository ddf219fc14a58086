"""Alerts to a local webhook, audit retention and export, against a real `roamgate serve`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import imaplib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from roamgate.demo.dovecot import PrivateDovecot, free_port
from roamgate.store import open_store
from roamgate.store.base import AuditRecord
from tests.gateway.conftest import PASSWORDS, Gateway, running_gateway

USERS = {"bob": PASSWORDS["bob"], "carol": PASSWORDS["carol"]}
HOOK_SECRET = "hook-secret-4f9a1c"  # a test fixture's webhook key
DAY = 86400


class Receiver:
    """A webhook on 127.0.0.1 in its own thread; answers 503 to the first POST (a retry test)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.posts: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.attempts = 0
        self.bad_signatures = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        stamp = request.headers["X-Roamgate-Timestamp"]
        expected = (
            "sha256="
            + hmac.new(
                HOOK_SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256
            ).hexdigest()
        )
        if not hmac.compare_digest(expected, request.headers["X-Roamgate-Signature"]):
            self.bad_signatures += 1
            return web.Response(status=401)
        assert abs(time.time() - int(stamp)) < 120
        if self.attempts == 1:
            return web.Response(status=503)
        self.raw.append(body)
        self.posts.append(json.loads(body))
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float = 40) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for post in list(self.posts):
                if match(post):
                    return post
            time.sleep(0.1)
        pytest.fail(f"no matching alert; got {self.posts}")


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot-alerts")) as server:
        for user, password in USERS.items():
            server.add_user(user, password)
        yield server


def test_alerts_for_lockout_failure_burst_and_upstream(
    mail: PrivateDovecot, tmp_path: Path
) -> None:
    secret_file = tmp_path / "hook.key"
    secret_file.write_text(HOOK_SECRET + "\n")
    secret_file.chmod(0o600)
    with Receiver() as hook:
        alerts = (
            f"alerts:\n  url: http://127.0.0.1:{hook.port}/hook\n  secret_file: {secret_file}\n"
            "  failure_threshold: 3\n  failure_window_seconds: 600\n"
            "  upstream_check_seconds: 1\n  retry_base_seconds: 1\n  timeout_seconds: 3\n"
            "hostname:"
        )
        with running_gateway(
            mail,
            tmp_path / "gw",
            users=USERS,
            replace={"hostname:": alerts, "user_threshold: 10": "user_threshold: 3"},
        ) as gw:
            wrong = []
            for _ in range(3):
                client = gw.imaps()
                guess = "wrong-pass" + gw.code("bob")
                wrong.append(guess)
                with pytest.raises(imaplib.IMAP4.error):
                    client.login("bob", guess)
                client.logout()
            lock = hook.wait(lambda p: p["event"] == "lockout")
            assert lock["user"] == "bob" and lock["scope"] == "user" and lock["hard"] is False
            assert lock["source"] == "127.0.0.1" and lock["door"] == "imaps"
            burst = hook.wait(lambda p: p["event"] == "repeated_failures")
            assert burst["source"] == "127.0.0.1" and burst["failures"] == 3
            assert hook.attempts >= 3  # the first POST was refused (503) and retried

            # The upstream goes away, and comes back.
            mail.stop()
            down = hook.wait(lambda p: p["event"] == "upstream_down")
            assert down["upstream"] == f"127.0.0.1:{mail.imap_port}"
            mail.start()
            hook.wait(lambda p: p["event"] == "upstream_up")
            kinds = [e["kind"] for e in gw.audit()]
            assert "upstream_unreachable" in kinds and "upstream_reachable" in kinds
            client = gw.login("carol")  # and logins work again
            client.logout()
            assert hook.bad_signatures == 0
            everything = b"\n".join(hook.raw) + gw.logs().encode() + json.dumps(gw.audit()).encode()
            for secret in [HOOK_SECRET, *USERS.values(), *gw.handed_out, *wrong]:
                assert secret.encode() not in everything
            assert all(p["node"] == "localhost" for p in hook.posts)


def _old_line(ts: float, n: int) -> str:
    return json.dumps({"id": n, "ts": ts, "kind": "auth", "result": "ok", "detail": {}}) + "\n"


def test_retention_prunes_store_and_old_segments_and_export_writes_json_lines(
    mail: PrivateDovecot, tmp_path: Path
) -> None:
    with running_gateway(
        mail,
        tmp_path / "gw",
        users=USERS,
        replace={"retention_days: 400": "retention_days: 400\n  prune_interval_seconds: 1"},
    ) as gw:
        now = time.time()
        # Records just outside and just inside retention, written as another node would.
        store_url = str(gw.dir / "roamgate.db")

        async def seed() -> None:
            store = await open_store(store_url)
            try:
                for ts, user in ((now - 401 * DAY, "old"), (now - 399 * DAY, "young")):
                    await store.append_audit(
                        AuditRecord(ts=ts, kind="auth", result="ok", user_name=user)
                    )
            finally:
                await store.close()

        asyncio.run(seed())
        old_segment = gw.dir / "audit.jsonl.2025-01-01"
        young_segment = gw.dir / "audit.jsonl.2025-01-02"
        old_segment.write_text(_old_line(now - 402 * DAY, 1) + _old_line(now - 401 * DAY, 2))
        young_segment.write_text(_old_line(now - 402 * DAY, 3) + _old_line(now - 399 * DAY, 4))
        pruned = _wait_audit(gw, lambda e: e["kind"] == "audit_pruned")
        detail = pruned["detail"]
        assert isinstance(detail, dict) and detail["records"] == 1, detail
        _wait_audit(gw, lambda e: not old_segment.exists())
        assert young_segment.exists()  # its newest line is younger than retention

        client = gw.login("bob")
        client.logout()
        out = tmp_path / "export.jsonl"
        r = gw.cli("audit", "export", "--since", "2000-01-01", "--output", str(out))
        assert r.returncode == 0, r.stderr
        exported = [json.loads(line) for line in out.read_text().splitlines()]
        assert [e["user"] for e in exported][:1] == ["young"]  # oldest first; "old" is gone
        assert "old" not in {e["user"] for e in exported}
        assert [(e["ts"], e["id"]) for e in exported] == sorted(
            (e["ts"], e["id"]) for e in exported
        )
        # Same fields and values as the JSON-lines file, record for record.
        by_id = {e["id"]: e for e in gw.audit()}
        live = [e for e in exported if e["id"] in by_id]
        assert live and all(e == by_id[e["id"]] for e in live)
        assert (out.stat().st_mode & 0o777) == 0o600

        r = gw.cli("audit", "export", "--user", "bob", "--since", "1h", "--output", "-")
        assert r.returncode == 0, r.stderr
        bob = [json.loads(line) for line in r.stdout.splitlines()]
        assert bob and {e["user"] for e in bob} == {"bob"}
        assert {"auth", "session_open"} <= {e["kind"] for e in bob}
        r = gw.cli("audit", "export", "--since", "2026-13-01")
        assert r.returncode == 1 and "cannot read the time" in r.stderr
        r = gw.cli("audit", "--user", "bob", "--json")  # the search is still there
        assert r.returncode == 0 and r.stdout.strip()


def _wait_audit(gw: Gateway, match: Callable[[dict[str, object]], bool]) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [e for e in gw.audit() if match(e)]
        if found:
            return found[-1]
        time.sleep(0.1)
    pytest.fail(f"no matching audit event; log tail:\n{gw.logs()[-3000:]}")
