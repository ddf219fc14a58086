"""`roamgate session list|revoke`: travel windows and live sessions."""

from __future__ import annotations

import argparse

from roamgate.commands.common import CliError, actor, fmt_time, print_json
from roamgate.runtime import Runtime


async def list_sessions(rt: Runtime, args: argparse.Namespace) -> int:
    now = rt.clock()
    windows = await rt.store.list_travel_windows(now, user_name=args.user, include_ended=args.all)
    live = [
        s
        for s in await rt.store.list_sessions(open_only=not args.all)
        if args.user is None or s.user_name == args.user
    ]
    if args.json:
        print_json(
            {
                "windows": [
                    {
                        "id": w.id,
                        "user": w.user_name,
                        "device": w.device,
                        "door": w.door,
                        "opened": fmt_time(w.created_at),
                        "expires": fmt_time(w.expires_at),
                        "revoked": fmt_time(w.revoked_at) if w.revoked_at else None,
                    }
                    for w in windows
                ],
                "sessions": [
                    {
                        "id": s.id,
                        "user": s.user_name,
                        "door": s.door,
                        "source": s.source,
                        "device": s.device,
                        "node": s.node,
                        "started": fmt_time(s.started_at),
                        "last_seen": fmt_time(s.last_seen_at),
                        "ended": fmt_time(s.ended_at) if s.ended_at else None,
                        "end_reason": s.end_reason,
                        "bytes_in": s.bytes_in,
                        "bytes_out": s.bytes_out,
                    }
                    for s in live
                ],
            }
        )
        return 0
    print(f"travel windows ({len(windows)}):")
    for w in windows:
        state = (
            f"revoked {fmt_time(w.revoked_at)}"
            if w.revoked_at
            else f"until {fmt_time(w.expires_at)}"
        )
        print(f"  {w.id}  {w.user_name:<16} {w.device:<28} {w.door:<6} {state}")
    print(f"sessions ({len(live)}):")
    for s in live:
        state = f"ended {fmt_time(s.ended_at)} ({s.end_reason})" if s.ended_at else "open"
        print(
            f"  {s.id}  {s.user_name:<16} {s.door:<6} {s.source:<20} since"
            f" {fmt_time(s.started_at)}  in {s.bytes_in} out {s.bytes_out}  {state}"
        )
    return 0


async def revoke(rt: Runtime, args: argparse.Namespace) -> int:
    now = rt.clock()
    if args.user:
        n = await rt.store.revoke_user_travel_windows(args.user, now)
        ended = 0
        for s in await rt.store.list_sessions():
            if s.user_name == args.user and await rt.store.request_session_end(s.id, now):
                ended += 1
        await rt.auditor.record(
            "session_revoke",
            "ok",
            user=args.user,
            actor=actor(),
            detail={"windows": n, "sessions": ended},
        )
        print(f"{args.user}: {n} travel window(s) revoked, {ended} live session(s) asked to end")
        return 0
    if not args.id:
        raise CliError("give a window or session id (see 'roamgate session list'), or --user USER")
    if args.id.startswith("win_"):
        window = next(
            (
                w
                for w in await rt.store.list_travel_windows(now, include_ended=True)
                if w.id == args.id
            ),
            None,
        )
        if window is None or not await rt.store.revoke_travel_window(args.id, now):
            raise CliError(f"no open travel window {args.id}")
        await rt.auditor.record(
            "session_revoke",
            "ok",
            user=window.user_name,
            actor=actor(),
            detail={"window_id": args.id},
        )
        print(f"travel window {args.id} of {window.user_name} revoked: the next login needs a code")
        return 0
    session = await rt.store.get_session(args.id)
    if session is None or not await rt.store.request_session_end(args.id, now):
        raise CliError(f"no open session {args.id}")
    await rt.auditor.record(
        "session_revoke",
        "ok",
        user=session.user_name,
        actor=actor(),
        detail={"session_id": args.id},
    )
    print(
        f"session {args.id} of {session.user_name} asked to end; its node closes it within seconds"
    )
    return 0
