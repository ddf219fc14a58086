"""Which link profile a session gets: a login suffix, then the client's ID, then the user's own.

Pure functions: the IMAP door gives them the login name, the client's ID pairs and the user's
stored profile, and gets back the bare user name and the chosen profile.

1. `alice#phs`: the part after the LAST separator is a profile if it names a known profile;
   the rest is the user name. Any other suffix makes the login fail (`unknown_profile`).
2. Else the ID field `x-roamgate-profile` (sent before login), if it names a known profile.
3. Else the user's stored profile; a stored name the config no longer has falls back to `lan`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from roamgate.profiles import DEFAULT_PROFILE

ID_PROFILE_KEY = "x-roamgate-profile"

ProfileSource = Literal["login", "id", "device", "user", "default"]


@dataclass(frozen=True)
class LoginName:
    """An IMAP login name taken apart: the user, and the profile suffix if it had one."""

    user: str
    profile: str | None = None  # a suffix naming a known profile
    unknown_suffix: str | None = None  # a suffix naming no known profile: refuse the login


@dataclass(frozen=True)
class ProfileChoice:
    """The profile a session gets, where the choice came from, and names passed over."""

    name: str
    source: ProfileSource
    ignored: tuple[str, ...] = ()  # asked for (ID or stored) but not configured


def split_login(login: str, separator: str, known: Collection[str]) -> LoginName:
    """`alice#phs` -> user `alice`, profile `phs`; a name without the separator is a user name."""
    user, sep, suffix = login.rpartition(separator)
    if not sep:
        return LoginName(login)
    if suffix in known:
        return LoginName(user, profile=suffix)
    return LoginName(user, unknown_suffix=suffix)


def id_profile(client_id: Sequence[tuple[str, str | None]]) -> str | None:
    """The value of the client's first `x-roamgate-profile` ID field (the key in any case)."""
    for key, value in client_id:
        if key.lower() == ID_PROFILE_KEY:
            return value
    return None


def choose_profile(
    *,
    login_profile: str | None,
    client_id: Sequence[tuple[str, str | None]],
    stored: str,
    known: Collection[str],
    device: str | None = None,
) -> ProfileChoice:
    """The profile by precedence: login suffix, ID field, the device's own, the user's."""
    ignored: list[str] = []
    if login_profile is not None and login_profile in known:
        return ProfileChoice(login_profile, "login")
    asked = id_profile(client_id)
    if asked is not None:
        if asked in known:
            return ProfileChoice(asked, "id")
        ignored.append(asked)
    if device is not None:
        if device in known:
            return ProfileChoice(device, "device", tuple(ignored))
        ignored.append(device)
    if stored in known:
        return ProfileChoice(stored, "user", tuple(ignored))
    ignored.append(stored)
    return ProfileChoice(DEFAULT_PROFILE, "default", tuple(ignored))
