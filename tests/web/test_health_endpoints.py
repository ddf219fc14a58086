"""/healthz and /metrics in-process: a check storm costs one probe, /metrics is default deny."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from roamgate.config import Listener
from roamgate.demo.dovecot import free_port
from roamgate.store import open_store
from roamgate.web.app import WebDoor, create_app
from roamgate.web.health import PROBE, HealthProbe
from tests.web.conftest import WebUnderTest


async def test_a_health_check_storm_runs_one_probe(web_app: WebUnderTest) -> None:
    # The template's upstream is 127.0.0.1:1 (nothing listens): the store is fine, IMAP is not.
    # An app of its own, to read its probe counter.
    app = create_app(web_app.rt)
    # A long cache period, so that a loaded machine cannot stretch the storm past it.
    app[PROBE].cache_seconds = 120
    port = free_port()
    door = WebDoor(web_app.rt, Listener(port=port), app)
    await door.start()
    ctx = ssl.create_default_context(cafile=str(web_app.ca_file))
    try:
        async with aiohttp.ClientSession(
            f"https://127.0.0.1:{port}", connector=aiohttp.TCPConnector(ssl=ctx, limit=0)
        ) as client:

            async def check() -> tuple[int, dict[str, str]]:
                async with client.get("/healthz") as r:
                    return r.status, await r.json()

            answers = await asyncio.gather(*(check() for _ in range(40)))
    finally:
        await door.close()

        async def check() -> tuple[int, dict[str, str]]:
            async with client.get("/healthz") as r:
                return r.status, await r.json()

    assert {status for status, _ in answers} == {503}
    assert all(
        body == {"status": "fail", "store": "ok", "upstream_imap": "fail"} for _, body in answers
    )
    # 40 checks within the cache period: one probe of the upstream, not 40.
    assert app[PROBE].probes == 1


async def test_healthz_needs_no_login_and_says_nothing_internal(web_app: WebUnderTest) -> None:
    async with web_app.client() as client, client.get("/healthz") as r:
        text = await r.text()
        assert r.status == 503
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.headers["Cache-Control"] == "no-store"
    # No host, port or error text of the upstream in the answer.
    for leak in ("127.0.0.1", "refused", "Errno", ":1"):
        assert leak not in text


async def test_metrics_only_for_allowed_addresses(web_app: WebUnderTest) -> None:
    async with web_app.client() as client, client.get("/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(await r.text())}
    assert {
        "roamgate_logins",
        "roamgate_active_sessions",
        "roamgate_relayed_bytes",
        "roamgate_callback_outcomes",
        "roamgate_lockouts",
    } <= names
    # From 127.0.0.2 (not in web.metrics_allow): refused; /healthz stays open to it.
    ctx = ssl.create_default_context(cafile=str(web_app.ca_file))
    connector = aiohttp.TCPConnector(ssl=ctx, local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(web_app.base, connector=connector) as other:
        async with other.get("/metrics") as r:
            assert r.status == 403
            assert "roamgate_" not in await r.text()
        async with other.get("/healthz") as r:
            assert r.status == 503


async def test_an_unusable_store_is_a_fail_not_a_500(web_app: WebUnderTest, tmp_path: Path) -> None:
    # A real store whose connection is gone (as when the database goes away under the process).
    store = await open_store(str(tmp_path / "other.db"), create=True)
    await store.close()
    probe = HealthProbe(dataclasses.replace(web_app.rt, store=store))
    health = await probe.health()
    assert health.body() == {"status": "fail", "store": "fail", "upstream_imap": "fail"}
    assert not health.ok
