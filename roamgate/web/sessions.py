"""Browser sessions: a random cookie whose SHA-256 is the key of a row in the store.

Kept in the store (not signed cookies) so that every gateway node sees a logout, a
revocation or a user being disabled at once, and a session can be ended from the server.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from roamgate.runtime import Runtime
from roamgate.store.base import WebSessionRecord

# __Host-: the browser sends it only over HTTPS, to this host, for every path (no Domain).
COOKIE = "__Host-roamgate"
LOGIN_COOKIE = "__Host-roamgate-login"


def id_hash(cookie_value: str) -> bytes:
    return hashlib.sha256(cookie_value.encode("utf-8", "replace")).digest()


@dataclass
class WebSession:
    """One loaded session; data is the JSON the handlers own."""

    record: WebSessionRecord
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def user_name(self) -> str:
        return self.record.user_name

    @property
    def csrf(self) -> str:
        return self.record.csrf


async def create(
    rt: Runtime, kind: str, user_name: str, lifetime: float, data: dict[str, Any]
) -> tuple[str, WebSession]:
    """A new session; returns the cookie value (never stored) and the session."""
    value = secrets.token_urlsafe(32)
    now = rt.clock()
    # Old expired rows go now and then, so the table does not grow with abandoned sessions.
    await rt.store.delete_web_sessions(expired_before=now)
    record = WebSessionRecord(
        id_hash=id_hash(value),
        kind=kind,
        user_name=user_name,
        csrf=secrets.token_urlsafe(32),
        data=json.dumps(data, sort_keys=True),
        created_at=now,
        last_seen_at=now,
        expires_at=now + lifetime,
    )
    await rt.store.add_web_session(record)
    return value, WebSession(record, dict(data))


async def load(rt: Runtime, request: web.Request) -> WebSession | None:
    value = request.cookies.get(COOKIE)
    if not value or len(value) > 128:
        return None
    record = await rt.store.get_web_session(id_hash(value), rt.clock())
    if record is None:
        return None
    try:
        data = json.loads(record.data)
    except ValueError:
        data = {}
    return WebSession(record, data if isinstance(data, dict) else {})


async def save(rt: Runtime, session: WebSession, data: dict[str, Any]) -> bool:
    """Replace the data if nobody else changed it since it was loaded (compare-and-set)."""
    text = json.dumps(data, sort_keys=True)
    ok = await rt.store.update_web_session(
        session.record.id_hash, rt.clock(), data=text, expect_data=session.record.data
    )
    if ok:
        session.record = WebSessionRecord(
            **{**session.record.__dict__, "data": text, "last_seen_at": rt.clock()}
        )
        session.data = dict(data)
    return ok


async def touch(rt: Runtime, session: WebSession, expires_at: float) -> None:
    await rt.store.update_web_session(session.record.id_hash, rt.clock(), expires_at=expires_at)


async def end(rt: Runtime, session: WebSession) -> None:
    await rt.store.delete_web_session(session.record.id_hash)


def set_cookie(response: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/", secure=True, httponly=True, samesite="Strict")
