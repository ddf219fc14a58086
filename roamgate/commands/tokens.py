"""`roamgate token enroll|list|revoke|check|resync` and `roamgate backup-codes`."""

from __future__ import annotations

import argparse
import io
import sys

import segno

from roamgate.auth import backup_codes
from roamgate.commands.common import (
    CliError,
    actor,
    fmt_time,
    print_json,
    require_user,
)
from roamgate.runtime import Runtime
from roamgate.store.base import TokenRecord


def _qr_text(uri: str) -> str:
    buf = io.StringIO()
    segno.make(uri, error="m").terminal(out=buf, compact=True)
    return buf.getvalue()


async def enroll(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    made = await rt.second_factor.enroll(user, args.type, args.label or "")
    await rt.auditor.record(
        "enroll",
        "ok",
        user=user.name,
        actor=actor(),
        factor=made.token.kind,
        detail={"token_id": made.token.id},
    )
    if args.json:
        print_json(
            {
                "user": user.name,
                "token_id": made.token.id,
                "type": made.token.kind,
                "secret": made.secret,
                "uri": made.uri,
            }
        )
        return 0
    print(f"token {made.token.id} ({made.token.kind}) enrolled for {user.name}")
    print("Scan the QR code with an authenticator app, or type the secret in by hand.")
    print("The secret is shown this once: it is stored encrypted and cannot be shown again.")
    print()
    print(f"  secret: {made.secret}")
    print(f"  uri:    {made.uri}")
    print()
    sys.stdout.write(_qr_text(made.uri))
    print()
    print(f"Check it works: roamgate token check {user.name} CODE")
    return 0


def _token_row(t: TokenRecord, user_name: str) -> dict[str, object]:
    return {
        "token_id": t.id,
        "user": user_name,
        "type": t.kind,
        "label": t.label,
        "digits": t.digits,
        "created": fmt_time(t.created_at),
        "last_used": fmt_time(t.last_used_at),
        "revoked": fmt_time(t.revoked_at) if t.revoked_at else None,
    }


async def list_tokens(rt: Runtime, args: argparse.Namespace) -> int:
    user_id = None
    if args.user:
        user_id = (await require_user(rt, args.user)).id
    names = {u.id: u.name for u in await rt.store.list_users()}
    tokens = await rt.store.list_tokens(user_id, include_revoked=args.all)
    rows = [_token_row(t, names.get(t.user_id, "?")) for t in tokens]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no tokens")
        return 0
    print(f"{'TOKEN':<17} {'USER':<16} {'TYPE':<5} {'LAST USED':<24} STATE")
    for r in rows:
        state = f"revoked {r['revoked']}" if r["revoked"] else "active"
        print(
            f"{r['token_id']!s:<17} {r['user']!s:<16} {r['type']!s:<5} {r['last_used']!s:<24} {state}"
        )
    return 0


async def revoke(rt: Runtime, args: argparse.Namespace) -> int:
    token = await rt.store.get_token(args.token_id)
    if token is None:
        raise CliError(f"no such token: {args.token_id} (see 'roamgate token list')")
    user = await rt.store.get_user_by_id(token.user_id)
    if not await rt.store.revoke_token(token.id, rt.clock()):
        raise CliError(f"token {token.id} was revoked already")
    await rt.auditor.record(
        "token_revoke",
        "ok",
        user=user.name if user else None,
        actor=actor(),
        factor=token.kind,
        detail={"token_id": token.id},
    )
    print(f"token {token.id} revoked")
    return 0


async def check(rt: Runtime, args: argparse.Namespace) -> int:
    """The help desk's "my code doesn't work": verify (and so use up) one code, and say why."""
    user = await require_user(rt, args.user)
    if not user.enabled:
        print(f"disabled: {user.name} is disabled (roamgate user enable {user.name})")
        return 1
    lock = await rt.throttle.check(user.name, None)
    if lock is not None:
        until = "until an admin unlocks" if lock.hard else f"until {fmt_time(lock.until)}"
        print(
            f"locked: {user.name} is locked {until} after {lock.failures} failed attempts;"
            f" the code was not checked (roamgate user unlock {user.name})"
        )
        await rt.auditor.record(
            "token_check", "fail", user=user.name, actor=actor(), reason="locked"
        )
        return 1
    result = await rt.second_factor.verify(user, args.code)
    await rt.auditor.record(
        "token_check",
        "ok" if result.ok else "fail",
        user=user.name,
        actor=actor(),
        factor=result.factor,
        reason=None if result.ok else result.reason,
        detail={"token_id": result.token_id, "drift_steps": result.drift_steps},
    )
    period = rt.config.auth.otp.totp_period_seconds
    if result.ok:
        what = (
            "backup code"
            if result.factor == "backup"
            else f"token {result.token_id} ({result.factor})"
        )
        print(f"ok: the code is right for {user.name}, {what}; it is now used up")
        return 0
    if result.reason == "replay" and result.factor == "backup":
        print("already used: this backup code was used before; each one works once")
    elif result.reason == "replay":
        print(
            f"already used: the code is right for token {result.token_id} but was accepted"
            " before; each code works once, wait for the next one"
        )
    elif result.reason == "clock_skew" and result.drift_steps is not None:
        steps = result.drift_steps
        where = "ahead of" if steps > 0 else "behind"
        print(
            f"clock: the code belongs to token {result.token_id} at {abs(steps)} steps"
            f" ({abs(steps) * period} s) {where} the gateway's clock; set the device's time"
            " (or check the gateway's) and try a new code"
        )
    elif result.reason == "no_token":
        print(f"no token: {user.name} has no active token (roamgate token enroll {user.name})")
    elif result.reason == "malformed":
        digits = rt.config.auth.otp.digits
        print(
            f"not a code: expected {digits} digits from the token, or a"
            f" {backup_codes.CODE_DIGITS}-digit backup code"
        )
    elif result.factor == "backup":
        print(f"wrong: not an unused backup code of {user.name}")
    else:
        print(f"wrong: the code matches none of {user.name}'s tokens, at any nearby time")
    return 1


async def resync(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    result = await rt.second_factor.resync(user, args.code1, args.code2)
    await rt.auditor.record(
        "token_resync",
        "ok" if result.ok else "fail",
        user=user.name,
        actor=actor(),
        factor="hotp",
        reason=None if result.ok else result.reason,
        detail={"token_id": result.token_id, "drift_steps": result.drift_steps},
    )
    if result.ok:
        print(f"ok: token {result.token_id} resynchronised ({result.drift_steps} presses ahead)")
        return 0
    print(f"no match: these two codes are not consecutive codes of {user.name}'s HOTP tokens")
    return 1


async def issue_backup_codes(rt: Runtime, args: argparse.Namespace) -> int:
    user = await require_user(rt, args.user)
    codes = await rt.second_factor.issue_backup_codes(user)
    await rt.auditor.record(
        "backup_codes", "ok", user=user.name, actor=actor(), detail={"count": len(codes)}
    )
    if args.json:
        print_json({"user": user.name, "codes": [backup_codes.display(c) for c in codes]})
        return 0
    sys.stdout.write(backup_codes.sheet(user.name, codes, fmt_time(rt.clock()), rt.config.hostname))
    return 0
