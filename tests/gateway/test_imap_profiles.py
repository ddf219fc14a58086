"""Link profiles through the TLS door: chosen by `user#profile`, by ID, or the user's own.

A gateway of its own (bob's profile changes here) in front of the package's Dovecot, driven by
imaplib; what the session got is read from the audit trail's session_open record.
"""

from __future__ import annotations

import imaplib
import time
from collections.abc import Iterator

import pytest

from roamgate.demo.dovecot import PrivateDovecot
from tests.gateway.conftest import PASSWORDS, Gateway, running_gateway


@pytest.fixture(scope="module")
def gw(dovecot: PrivateDovecot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    d = tmp_path_factory.mktemp("profiles") / "gw"
    with running_gateway(dovecot, d, users={"bob": PASSWORDS["bob"]}) as gateway:
        yield gateway


def _opens(gw: Gateway) -> list[dict[str, object]]:
    return [e for e in gw.audit() if e["kind"] == "session_open"]


def _next_open(gw: Gateway, before: int) -> dict[str, object]:
    """The session_open written after `before` others (the door writes it beside the relay)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        opens = _opens(gw)
        if len(opens) > before:
            assert len(opens) == before + 1, opens
            return opens[-1]
        time.sleep(0.05)
    pytest.fail("no session_open in the audit trail")


def _session(gw: Gateway, login: str, *, id_args: str | None = None) -> dict[str, object]:
    """Log in as `login` (bob's password and next code), SELECT INBOX, log out; session_open."""
    before = len(_opens(gw))
    client = gw.imaps()
    try:
        if id_args is not None:
            assert client.xatom("ID", id_args)[0] == "OK"
        assert client.login(login, PASSWORDS["bob"] + gw.code("bob"))[0] == "OK"
        status, data = client.select("INBOX")
        assert status == "OK" and int(data[0] or b"0") > 0, data  # upstream logged in as bob
        opened = _next_open(gw, before)
    finally:
        client.logout()
    assert opened["user"] == "bob"
    detail = opened["detail"]
    assert isinstance(detail, dict)
    return detail


def _set_profile(gw: Gateway, profile: str) -> None:
    r = gw.cli("user", "set", "bob", "--profile", profile)
    assert r.returncode == 0, r.stderr


def test_the_users_stored_profile_is_the_default(gw: Gateway) -> None:
    assert _session(gw, "bob")["profile"] == "lan"
    _set_profile(gw, "phs")
    detail = _session(gw, "bob")
    assert (detail["profile"], detail["profile_source"]) == ("phs", "user")


def test_a_login_suffix_picks_the_profile_and_is_stripped(gw: Gateway) -> None:
    detail = _session(gw, "bob#isdn")
    assert (detail["profile"], detail["profile_source"]) == ("isdn", "login")
    ok = [e for e in gw.audit() if e["kind"] == "auth" and e["result"] == "ok"]
    assert ok[-1]["user"] == "bob"  # the authenticator (and the upstream) saw the bare name
    assert all(e.get("user") != "bob#isdn" for e in gw.audit())


def test_an_id_field_picks_the_profile_below_the_suffix(gw: Gateway) -> None:
    _set_profile(gw, "phs")
    detail = _session(gw, "bob", id_args='("name" "imaplib" "x-roamgate-profile" "pda")')
    assert (detail["profile"], detail["profile_source"]) == ("pda", "id")
    detail = _session(gw, "bob#isdn", id_args='("x-roamgate-profile" "pda")')
    assert (detail["profile"], detail["profile_source"]) == ("isdn", "login")
    # An ID naming no profile is passed over: the user's own applies.
    detail = _session(gw, "bob", id_args='("x-roamgate-profile" "nosuch")')
    assert (detail["profile"], detail["profile_source"]) == ("phs", "user")


def test_an_unknown_suffix_is_refused_and_audited(gw: Gateway) -> None:
    _set_profile(gw, "phs")
    before = len(_opens(gw))
    client = gw.imaps()
    try:
        code = gw.code("bob")
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login("bob#nosuch", PASSWORDS["bob"] + code)
    finally:
        client.shutdown()
    fails = [e for e in gw.audit() if e["kind"] == "auth" and e["result"] == "fail"]
    assert (fails[-1]["user"], fails[-1]["reason"], fails[-1]["detail"]) == (
        "bob",
        "unknown_profile",
        {"profile": "nosuch"},
    )
    assert len(_opens(gw)) == before
    # Refused before any factor was checked: the code was not used up, and it is the code
    # (not the travel window of the earlier logins) that lets the next login in.
    gw.counters["bob"] -= 1
    assert _session(gw, "bob")["profile"] == "phs"
    ok = [e for e in gw.audit() if e["kind"] == "auth" and e["result"] == "ok"]
    assert ok[-1]["factor"] == "password+hotp", ok[-1]


def test_a_device_of_its_own_gets_its_profile_below_suffix_and_id(gw: Gateway) -> None:
    _set_profile(gw, "phs")
    device = _session(gw, "bob")["device"]  # how the gateway names this client: addr:127.0.0.1
    assert device == "addr:127.0.0.1"
    r = gw.cli("user", "set", "bob", "--device", device, "--profile", "pda")
    assert r.returncode == 0 and "device addr:127.0.0.1: profile pda" in r.stdout, r.stderr
    detail = _session(gw, "bob")
    assert (detail["profile"], detail["profile_source"]) == ("pda", "device")
    detail = _session(gw, "bob#isdn")
    assert (detail["profile"], detail["profile_source"]) == ("isdn", "login")
    detail = _session(gw, "bob", id_args='("x-roamgate-profile" "lan")')
    assert (detail["profile"], detail["profile_source"]) == ("lan", "id")
    bad = gw.cli("user", "set", "bob", "--device", device, "--profile", "nosuch")
    assert bad.returncode != 0 and "no such profile" in bad.stderr
    assert gw.cli("user", "set", "bob", "--device", device, "--profile", "user").returncode == 0
    detail = _session(gw, "bob")
    assert (detail["profile"], detail["profile_source"]) == ("phs", "user")
    changes = [e for e in gw.audit() if e["kind"] == "user_set"]
    assert changes[-1]["detail"] == {"device": device, "profile": None}
