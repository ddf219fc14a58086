"""The directory verifier against a real slapd, in process: every decision and every refusal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roamgate.directory.client import DirectoryError
from roamgate.directory.service import Directory
from roamgate.directory.verifier import LdapVerifier
from roamgate.login.verifiers import Outcome, refusal_reason
from roamgate.store.base import UserRecord
from tests.ldap.conftest import MEMBERS_GROUP, PASSWORDS, TRAVELLERS_GROUP, ldap_settings
from tests.ldap.slapd import PEOPLE, PrivateSlapd

pytestmark = pytest.mark.peer


def _user(name: str) -> UserRecord:
    return UserRecord(1, name, None, True, "lan", None, 0.0, 0.0)


async def _verify(directory: Directory, name: str, password: str) -> tuple[Outcome, str | None]:
    outcome = await LdapVerifier(directory).verify(_user(name), password)
    return outcome, refusal_reason.get()


async def test_members_direct_and_nested_log_in_with_their_directory_password(
    slapd: PrivateSlapd,
) -> None:
    directory = Directory(ldap_settings(slapd))
    try:
        assert await _verify(directory, "alice", PASSWORDS["alice"]) == (Outcome.ACCEPTED, None)
        # bob is in travellers, which is a member of roamgate-users.
        assert await _verify(directory, "bob", PASSWORDS["bob"]) == (Outcome.ACCEPTED, None)
        bob = await directory.lookup("bob")
        assert bob is not None and {MEMBERS_GROUP.lower(), TRAVELLERS_GROUP.lower()} <= bob.groups
        assert directory.profile_for(bob) == "phs"
    finally:
        directory.close()


@pytest.mark.parametrize("membership", ["memberof", "search"])
async def test_nested_membership_is_found_by_memberof_and_by_group_search(
    slapd: PrivateSlapd, membership: str
) -> None:
    directory = Directory(ldap_settings(slapd, membership=membership))
    try:
        assert await _verify(directory, "bob", PASSWORDS["bob"]) == (Outcome.ACCEPTED, None)
        assert await _verify(directory, "carol", PASSWORDS["carol"]) == (
            Outcome.REJECTED,
            "not_in_group",
        )
        names = {e.name: directory.allowed(e) for e in await directory.all_users()}
        assert names == {"alice": True, "bob": True, "carol": False, "dave": True, "erin": True}
    finally:
        directory.close()


async def test_refusals_name_their_reason(slapd: PrivateSlapd) -> None:
    directory = Directory(ldap_settings(slapd))
    try:
        assert await _verify(directory, "alice", "not her password") == (
            Outcome.REJECTED,
            "bad_password",
        )
        assert await _verify(directory, "carol", PASSWORDS["carol"]) == (
            Outcome.REJECTED,
            "not_in_group",
        )
        assert await _verify(directory, "dave", PASSWORDS["dave"]) == (
            Outcome.REJECTED,
            "disabled_in_directory",
        )
        assert await _verify(directory, "nobody", "x") == (Outcome.REJECTED, "not_in_directory")
    finally:
        directory.close()


async def test_an_empty_password_is_refused_before_any_bind(slapd: PrivateSlapd) -> None:
    directory = Directory(ldap_settings(slapd))
    alice_dn = f"uid=alice,{PEOPLE}"
    try:
        before = slapd.binds(alice_dn)
        assert await _verify(directory, "alice", "") == (Outcome.REJECTED, "bad_password")
        check = await directory.check_login("alice", "")
        assert not check.accepted and check.reason == "bad_password"
        # A real password makes a bind appear in the server's log, so its absence above counts.
        assert await _verify(directory, "alice", PASSWORDS["alice"]) == (Outcome.ACCEPTED, None)
        await asyncio.sleep(0.2)
        assert slapd.binds(alice_dn) == before + 1
    finally:
        directory.close()


@pytest.mark.parametrize("name", ["*)(uid=*", "*", "al*", "alice)(|(uid=*", "alice\\2a"])
async def test_filter_syntax_in_the_user_name_finds_nobody(slapd: PrivateSlapd, name: str) -> None:
    directory = Directory(ldap_settings(slapd))
    try:
        # alice's password: an injection that matched her entry would be let in.
        assert await _verify(directory, name, PASSWORDS["alice"]) == (
            Outcome.REJECTED,
            "not_in_directory",
        )
    finally:
        directory.close()


async def test_starttls_works_and_an_untrusted_certificate_is_refused(
    slapd: PrivateSlapd, tmp_path: Path
) -> None:
    directory = Directory(ldap_settings(slapd, url=slapd.ldap_url, start_tls=True))
    try:
        assert await _verify(directory, "alice", PASSWORDS["alice"]) == (Outcome.ACCEPTED, None)
    finally:
        directory.close()
    from roamgate.pki import cert_pem, make_ca

    other = tmp_path / "other-ca.pem"
    other.write_bytes(cert_pem(make_ca("someone else's CA")[1]))
    for url, start_tls in ((slapd.ldaps_url, False), (slapd.ldap_url, True)):
        directory = Directory(ldap_settings(slapd, url=url, start_tls=start_tls, ca_file=other))
        try:
            with pytest.raises(DirectoryError) as err:
                await directory.probe()
            assert err.value.cause == "tls", err.value
            # The login fails closed: the password is never sent to an unverified server.
            assert await _verify(directory, "alice", PASSWORDS["alice"]) == (
                Outcome.UNAVAILABLE,
                "directory_tls",
            )
        finally:
            directory.close()


async def test_the_group_decision_is_cached_only_when_asked_and_never_the_password(
    slapd: PrivateSlapd,
) -> None:
    now = [1000.0]
    directory = Directory(ldap_settings(slapd, group_cache_seconds=60), clock=lambda: now[0])
    try:
        assert await _verify(directory, "alice", PASSWORDS["alice"]) == (Outcome.ACCEPTED, None)
        assert "alice" in directory._cache
        # The password is checked by the directory every time.
        assert await _verify(directory, "alice", "wrong") == (Outcome.REJECTED, "bad_password")
        now[0] += 61
        assert directory._cached_groups("alice") is None
    finally:
        directory.close()
    uncached = Directory(ldap_settings(slapd))
    try:
        await _verify(uncached, "alice", PASSWORDS["alice"])
        assert uncached._cache == {}
    finally:
        uncached.close()


async def test_attributes_come_from_the_directory(slapd: PrivateSlapd) -> None:
    directory = Directory(ldap_settings(slapd))
    try:
        alice = await directory.lookup("alice")
        assert alice is not None
        assert (alice.mail, alice.callback_number) == ("alice@example.test", "+1 555 0100")
        assert alice.certificate == slapd.user_cert_der
        assert await directory.probe() == []
    finally:
        directory.close()


async def test_a_name_two_entries_carry_is_nobody(slapd: PrivateSlapd) -> None:
    # Last in the module: it adds entries the population tests above do not expect.
    slapd.add(
        "\n".join(
            f"dn: {rdn},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: twin\ncn: Twin\nsn: Twin\n"
            "userPassword: twin pw 1\n"
            for rdn in ("uid=twin", "cn=Twin Two")
        )
    )
    directory = Directory(ldap_settings(slapd))
    try:
        assert await _verify(directory, "twin", "twin pw 1") == (
            Outcome.REJECTED,
            "not_in_directory",
        )
    finally:
        directory.close()


async def test_a_port_that_accepts_and_never_answers_fails_closed_in_time(
    slapd: PrivateSlapd,
) -> None:
    """A balancer whose directory is down accepts TCP and says nothing: libldap alone spun in
    the TLS handshake for good; the gateway's bounded handshake fails the login in time."""
    import socket
    import threading
    import time

    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        directory = Directory(
            ldap_settings(slapd, url=f"ldaps://127.0.0.1:{port}", timeout_seconds=1)
        )
        try:
            for _ in range(3):  # more than once: nothing is left stuck after the first
                began = time.monotonic()
                assert await _verify(directory, "alice", PASSWORDS["alice"]) == (
                    Outcome.UNAVAILABLE,
                    "directory_unreachable",
                )
                assert time.monotonic() - began < 3
        finally:
            directory.close()
        deadline = time.monotonic() + 5
        while any(t.name == "ldap" for t in threading.enumerate()):
            assert time.monotonic() < deadline, "an ldap thread is still running"
            await asyncio.sleep(0.1)
