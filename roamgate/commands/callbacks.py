"""`roamgate callback register|list|remove`: a user's callback registrations (admin side)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from roamgate.callback.service import CallbackService, RegistrationError
from roamgate.commands.common import CliError, actor, fmt_time, print_json, require_user
from roamgate.config import CallbackSettings
from roamgate.runtime import Runtime


def _service(rt: Runtime) -> CallbackService:
    # Registrations can be made before callback: is configured (nothing calls them yet).
    return rt.callbacks or CallbackService(
        CallbackSettings(), rt.store, rt.box, rt.auditor, node=rt.config.hostname, clock=rt.clock
    )


async def register(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    if args.key_out and args.channel != "dialback":
        raise CliError("--key-out is for --channel dialback (its device key)")
    key_path = Path(args.key_out) if args.key_out else None
    if key_path is not None and key_path.exists():
        raise CliError(f"{key_path} exists already; choose a new file for the device key")
    try:
        done = await _service(rt).register(user, args.channel, args.address, actor=actor())
    except RegistrationError as exc:
        raise CliError(str(exc)) from None
    rec = done.record
    print(f"user {user.name}: callback {rec.id} registered ({rec.channel} {rec.address})")
    if done.device_key is not None:
        if key_path is not None:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(done.device_key + "\n")
            print(f"device key written to {key_path} (0600): copy it to the device, then delete it")
        else:
            print("device key (shown once; give it to roamgate-connect --callback-key-file):")
            print(done.device_key)
    return 0


async def list_callbacks(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    policy = await rt.store.get_callback_policy(user.id)
    default = rt.config.callback.default_policy if rt.config.callback else "never"
    rows = [
        {
            "id": r.id,
            "channel": r.channel,
            "address": r.address,
            "created": fmt_time(r.created_at),
        }
        for r in await rt.store.list_callbacks(user.id)
    ]
    if args.json:
        print_json({"user": user.name, "policy": policy or default, "callbacks": rows})
        return 0
    print(f"user {user.name}: callback policy {policy or default + ' (default)'}")
    if not rows:
        print(f"no callbacks registered: roamgate callback register {user.name} --channel ...")
    for row in rows:
        print(f"{row['id']!s:>5}  {row['channel']!s:<9} {row['address']!s:<30} {row['created']}")
    return 0


async def remove(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    if not await _service(rt).remove(user, args.id, actor=actor()):
        raise CliError(f"{user.name} has no callback {args.id} (see 'roamgate callback list')")
    print(f"user {user.name}: callback {args.id} removed")
    return 0
