"""Splitting `user#profile` and choosing a session's profile by precedence (pure functions)."""

from __future__ import annotations

import pytest

from roamgate.login.profile_choice import (
    LoginName,
    ProfileChoice,
    choose_profile,
    id_profile,
    split_login,
)
from roamgate.profiles import BUILTIN_PROFILES

KNOWN = {*BUILTIN_PROFILES, "hotel-wifi"}


@pytest.mark.parametrize(
    ("login", "expected"),
    [
        ("alice", LoginName("alice")),
        ("alice#phs", LoginName("alice", profile="phs")),
        ("alice@example.com#hotel-wifi", LoginName("alice@example.com", profile="hotel-wifi")),
        # The LAST separator counts: the rest is the user name, whatever it holds.
        ("a#b#isdn", LoginName("a#b", profile="isdn")),
        ("alice#nosuch", LoginName("alice", unknown_suffix="nosuch")),
        ("alice#PHS", LoginName("alice", unknown_suffix="PHS")),  # names are exact
        ("alice#", LoginName("alice", unknown_suffix="")),
        ("#phs", LoginName("", profile="phs")),  # no user: the login fails as unknown_user
        ("", LoginName("")),
    ],
)
def test_split_login(login: str, expected: LoginName) -> None:
    assert split_login(login, "#", KNOWN) == expected


def test_split_login_with_another_separator() -> None:
    assert split_login("alice+pda", "+", KNOWN) == LoginName("alice", profile="pda")
    assert split_login("alice#pda", "+", KNOWN) == LoginName("alice#pda")


def test_id_profile_key_is_case_insensitive_and_the_first_wins() -> None:
    assert (
        id_profile([("name", "mutt"), ("X-RoamGate-Profile", "pda"), ("x-roamgate-profile", "phs")])
        == "pda"
    )
    assert id_profile([("name", "mutt")]) is None
    assert id_profile([("x-roamgate-profile", None)]) is None


def _choose(
    login: str | None, client_id: list[tuple[str, str | None]], stored: str
) -> ProfileChoice:
    return choose_profile(login_profile=login, client_id=client_id, stored=stored, known=KNOWN)


ID_PDA: list[tuple[str, str | None]] = [("x-roamgate-profile", "pda")]


def test_precedence_login_then_id_then_stored() -> None:
    assert _choose("isdn", ID_PDA, "phs") == ProfileChoice("isdn", "login")
    assert _choose(None, ID_PDA, "phs") == ProfileChoice("pda", "id")
    assert _choose(None, [], "phs") == ProfileChoice("phs", "user")
    assert _choose(None, [("name", "Thunderbird")], "lan") == ProfileChoice("lan", "user")


def test_unknown_names_from_id_or_store_fall_through_and_are_reported() -> None:
    nosuch: list[tuple[str, str | None]] = [("x-roamgate-profile", "nosuch")]
    assert _choose(None, nosuch, "phs") == ProfileChoice("phs", "user", ("nosuch",))
    # A profile removed from the config since the user was given it: everything as stored.
    assert _choose(None, [], "retired") == ProfileChoice("lan", "default", ("retired",))
    assert _choose(None, nosuch, "retired") == ProfileChoice(
        "lan", "default", ("nosuch", "retired")
    )
