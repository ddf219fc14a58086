"""`roamgate audit`: search the audit trail kept in the store."""

from __future__ import annotations

import argparse

from roamgate.audit import to_json
from roamgate.commands.common import fmt_time, parse_when, print_json
from roamgate.runtime import Runtime


async def show(rt: Runtime, args: argparse.Namespace) -> int:
    now = rt.clock()
    records = await rt.store.query_audit(
        user_name=args.user,
        since=parse_when(args.since, now) if args.since else None,
        until=parse_when(args.until, now) if args.until else None,
        kind=args.kind,
        result=args.result,
        limit=args.limit,
    )
    if args.json:
        for record in records:
            print_json(to_json(record))
        return 0
    for r in records:
        parts = [fmt_time(r.ts), r.kind, r.result]
        for label, value in (
            ("user", r.user_name),
            ("from", r.source),
            ("door", r.door),
            ("factor", r.factor),
            ("reason", r.reason),
            ("by", r.actor),
        ):
            if value:
                parts.append(f"{label}={value}")
        parts += [f"{k}={v}" for k, v in sorted(r.detail.items()) if v is not None]
        print("  ".join(parts))
    if not records:
        print("no matching audit events")
    return 0
