"""The web app in-process on a real HTTPS listener, driven by an aiohttp client over TLS."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from roamgate.auth.passwords import hash_password
from roamgate.config import Listener, load_config
from roamgate.demo.dovecot import free_port
from roamgate.runtime import Runtime, open_runtime
from roamgate.web.app import WebDoor, create_app
from tests.conftest import FakeClock

PASSWORD = "correct horse battery"
ADMIN = "root-admin"


@dataclass
class WebUnderTest:
    rt: Runtime
    base: str
    ca_file: Path
    clock: FakeClock

    def client(self) -> aiohttp.ClientSession:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        # unsafe=True: the cookie jar keeps cookies of an IP address host (127.0.0.1).
        return aiohttp.ClientSession(
            self.base,
            connector=aiohttp.TCPConnector(ssl=ctx),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )


def configure(d: Path, extra: str = "") -> Path:
    config = d / "roamgate.yaml"
    text = config.read_text()
    text = text.replace("password_verifier: upstream", "password_verifier: local")
    text = text.replace("ip_threshold: 20", "ip_threshold: 5")
    text += f'\nweb:\n  admins: ["{ADMIN}"]\n  failure_delay_ms: 0\n{extra}'
    config.write_text(text)
    return config


@pytest.fixture
async def web_app(gateway_dir: Path, clock: FakeClock) -> AsyncIterator[WebUnderTest]:
    import time

    clock.now = time.time()
    cfg = load_config(configure(gateway_dir))
    async with open_runtime(cfg, clock=clock) as rt:
        for name in ("alice", ADMIN):
            await rt.store.add_user(name, clock(), password_hash=hash_password(PASSWORD))
        port = free_port()
        door = WebDoor(rt, Listener(port=port), create_app(rt))
        await door.start()
        try:
            yield WebUnderTest(rt, f"https://127.0.0.1:{port}", cfg.tls.ca_file, clock)
        finally:
            await door.close()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m is not None, html
    return m.group(1)
