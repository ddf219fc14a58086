"""`roamgate audit`: search the audit trail kept in the store."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import IO

from roamgate.audit import to_json
from roamgate.commands.common import CliError, fmt_time, parse_when, print_json
from roamgate.runtime import Runtime

# Events read from the store per query: an export of any size holds one page at a time.
EXPORT_PAGE = 1000


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


async def export(rt: Runtime, args: argparse.Namespace) -> int:
    """Every matching event, oldest first, one JSON object per line (the audit file's shape)."""
    now = rt.clock()
    since = parse_when(args.since, now) if args.since else None
    until = parse_when(args.until, now) if args.until else None
    if since is not None and until is not None and until <= since:
        raise CliError("--until must be later than --since")
    if args.output in (None, "-"):
        count = await _write_events(rt, sys.stdout, since, until, args.user)
        sys.stdout.flush()
    else:
        target = Path(args.output)
        # Written beside the target and renamed at the end: a failed export leaves an older
        # file of that name as it was. 0600: the trail names users and their addresses.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise CliError(f"cannot write {target}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                count = await _write_events(rt, out, since, until, args.user)
            try:
                tmp.replace(target)
            except OSError as exc:
                raise CliError(f"cannot write {target}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        print(f"exported {count} audit event(s) to {target}", file=sys.stderr)
    return 0


async def _write_events(
    rt: Runtime, out: IO[str], since: float | None, until: float | None, user: str | None
) -> int:
    count = 0
    after: tuple[float, int] | None = None
    while True:
        page = await rt.store.audit_page(
            after=after, user_name=user, since=since, until=until, limit=EXPORT_PAGE
        )
        for record in page:
            out.write(json.dumps(to_json(record), sort_keys=True, ensure_ascii=False) + "\n")
        count += len(page)
        if len(page) < EXPORT_PAGE:
            return count
        last = page[-1]
        assert last.id is not None
        after = (last.ts, last.id)
