"""One-time enrollment invites: only the token's hash is stored; opening one uses it up."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from roamgate.config import Config
from roamgate.runtime import Runtime
from roamgate.store.base import InviteRecord

INVITE_PATH = "/invite/"


@dataclass(frozen=True)
class NewInvite:
    """A created invite and its link (the only time the token exists outside the user's hands)."""

    record: InviteRecord
    link: str


def token_hash(token: str) -> bytes:
    # 256 random bits: a plain SHA-256 is enough (no guessing to slow down, nothing to salt).
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def base_url(cfg: Config) -> str:
    if cfg.web.base_url:
        return cfg.web.base_url.rstrip("/")
    web = cfg.listeners.web
    port = web.port if web is not None else 443
    return f"https://{cfg.hostname}" + ("" if port == 443 else f":{port}")


async def create_invite(rt: Runtime, user_name: str, hours: int, actor: str) -> NewInvite:
    token = secrets.token_urlsafe(32)
    now = rt.clock()
    record = InviteRecord(
        id="inv_" + secrets.token_hex(6),
        user_name=user_name,
        token_hash=token_hash(token),
        created_at=now,
        expires_at=now + hours * 3600,
        created_by=actor,
    )
    await rt.store.add_invite(record)
    await rt.auditor.record(
        "invite_create",
        "ok",
        user=user_name,
        actor=actor,
        detail={"invite_id": record.id, "expires_hours": hours},
    )
    return NewInvite(record, base_url(rt.config) + INVITE_PATH + token)


async def cancel_invite(rt: Runtime, invite_id: str, actor: str) -> bool:
    cancelled = await rt.store.cancel_invite(invite_id, rt.clock())
    if cancelled:
        await rt.auditor.record("invite_cancel", "ok", actor=actor, detail={"invite_id": invite_id})
    return cancelled
