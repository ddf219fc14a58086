"""The admin user page shows what the directory says (entry, groups, S/MIME certificate)."""

from __future__ import annotations

import time
from pathlib import Path

import pyotp
import pytest

from roamgate.auth.passwords import hash_password
from roamgate.config import Listener, load_config
from roamgate.demo.dovecot import free_port
from roamgate.runtime import open_runtime
from roamgate.web.app import WebDoor, create_app
from tests.conftest import FakeClock
from tests.ldap.conftest import ldap_yaml
from tests.ldap.slapd import SERVICE_PW, PrivateSlapd
from tests.web.conftest import ADMIN, PASSWORD, WebUnderTest, configure, csrf_of

pytestmark = pytest.mark.peer


async def test_admin_user_page_shows_the_directory_entry(
    slapd: PrivateSlapd, gateway_dir: Path, clock: FakeClock
) -> None:
    clock.now = time.time()
    secret = gateway_dir / "ldap.pw"
    secret.write_text(SERVICE_PW + "\n")
    cfg = load_config(configure(gateway_dir, ldap_yaml(slapd, secret)))
    async with open_runtime(cfg, clock=clock) as rt:
        admin = await rt.store.add_user(ADMIN, clock(), password_hash=hash_password(PASSWORD))
        await rt.store.add_user("alice", clock())
        await rt.store.add_user("ghost", clock())
        made = await rt.second_factor.enroll(admin, "totp")
        port = free_port()
        door = WebDoor(rt, Listener(port=port), create_app(rt))
        await door.start()
        w = WebUnderTest(rt, f"https://127.0.0.1:{port}", cfg.tls.ca_file, clock)
        try:
            async with w.client() as c:
                page = await (await c.get("/admin/login")).text()
                r = await c.post(
                    "/admin/login",
                    data={
                        "csrf": csrf_of(page),
                        "user": ADMIN,
                        "password": PASSWORD,
                        "code": pyotp.TOTP(made.secret).at(clock()),
                    },
                    allow_redirects=False,
                )
                assert r.status == 303
                page = await (await c.get("/admin/user/alice")).text()
                assert "<h2>Directory</h2>" in page
                for text in (
                    "uid=alice,ou=people,dc=example,dc=test",
                    "+1 555 0100",
                    "CN=Alice Example",
                    "cn=roamgate-users,ou=groups",
                    "allowed",
                ):
                    assert text in page, text  # fmt: skip
                page = await (await c.get("/admin/user/ghost")).text()
                assert "The directory has no entry for ghost." in page
        finally:
            await door.close()
