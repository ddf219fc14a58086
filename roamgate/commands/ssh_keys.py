"""`roamgate user key add|list|remove`: public keys that stand in for the password at the SSH door."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import asyncssh

from roamgate.commands.common import CliError, actor, fmt_time, print_json, require_user
from roamgate.runtime import Runtime
from roamgate.store.base import DuplicateError

# An authorized_keys line is short; anything longer is not a public key.
_MAX_KEY_TEXT = 16 * 1024


def _read_key_text(source: str) -> str:
    try:
        if source == "-":
            text = sys.stdin.read(_MAX_KEY_TEXT + 1)
        else:
            path = Path(source)
            with path.open(encoding="utf-8") as f:
                text = f.read(_MAX_KEY_TEXT + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(
            f"cannot read the key {source}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if len(text) > _MAX_KEY_TEXT:
        raise CliError(f"{source}: too long for a public key")
    return text


def parse_public_key(text: str, source: str) -> tuple[asyncssh.SSHKey, str]:
    """The key and its comment from one OpenSSH public key line (as in id_ed25519.pub)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise CliError(f"{source}: expected one public key line, found {len(lines)}")
    try:
        key = asyncssh.import_public_key(lines[0])
    except (asyncssh.KeyImportError, ValueError):
        # A private key given by mistake must not be echoed back or kept.
        raise CliError(f"{source}: not an OpenSSH public key (give the .pub file)") from None
    comment = key.get_comment() or ""
    return key, comment


async def add(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    key, comment = parse_public_key(_read_key_text(args.key_file), args.key_file)
    if args.comment:
        comment = args.comment
    fingerprint = key.get_fingerprint("sha256")
    line = key.export_public_key("openssh").decode("ascii").split()
    public = " ".join(line[:2])  # algorithm and base64; the comment is kept apart
    try:
        await rt.store.add_ssh_key(user.id, fingerprint, public, comment, rt.clock())
    except DuplicateError:
        raise CliError(f"{user.name} has the key {fingerprint} already") from None
    await rt.auditor.record(
        "ssh_key_add",
        "ok",
        user=user.name,
        actor=actor(),
        detail={"fingerprint": fingerprint, "algorithm": key.get_algorithm()},
    )
    print(f"key {fingerprint} ({key.get_algorithm()}) added for {user.name}")
    print("it replaces the password at the SSH door; the one-time code is still asked")
    return 0


async def list_keys(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    keys = await rt.store.list_ssh_keys(user.id)
    if args.json:
        for k in keys:
            print_json(
                {
                    "user": user.name,
                    "fingerprint": k.fingerprint,
                    "public_key": k.public_key,
                    "comment": k.comment,
                    "created_at": k.created_at,
                }
            )
        return 0
    if not keys:
        print(f"{user.name} has no SSH keys")
    for k in keys:
        print(
            f"{k.fingerprint}  {k.public_key.split()[0]:<20} {fmt_time(k.created_at)}  {k.comment}"
        )
    return 0


async def remove(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    if not await rt.store.remove_ssh_key(user.id, args.fingerprint):
        raise CliError(f"{user.name} has no key {args.fingerprint} (see 'roamgate user key list')")
    await rt.auditor.record(
        "ssh_key_remove",
        "ok",
        user=user.name,
        actor=actor(),
        detail={"fingerprint": args.fingerprint},
    )
    print(f"key {args.fingerprint} removed from {user.name}")
    return 0
