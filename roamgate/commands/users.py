"""`roamgate user add|list|set|disable|enable|remove|unlock|passwd`."""

from __future__ import annotations

import argparse
import getpass
import sys

from roamgate import accounts
from roamgate.auth.lockout import is_locked
from roamgate.auth.passwords import hash_password
from roamgate.commands.common import (
    CliError,
    actor,
    fmt_time,
    print_json,
    require_user,
)
from roamgate.runtime import Runtime
from roamgate.store import DuplicateError

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@+")


def _check_name(name: str) -> None:
    # The name travels in IMAP LOGIN, SSH user names and audit lines: keep it plain.
    if not name or len(name) > 128 or not set(name) <= _NAME_OK:
        raise CliError(f"invalid user name {name!r}: use 1-128 letters, digits and . _ - @ + only")


def _check_profile(rt: Runtime, profile: str) -> None:
    known = rt.config.link_profiles()
    if profile not in known:
        raise CliError(
            f"no such profile: {profile} (configured: {', '.join(sorted(known))});"
            " nothing was changed"
        )


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise CliError("the two passwords differ; nothing was changed")
    else:
        raise CliError("give the password on standard input with --password-stdin")
    if len(password) < 8:
        raise CliError("the password is too short (8 characters at least); nothing was changed")
    return password


async def add(rt: Runtime, args: argparse.Namespace) -> int:
    _check_name(args.user)
    _check_profile(rt, args.profile)
    local = rt.config.auth.password_verifier == "local"  # noqa: S105 (a verifier name)
    password_hash = None
    if local or args.password_stdin:
        password_hash = hash_password(_read_password(args))
    try:
        user = await rt.store.add_user(
            args.user,
            rt.clock(),
            email=args.email,
            profile=args.profile,
            password_hash=password_hash,
        )
    except DuplicateError:
        raise CliError(f"user {args.user} exists already") from None
    await rt.auditor.record(
        "user_add", "ok", user=user.name, actor=actor(), detail={"profile": user.profile}
    )
    verifier = rt.config.auth.password_verifier
    how = (
        "a local password"
        if local
        else f"the directory password ({rt.config.ldap.url})"
        if verifier == "ldap" and rt.config.ldap is not None
        else f"the password of the upstream IMAP server {rt.config.upstream.imap.host}"
    )
    print(f"user {user.name} added; first factor: {how}")
    print(f"next: roamgate token enroll {user.name} --type totp")
    return 0


async def set_options(rt: Runtime, args: argparse.Namespace) -> int:
    """`user set USER --profile NAME`: change what a user has; each change is audited."""
    user = await require_user(rt, args.user)
    device = getattr(args, "device", None)
    policy = getattr(args, "callback_policy", None)
    if args.profile is None and policy is None:
        raise CliError("say what to change: --profile NAME and/or --callback-policy POLICY")
    if policy is not None:
        if device:
            raise CliError("--callback-policy is per user, not per --device")
        await rt.store.set_callback_policy(user.id, policy, rt.clock())
        await rt.auditor.record(
            "user_set", "ok", user=user.name, actor=actor(), detail={"callback_policy": policy}
        )
        print(f"user {user.name}: callback policy {policy}")
        if args.profile is None:
            return 0
    if device:
        follow = args.profile == "user"
        if not follow:
            _check_profile(rt, args.profile)
        profile = None if follow else args.profile
        await rt.store.set_device_profile(user.id, device, profile, rt.clock())
        await rt.auditor.record(
            "user_set",
            "ok",
            user=user.name,
            actor=actor(),
            detail={"device": device, "profile": profile},
        )
        shown = f"the user's ({user.profile})" if profile is None else profile
        print(f"user {user.name}, device {device}: profile {shown}")
        return 0
    _check_profile(rt, args.profile)
    await rt.store.set_user_profile(user.name, args.profile, rt.clock())
    await rt.auditor.record(
        "user_set", "ok", user=user.name, actor=actor(), detail={"profile": args.profile}
    )
    print(f"user {user.name}: profile {args.profile} (was {user.profile})")
    return 0


async def passwd(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    await rt.store.set_password_hash(user.name, hash_password(_read_password(args)), rt.clock())
    await rt.auditor.record("user_passwd", "ok", user=user.name, actor=actor())
    print(f"password set for {user.name}")
    return 0


async def list_users(rt: Runtime, args: argparse.Namespace) -> int:
    now = rt.clock()
    rows = []
    for user in await rt.store.list_users():
        tokens = await rt.store.list_tokens(user.id)
        left = await rt.store.count_backup_codes(user.id)
        lock = await rt.store.get_throttle("user", user.name)
        locked = lock is not None and is_locked(lock.locked_until, lock.hard_locked, now)
        lock_text = "no"
        if locked and lock is not None:
            lock_text = "hard" if lock.hard_locked else f"until {fmt_time(lock.locked_until)}"
        rows.append(
            {
                "user": user.name,
                "email": user.email,
                "enabled": user.enabled,
                "profile": user.profile,
                "tokens": len(tokens),
                "backup_codes_left": left,
                "failures": lock.failures if lock else 0,
                "locked": lock_text,
                "created": fmt_time(user.created_at),
            }
        )
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no users yet: roamgate user add NAME")
        return 0
    header = f"{'USER':<20} {'ENABLED':<8} {'PROFILE':<8} {'TOKENS':>6} {'BACKUP':>6}  LOCKED"
    print(header)
    for r in rows:
        print(
            f"{r['user']!s:<20} {'yes' if r['enabled'] else 'no':<8} {r['profile']!s:<8}"
            f" {r['tokens']!s:>6} {r['backup_codes_left']!s:>6}  {r['locked']}"
        )
    return 0


async def set_enabled(rt: Runtime, args: argparse.Namespace, enabled: bool) -> int:
    user = await require_user(rt, args.user)
    await accounts.set_user_enabled(rt, user.name, enabled, actor())
    print(f"user {user.name} {'enabled' if enabled else 'disabled'}")
    return 0


async def remove(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    await rt.store.remove_user(user.name)
    await rt.store.clear_throttle("user", user.name)
    await rt.auditor.record("user_remove", "ok", user=user.name, actor=actor())
    print(f"user {user.name} removed with their tokens and backup codes (the audit trail stays)")
    return 0


async def unlock(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    cleared = await rt.throttle.unlock("user", user.name, actor())
    print(f"{user.name}: {'unlocked, failures reset' if cleared else 'was not locked'}")
    return 0
