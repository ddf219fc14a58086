"""`roamgate invite`, `roamgate invites` and `roamgate device list|issue|revoke`."""

from __future__ import annotations

import argparse
from pathlib import Path

from roamgate import accounts, pki
from roamgate.commands.common import CliError, actor, fmt_time, print_json, require_user
from roamgate.devices import DeviceError, issue_device
from roamgate.invites import cancel_invite, create_invite
from roamgate.runtime import Runtime


async def invite(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    if not user.enabled:
        raise CliError(f"user {user.name} is disabled: enable them first")
    hours = args.expires_hours or rt.config.web.invite_hours
    if hours > 30 * 24:
        raise CliError("--expires-hours: at most 720 (30 days)")
    new = await create_invite(rt, user.name, hours, actor())
    if args.json:
        print_json(
            {
                "invite_id": new.record.id,
                "user": user.name,
                "expires": fmt_time(new.record.expires_at),
                "link": new.link,
            }
        )
        return 0
    print(f"one-time enrollment link for {user.name} (until {fmt_time(new.record.expires_at)}):")
    print(new.link)
    print("it works once; give it to the user only (it is not shown again)")
    return 0


async def invites(rt: Runtime, args: argparse.Namespace) -> int:
    if args.cancel:
        if not await cancel_invite(rt, args.cancel, actor()):
            raise CliError(f"no open invite {args.cancel} (see 'roamgate invites --all')")
        print(f"invite {args.cancel} cancelled")
        return 0
    now = rt.clock()
    rows = []
    for inv in await rt.store.list_invites(now, include_ended=args.all):
        state = "open"
        if inv.used_at is not None:
            state = "used"
        elif inv.cancelled_at is not None:
            state = "cancelled"
        elif inv.expires_at <= now:
            state = "expired"
        rows.append(
            {
                "invite_id": inv.id,
                "user": inv.user_name,
                "state": state,
                "created": fmt_time(inv.created_at),
                "expires": fmt_time(inv.expires_at),
                "created_by": inv.created_by,
            }
        )
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no open invites: roamgate invite USER")
        return 0
    for r in rows:
        print(f"{r['invite_id']}  {r['user']:<20} {r['state']:<9} until {r['expires']}")
    return 0


async def device_list(rt: Runtime, args: argparse.Namespace) -> int:
    devices = await rt.store.list_devices(user_name=args.user, include_revoked=args.all)
    rows = [
        {
            "device_id": d.id,
            "user": d.user_name,
            "name": d.name,
            "serial": d.serial,
            "device": f"cert:{d.fingerprint}",
            "created": fmt_time(d.created_at),
            "expires": fmt_time(d.expires_at),
            "revoked": fmt_time(d.revoked_at) if d.revoked_at is not None else None,
        }
        for d in devices
    ]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no device certificates")
        return 0
    for r in rows:
        state = f"revoked {r['revoked']}" if r["revoked"] else f"until {r['expires']}"
        print(f"{r['device_id']}  {r['user']:<16} {r['name']:<20} {state}")
    return 0


async def device_issue(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    out = _free_path(args.out)
    try:
        issued = await issue_device(rt.config, rt.store, user.name, args.name, rt.clock())
    except DeviceError as exc:
        raise CliError(str(exc)) from None
    try:
        pki.write_private(out, issued.p12)
    except OSError as exc:
        await accounts.revoke_device(rt, issued.record.id, actor())
        raise CliError(f"cannot write {out}: {exc.strerror}; the certificate was revoked") from None
    await rt.auditor.record(
        "device_issue",
        "ok",
        user=user.name,
        actor=actor(),
        detail={"device_id": issued.record.id, "serial": issued.record.serial},
    )
    print(f"device {issued.record.id} ({issued.record.name}) for {user.name}: {out}")
    print(f"PKCS#12 passphrase (shown once): {issued.passphrase}")
    return 0


def _free_path(text: str) -> Path:
    out = Path(text)
    if out.exists():
        raise CliError(f"{out} exists already; nothing was made")
    return out


async def device_revoke(rt: Runtime, args: argparse.Namespace) -> int:
    if not await accounts.revoke_device(rt, args.device_id, actor()):
        raise CliError(f"no such unrevoked device: {args.device_id} (see 'roamgate device list')")
    print(f"device {args.device_id} revoked: on the CRL, refused by the TLS doors from now on")
    return 0
