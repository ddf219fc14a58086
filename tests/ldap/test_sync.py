"""`roamgate user sync` in process against slapd: attributes kept current, and its safety catch."""

from __future__ import annotations

from pathlib import Path

import pytest

from roamgate.config import load_config
from roamgate.directory.sync import sync_users
from roamgate.runtime import open_runtime
from tests.conftest import FakeClock
from tests.ldap.conftest import TRAVELLERS_GROUP, ldap_yaml
from tests.ldap.slapd import GROUPS, PEOPLE, SERVICE_PW, PrivateSlapd

pytestmark = pytest.mark.peer


def _config(gateway_dir: Path, slapd: PrivateSlapd, extra: str = "") -> Path:
    secret = gateway_dir / "ldap.pw"
    secret.write_text(SERVICE_PW + "\n")
    config = gateway_dir / "roamgate.yaml"
    config.write_text(config.read_text() + ldap_yaml(slapd, secret) + extra)
    return config


async def test_attributes_and_group_mappings_follow_the_directory(
    slapd: PrivateSlapd, gateway_dir: Path, clock: FakeClock
) -> None:
    extra = f"  callback_policies:\n    {TRAVELLERS_GROUP}: always\n"
    cfg = load_config(_config(gateway_dir, slapd, extra))
    async with open_runtime(cfg, clock=clock) as rt:
        await rt.store.add_user("alice", clock(), email="old@example.test", profile="isdn")
        assert rt.directory is not None
        report = await sync_users(rt, rt.directory)
        assert sorted(report.created) == ["bob", "erin"]
        assert report.updated == {"alice": ["email", "callback_number"]}  # no mapping: isdn stays
        alice = await rt.store.get_user("alice")
        bob = await rt.store.get_user("bob")
        assert alice is not None and alice.email == "alice@example.test"
        assert bob is not None and bob.profile == "phs"
        assert await rt.store.get_callback_policy(bob.id) == "always"
        [number] = await rt.store.list_callbacks(alice.id)
        assert (number.channel, number.address) == ("webhook", "+15550100")
        # A new number in the directory replaces the old registration; a second round with
        # nothing changed changes nothing.
        slapd.modify(
            f"dn: uid=alice,{PEOPLE}\nchangetype: modify\nreplace: mobile\nmobile: +1 555 0199\n"
        )
        report = await sync_users(rt, rt.directory)
        assert report.updated == {"alice": ["callback_number"]}
        assert [c.address for c in await rt.store.list_callbacks(alice.id)] == ["+15550199"]
        report = await sync_users(rt, rt.directory)
        assert (report.created, report.updated, report.disabled) == ([], {}, {})
        kinds = [a.kind for a in await rt.store.query_audit(user_name="alice")]
        assert "callback_remove" in kinds and "callback_register" in kinds


async def test_a_directory_that_names_no_member_disables_nobody(
    slapd: PrivateSlapd, gateway_dir: Path, clock: FakeClock
) -> None:
    config = _config(gateway_dir, slapd)
    config.write_text(config.read_text().replace("cn=roamgate-users", "cn=no-such-group"))
    cfg = load_config(config)
    async with open_runtime(cfg, clock=clock) as rt:
        await rt.store.add_user("alice", clock())
        assert rt.directory is not None
        assert await rt.directory.probe() == [f"cn=no-such-group,{GROUPS}"]
        report = await sync_users(rt, rt.directory)
        assert report.members == 0 and report.disabled == {}
        assert report.warnings and "nobody was disabled" in report.warnings[0]
        alice = await rt.store.get_user("alice")
        assert alice is not None and alice.enabled


async def test_more_leavers_than_the_cap_disable_nobody_until_forced(
    slapd: PrivateSlapd, gateway_dir: Path, clock: FakeClock
) -> None:
    cfg = load_config(_config(gateway_dir, slapd, "  sync_max_disable: 1\n"))
    async with open_runtime(cfg, clock=clock) as rt:
        for name in ("x1", "x2"):  # gateway users the directory does not know
            await rt.store.add_user(name, clock())
        assert rt.directory is not None
        report = await sync_users(rt, rt.directory)
        assert report.disabled == {} and "nobody was disabled" in report.warnings[0]
        assert "sync_max_disable (1)" in report.warnings[0] and "--force" in report.warnings[0]
        assert sorted(report.created) == ["alice", "bob", "erin"]  # members are still made
        for name in ("x1", "x2"):
            user = await rt.store.get_user(name)
            assert user is not None and user.enabled
        [stopped] = [
            a for a in await rt.store.query_audit(kind="directory_sync") if a.result == "fail"
        ]
        assert stopped.reason == "too_many_disables" and stopped.detail["would_disable"] == 2
        report = await sync_users(rt, rt.directory, force=True)
        assert report.disabled == {"x1": "not_in_directory", "x2": "not_in_directory"}
