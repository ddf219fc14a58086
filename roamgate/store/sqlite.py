"""The SQLite backend: one file, WAL journal, versioned migrations, one connection per process."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from roamgate.store.base import (
    AuditRecord,
    CallbackPolicy,
    CallbackRecord,
    DeviceRecord,
    DuplicateError,
    InviteRecord,
    PendingCallback,
    SessionRecord,
    SshKeyRecord,
    Store,
    StoreError,
    ThrottleRecord,
    ThrottleScope,
    TokenRecord,
    TravelWindow,
    UserRecord,
    WebSessionRecord,
)

_USER_COLS = "id, name, email, enabled, profile, password_hash, created_at, updated_at"
_TOKEN_COLS = ", ".join(  # column names, not a secret
    (
        *("id", "user_id", "kind", "sealed_secret", "digits", "period", "algorithm", "state"),
        *("label", "created_at", "last_used_at", "revoked_at"),
    )
)
_THROTTLE_COLS = "scope, key, failures, last_failure_at, locked_until, hard_locked"
_SESSION_COLS = (
    "id, user_name, door, source, device, node, started_at, last_seen_at, ended_at,"
    " end_reason, end_requested_at, bytes_in, bytes_out"
)
_SSH_KEY_COLS = "id, user_id, fingerprint, public_key, comment, created_at"
_WINDOW_COLS = "id, user_name, device, door, created_at, expires_at, revoked_at"
_INVITE_COLS = (
    "id, user_name, token_hash, created_at, expires_at, created_by, used_at, cancelled_at"
)
_WEB_SESSION_COLS = "id_hash, kind, user_name, csrf, data, created_at, last_seen_at, expires_at"
_DEVICE_COLS = "id, user_name, name, serial, fingerprint, created_at, expires_at, revoked_at"
_PENDING_COLS = "id, user_id, channel, node, token_hash, status, created_at, expires_at"
_AUDIT_COLS = "id, ts, kind, result, user_name, source, door, factor, reason, actor, detail"


def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of each migration shipped in the package, in order."""
    folder = resources.files("roamgate.store") / "migrations" / dialect
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(out)


def _split_sql(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current)
            current = ""
    if current.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in current.splitlines()
    ):
        raise StoreError("migration ends with an incomplete SQL statement")
    return statements


class SqliteStore(Store):
    """Store on a SQLite file. Several processes (serve, the CLI) may open it at once."""

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self._conn = conn
        # One connection is shared by all tasks: a transaction must not take in statements
        # of other tasks, so they wait for it (the lock), and its own statements do not.
        self._lock = asyncio.Lock()
        self._tx_owner: asyncio.Task[Any] | None = None

    @classmethod
    async def open(cls, path: Path, *, create: bool = False) -> SqliteStore:
        _ensure_file(path, create)
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from None
        store = cls(path, conn)
        try:
            await conn.execute("PRAGMA busy_timeout = 5000")
            await conn.execute("PRAGMA foreign_keys = ON")
            row = await (await conn.execute("PRAGMA journal_mode = WAL")).fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise StoreError(f"database {path}: cannot switch to WAL journal mode")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("SELECT count(*) FROM sqlite_master")
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise StoreError(f"database {path} is not usable: {_reason(exc)}") from None
        return store

    async def close(self) -> None:
        await self._conn.close()

    # -- helpers
    async def _execute(
        self, sql: str, params: Sequence[Any], *, rows: bool = True
    ) -> tuple[list[sqlite3.Row], int]:
        if self._tx_owner is not None and self._tx_owner is asyncio.current_task():
            return await self._execute_now(sql, params, rows=rows)
        async with self._lock:
            return await self._execute_now(sql, params, rows=rows)

    async def _execute_now(
        self, sql: str, params: Sequence[Any], *, rows: bool = True
    ) -> tuple[list[sqlite3.Row], int]:
        """One statement. Every await is a trip to aiosqlite's thread and back (a queue, a
        wake-up, a callback into the loop): a statement whose rows are wanted takes one
        (execute_fetchall), one whose changed-row count is wanted two (execute, close); not
        three (execute, fetchall, close), which was a sixth of a login's CPU."""
        try:
            if rows:
                return list(await self._conn.execute_fetchall(sql, params)), -1
            cur = await self._conn.execute(sql, params)
            try:
                return [], cur.rowcount
            finally:
                await cur.close()
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(str(exc)) from None
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {_reason(exc)}") from None

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return (await self._execute(sql, params))[0]

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one statement; return the number of rows changed."""
        return (await self._execute(sql, params, rows=False))[1]

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A write whose changed-row count nobody needs: one trip, not _run's two. (Writes on
        a login's path that need the count say RETURNING and count the rows.)"""
        await self._execute(sql, params)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._lock:
            self._tx_owner = asyncio.current_task()
            try:
                # IMMEDIATE takes the write lock up front: two processes never both read
                # the same state and then both write.
                await self._execute_now("BEGIN IMMEDIATE", (), rows=False)
                try:
                    yield
                except BaseException:
                    await self._conn.execute("ROLLBACK")
                    raise
                await self._execute_now("COMMIT", (), rows=False)
            finally:
                self._tx_owner = None

    # -- lifecycle
    async def schema_version(self) -> int:
        row = await self._one(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        )
        if row is None:
            return 0
        row = await self._one("SELECT max(version) FROM schema_migrations")
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def migrate(self) -> int:
        migrations = load_migrations("sqlite")
        known = max((v for v, _n, _s in migrations), default=0)
        applied = 0
        async with self._transaction():
            await self._run(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = await self.schema_version()
            if current > known:
                raise StoreError(
                    f"database {self.path} has schema version {current}, newer than this"
                    f" roamgate ({known}): upgrade roamgate"
                )
            for version, name, sql in migrations:
                if version <= current:
                    continue
                for statement in _split_sql(sql):
                    await self._run(statement)
                await self._run(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES (?, ?, strftime('%s','now'))",
                    (version, name),
                )
                applied += 1
        return applied

    # -- users
    async def add_user(
        self,
        name: str,
        now: float,
        *,
        email: str | None = None,
        profile: str = "lan",
        password_hash: str | None = None,
    ) -> UserRecord:
        try:
            await self._run(
                "INSERT INTO users (name, email, enabled, profile, password_hash, created_at,"
                " updated_at) VALUES (?, ?, 1, ?, ?, ?, ?)",
                (name, email, profile, password_hash, now, now),
            )
        except DuplicateError:
            raise DuplicateError(f"user {name!r} exists already") from None
        user = await self.get_user(name)
        assert user is not None
        return user

    async def get_user(self, name: str) -> UserRecord | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE name = ?", (name,))
        return _user(row) if row else None

    async def get_user_by_id(self, user_id: int) -> UserRecord | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE id = ?", (user_id,))
        return _user(row) if row else None

    async def list_users(self) -> list[UserRecord]:
        return [_user(r) for r in await self._all(f"SELECT {_USER_COLS} FROM users ORDER BY name")]

    async def set_user_enabled(self, name: str, enabled: bool, now: float) -> bool:
        n = await self._run(
            "UPDATE users SET enabled = ?, updated_at = ? WHERE name = ?", (int(enabled), now, name)
        )
        return n == 1

    async def set_password_hash(self, name: str, password_hash: str | None, now: float) -> bool:
        n = await self._run(
            "UPDATE users SET password_hash = ?, updated_at = ? WHERE name = ?",
            (password_hash, now, name),
        )
        return n == 1

    async def set_user_profile(self, name: str, profile: str, now: float) -> bool:
        n = await self._run(
            "UPDATE users SET profile = ?, updated_at = ? WHERE name = ?", (profile, now, name)
        )
        return n == 1

    async def set_user_email(self, name: str, email: str | None, now: float) -> bool:
        n = await self._run(
            "UPDATE users SET email = ?, updated_at = ? WHERE name = ?", (email, now, name)
        )
        return n == 1

    async def set_device_profile(
        self, user_id: int, device: str, profile: str | None, now: float
    ) -> None:
        if profile is None:
            await self._run(
                "DELETE FROM device_profiles WHERE user_id = ? AND device = ?", (user_id, device)
            )
            return
        await self._run(
            "INSERT INTO device_profiles (user_id, device, profile, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, device) DO UPDATE SET profile = excluded.profile,"
            " updated_at = excluded.updated_at",
            (user_id, device, profile, now),
        )

    async def device_profiles(self, user_id: int) -> dict[str, str]:
        rows = await self._all(
            "SELECT device, profile FROM device_profiles WHERE user_id = ? ORDER BY device",
            (user_id,),
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def remove_user(self, name: str) -> bool:
        return await self._run("DELETE FROM users WHERE name = ?", (name,)) == 1

    # -- tokens
    async def add_token(self, token: TokenRecord) -> None:
        try:
            await self._run(
                f"INSERT INTO tokens ({_TOKEN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token.id,
                    token.user_id,
                    token.kind,
                    token.sealed_secret,
                    token.digits,
                    token.period,
                    token.algorithm,
                    token.state,
                    token.label,
                    token.created_at,
                    token.last_used_at,
                    token.revoked_at,
                ),
            )
        except DuplicateError:
            raise DuplicateError(
                f"token {token.id!r} exists already or its user does not"
            ) from None

    async def get_token(self, token_id: str) -> TokenRecord | None:
        row = await self._one(f"SELECT {_TOKEN_COLS} FROM tokens WHERE id = ?", (token_id,))
        return _token(row) if row else None

    async def list_tokens(
        self, user_id: int | None = None, *, include_revoked: bool = False
    ) -> list[TokenRecord]:
        where, params = [], []
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_TOKEN_COLS} FROM tokens{clause} ORDER BY created_at, id", params
        )
        return [_token(r) for r in rows]

    async def revoke_token(self, token_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, token_id)
        )
        return n == 1

    async def advance_token_state(self, token_id: str, new_state: int, now: float) -> bool:
        rows = await self._all(
            "UPDATE tokens SET state = ?, last_used_at = ? WHERE id = ? AND revoked_at IS NULL"
            " AND (state IS NULL OR state < ?) RETURNING id",
            (new_state, now, token_id, new_state),
        )
        return len(rows) == 1

    # -- backup codes
    async def replace_backup_codes(
        self, user_id: int, code_hashes: Sequence[bytes], now: float
    ) -> None:
        async with self._transaction():
            await self._run("DELETE FROM backup_codes WHERE user_id = ?", (user_id,))
            for code_hash in code_hashes:
                await self._run(
                    "INSERT INTO backup_codes (user_id, code_hash, created_at) VALUES (?, ?, ?)",
                    (user_id, code_hash, now),
                )

    async def consume_backup_code(self, user_id: int, code_hash: bytes, now: float) -> bool:
        n = await self._run(
            "UPDATE backup_codes SET used_at = ? WHERE user_id = ? AND code_hash = ?"
            " AND used_at IS NULL",
            (now, user_id, code_hash),
        )
        return n == 1

    async def backup_code_status(self, user_id: int, code_hash: bytes) -> str | None:
        row = await self._one(
            "SELECT used_at FROM backup_codes WHERE user_id = ? AND code_hash = ?",
            (user_id, code_hash),
        )
        if row is None:
            return None
        return "unused" if row[0] is None else "used"

    async def count_backup_codes(self, user_id: int) -> int:
        row = await self._one(
            "SELECT count(*) FROM backup_codes WHERE user_id = ? AND used_at IS NULL", (user_id,)
        )
        return int(row[0]) if row else 0

    # -- throttling
    async def get_throttle(self, scope: ThrottleScope, key: str) -> ThrottleRecord | None:
        row = await self._one(
            f"SELECT {_THROTTLE_COLS} FROM throttle WHERE scope = ? AND key = ?", (scope, key)
        )
        return _throttle(row) if row else None

    async def get_login_throttles(
        self, user: str | None, source: str | None
    ) -> tuple[ThrottleRecord | None, ThrottleRecord | None]:
        rows = await self._all(
            f"SELECT {_THROTTLE_COLS} FROM throttle WHERE (scope = 'user' AND key = ?)"
            " OR (scope = 'source' AND key = ?)",
            (user, source),
        )
        found = {(r[0], r[1]): _throttle(r) for r in rows}
        return found.get(("user", user)), found.get(("source", source))

    async def record_failure(
        self, scope: ThrottleScope, key: str, now: float, *, forget_before: float | None = None
    ) -> ThrottleRecord:
        horizon = forget_before if forget_before is not None else float("-inf")
        row = await self._one(
            "INSERT INTO throttle (scope, key, failures, last_failure_at) VALUES (?, ?, 1, ?)"
            " ON CONFLICT (scope, key) DO UPDATE SET"
            " failures = CASE WHEN throttle.last_failure_at IS NULL"
            "   OR throttle.last_failure_at >= ? THEN throttle.failures + 1 ELSE 1 END,"
            " last_failure_at = excluded.last_failure_at"
            f" RETURNING {_THROTTLE_COLS}",
            (scope, key, now, horizon),
        )
        assert row is not None
        return _throttle(row)

    async def set_lock(
        self, scope: ThrottleScope, key: str, locked_until: float | None, hard: bool
    ) -> None:
        await self._run(
            "INSERT INTO throttle (scope, key, failures, locked_until, hard_locked)"
            " VALUES (?, ?, 0, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET"
            " locked_until = excluded.locked_until, hard_locked = excluded.hard_locked",
            (scope, key, locked_until, int(hard)),
        )

    async def clear_throttle(self, scope: ThrottleScope, key: str) -> bool:
        rows = await self._all(
            "DELETE FROM throttle WHERE scope = ? AND key = ? RETURNING key", (scope, key)
        )
        return len(rows) == 1

    async def list_throttles(self, scope: ThrottleScope | None = None) -> list[ThrottleRecord]:
        if scope is None:
            rows = await self._all(f"SELECT {_THROTTLE_COLS} FROM throttle ORDER BY scope, key")
        else:
            rows = await self._all(
                f"SELECT {_THROTTLE_COLS} FROM throttle WHERE scope = ? ORDER BY key", (scope,)
            )
        return [_throttle(r) for r in rows]

    # -- callbacks
    async def add_callback(
        self, user_id: int, channel: str, address: str, now: float
    ) -> CallbackRecord:
        try:
            row = await self._one(
                "INSERT INTO callbacks (user_id, channel, address, created_at) VALUES (?, ?, ?, ?)"
                " RETURNING id, user_id, channel, address, created_at, verified_at",
                (user_id, channel, address, now),
            )
        except DuplicateError:
            raise DuplicateError(
                "this callback is registered already, or the user does not exist"
            ) from None
        assert row is not None
        return _callback(row)

    async def list_callbacks(self, user_id: int) -> list[CallbackRecord]:
        rows = await self._all(
            "SELECT id, user_id, channel, address, created_at, verified_at FROM callbacks"
            " WHERE user_id = ? ORDER BY id",
            (user_id,),
        )
        return [_callback(r) for r in rows]

    async def mark_callback_verified(self, callback_id: int, now: float) -> bool:
        n = await self._run("UPDATE callbacks SET verified_at = ? WHERE id = ?", (now, callback_id))
        return n == 1

    async def remove_callback(self, callback_id: int) -> bool:
        return await self._run("DELETE FROM callbacks WHERE id = ?", (callback_id,)) == 1

    async def set_callback_key(self, callback_id: int, sealed_key: bytes) -> bool:
        n = await self._run(
            "UPDATE callbacks SET sealed_key = ? WHERE id = ?", (sealed_key, callback_id)
        )
        return n == 1

    async def get_callback_key(self, callback_id: int) -> bytes | None:
        row = await self._one("SELECT sealed_key FROM callbacks WHERE id = ?", (callback_id,))
        return bytes(row[0]) if row is not None and row[0] is not None else None

    # -- callback policy, known sources, the outstanding callback
    async def set_callback_policy(self, user_id: int, policy: CallbackPolicy, now: float) -> None:
        await self._run(
            "INSERT INTO callback_policies (user_id, policy, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET policy = excluded.policy,"
            " updated_at = excluded.updated_at",
            (user_id, policy, now),
        )

    async def get_callback_policy(self, user_id: int) -> CallbackPolicy | None:
        row = await self._one("SELECT policy FROM callback_policies WHERE user_id = ?", (user_id,))
        if row is None:
            return None
        policy: CallbackPolicy = row[0]
        return policy

    async def note_known_sources(self, user_id: int, keys: Sequence[str], now: float) -> None:
        for key in keys:
            await self._run(
                "INSERT INTO known_sources (user_id, key, first_seen, last_seen)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, key) DO UPDATE SET"
                " last_seen = excluded.last_seen",
                (user_id, key, now, now),
            )

    async def unknown_sources(self, user_id: int, keys: Sequence[str]) -> list[str]:
        rows = await self._all("SELECT key FROM known_sources WHERE user_id = ?", (user_id,))
        known = {str(r[0]) for r in rows}
        return [k for k in keys if k not in known]

    async def claim_pending_callback(self, pending: PendingCallback) -> bool:
        # One statement: the insert, or the take-over of an expired row, happens for one caller.
        n = await self._run(
            f"INSERT INTO pending_callbacks ({_PENDING_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET id = excluded.id, channel = excluded.channel,"
            " node = excluded.node, token_hash = excluded.token_hash, status = excluded.status,"
            " created_at = excluded.created_at, expires_at = excluded.expires_at"
            " WHERE pending_callbacks.expires_at <= excluded.created_at",
            (
                pending.id,
                pending.user_id,
                pending.channel,
                pending.node,
                pending.token_hash,
                pending.status,
                pending.created_at,
                pending.expires_at,
            ),
        )
        return n == 1

    async def get_pending_callback(self, pending_id: str) -> PendingCallback | None:
        row = await self._one(
            f"SELECT {_PENDING_COLS} FROM pending_callbacks WHERE id = ?", (pending_id,)
        )
        return _pending(row) if row else None

    async def update_pending_callback(
        self, pending_id: str, from_statuses: Sequence[str], status: str, now: float
    ) -> bool:
        if not from_statuses:
            return False
        marks = ", ".join("?" for _ in from_statuses)
        n = await self._run(
            f"UPDATE pending_callbacks SET status = ? WHERE id = ? AND status IN ({marks})"
            " AND expires_at > ?",
            (status, pending_id, *from_statuses, now),
        )
        return n == 1

    async def answer_pending_callback(
        self, token_hash: bytes, status: str, now: float
    ) -> PendingCallback | None:
        row = await self._one(
            "UPDATE pending_callbacks SET status = ? WHERE token_hash = ?"
            " AND status IN ('pending', 'delivered') AND expires_at > ?"
            f" RETURNING {_PENDING_COLS}",
            (status, token_hash, now),
        )
        return _pending(row) if row else None

    async def finish_pending_callback(self, pending_id: str) -> bool:
        n = await self._run("DELETE FROM pending_callbacks WHERE id = ?", (pending_id,))
        return n == 1

    # -- SSH keys
    async def add_ssh_key(
        self, user_id: int, fingerprint: str, public_key: str, comment: str, now: float
    ) -> SshKeyRecord:
        try:
            row = await self._one(
                "INSERT INTO ssh_keys (user_id, fingerprint, public_key, comment, created_at)"
                f" VALUES (?, ?, ?, ?, ?) RETURNING {_SSH_KEY_COLS}",
                (user_id, fingerprint, public_key, comment, now),
            )
        except DuplicateError:
            raise DuplicateError(
                "this key is registered already, or the user does not exist"
            ) from None
        assert row is not None
        return _ssh_key(row)

    async def list_ssh_keys(self, user_id: int) -> list[SshKeyRecord]:
        rows = await self._all(
            f"SELECT {_SSH_KEY_COLS} FROM ssh_keys WHERE user_id = ? ORDER BY id", (user_id,)
        )
        return [_ssh_key(r) for r in rows]

    async def remove_ssh_key(self, user_id: int, fingerprint: str) -> bool:
        n = await self._run(
            "DELETE FROM ssh_keys WHERE user_id = ? AND fingerprint = ?", (user_id, fingerprint)
        )
        return n == 1

    # -- sessions
    async def open_session(self, session: SessionRecord) -> None:
        try:
            await self._write(
                f"INSERT INTO sessions ({_SESSION_COLS}) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    session.user_name,
                    session.door,
                    session.source,
                    session.device,
                    session.node,
                    session.started_at,
                    session.last_seen_at,
                    session.ended_at,
                    session.end_reason,
                    session.end_requested_at,
                    session.bytes_in,
                    session.bytes_out,
                ),
            )
        except DuplicateError:
            raise DuplicateError(f"session {session.id!r} exists already") from None

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._one(f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ?", (session_id,))
        return _session(row) if row else None

    async def touch_session(
        self, session_id: str, now: float, bytes_in: int, bytes_out: int
    ) -> None:
        await self._write(
            "UPDATE sessions SET last_seen_at = ?, bytes_in = ?, bytes_out = ?"
            " WHERE id = ? AND ended_at IS NULL",
            (now, bytes_in, bytes_out, session_id),
        )

    async def close_session(
        self, session_id: str, now: float, reason: str, bytes_in: int, bytes_out: int
    ) -> bool:
        rows = await self._all(
            "UPDATE sessions SET ended_at = ?, last_seen_at = ?, end_reason = ?, bytes_in = ?,"
            " bytes_out = ? WHERE id = ? AND ended_at IS NULL RETURNING id",
            (now, now, reason, bytes_in, bytes_out, session_id),
        )
        return len(rows) == 1

    async def request_session_end(self, session_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE sessions SET end_requested_at = ? WHERE id = ? AND ended_at IS NULL"
            " AND end_requested_at IS NULL",
            (now, session_id),
        )
        return n == 1

    async def list_sessions(self, *, open_only: bool = True) -> list[SessionRecord]:
        clause = " WHERE ended_at IS NULL" if open_only else ""
        rows = await self._all(f"SELECT {_SESSION_COLS} FROM sessions{clause} ORDER BY started_at")
        return [_session(r) for r in rows]

    # -- travel windows
    async def open_travel_window(
        self, window_id: str, user_name: str, device: str, door: str, now: float, expires_at: float
    ) -> TravelWindow:
        row = await self._one(
            f"INSERT INTO travel_windows ({_WINDOW_COLS}) VALUES (?, ?, ?, ?, ?, ?, NULL)"
            " ON CONFLICT (user_name, device) DO UPDATE SET id = excluded.id,"
            " door = excluded.door, created_at = excluded.created_at,"
            f" expires_at = excluded.expires_at, revoked_at = NULL RETURNING {_WINDOW_COLS}",
            (window_id, user_name, device, door, now, expires_at),
        )
        assert row is not None
        return TravelWindow(*row)

    async def find_travel_window(
        self, user_name: str, device: str, now: float
    ) -> TravelWindow | None:
        row = await self._one(
            f"SELECT {_WINDOW_COLS} FROM travel_windows WHERE user_name = ? AND device = ?"
            " AND revoked_at IS NULL AND expires_at > ?",
            (user_name, device, now),
        )
        return TravelWindow(*row) if row else None

    async def list_travel_windows(
        self, now: float, *, user_name: str | None = None, include_ended: bool = False
    ) -> list[TravelWindow]:
        where: list[str] = []
        params: list[Any] = []
        if user_name is not None:
            where.append("user_name = ?")
            params.append(user_name)
        if not include_ended:
            where.append("revoked_at IS NULL AND expires_at > ?")
            params.append(now)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_WINDOW_COLS} FROM travel_windows{clause} ORDER BY created_at", params
        )
        return [TravelWindow(*r) for r in rows]

    async def revoke_travel_window(self, window_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE travel_windows SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (now, window_id),
        )
        return n == 1

    async def revoke_user_travel_windows(self, user_name: str, now: float) -> int:
        return await self._run(
            "UPDATE travel_windows SET revoked_at = ? WHERE user_name = ? AND revoked_at IS NULL",
            (now, user_name),
        )

    # -- enrollment invites
    async def add_invite(self, invite: InviteRecord) -> None:
        try:
            await self._run(
                f"INSERT INTO invites ({_INVITE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    invite.id,
                    invite.user_name,
                    invite.token_hash,
                    invite.created_at,
                    invite.expires_at,
                    invite.created_by,
                    invite.used_at,
                    invite.cancelled_at,
                ),
            )
        except DuplicateError:
            raise DuplicateError(f"invite {invite.id!r} exists already") from None

    async def find_invite(self, token_hash: bytes) -> InviteRecord | None:
        row = await self._one(
            f"SELECT {_INVITE_COLS} FROM invites WHERE token_hash = ?", (token_hash,)
        )
        return _invite(row) if row else None

    async def list_invites(
        self, now: float, *, user_name: str | None = None, include_ended: bool = False
    ) -> list[InviteRecord]:
        where: list[str] = []
        params: list[Any] = []
        if user_name is not None:
            where.append("user_name = ?")
            params.append(user_name)
        if not include_ended:
            where.append("used_at IS NULL AND cancelled_at IS NULL AND expires_at > ?")
            params.append(now)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_INVITE_COLS} FROM invites{clause} ORDER BY created_at DESC, id", params
        )
        return [_invite(r) for r in rows]

    async def consume_invite(self, invite_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE invites SET used_at = ? WHERE id = ? AND used_at IS NULL"
            " AND cancelled_at IS NULL AND expires_at > ?",
            (now, invite_id, now),
        )
        return n == 1

    async def cancel_invite(self, invite_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE invites SET cancelled_at = ? WHERE id = ? AND used_at IS NULL"
            " AND cancelled_at IS NULL",
            (now, invite_id),
        )
        return n == 1

    # -- web sessions
    async def add_web_session(self, session: WebSessionRecord) -> None:
        try:
            await self._run(
                f"INSERT INTO web_sessions ({_WEB_SESSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id_hash,
                    session.kind,
                    session.user_name,
                    session.csrf,
                    session.data,
                    session.created_at,
                    session.last_seen_at,
                    session.expires_at,
                ),
            )
        except DuplicateError:
            raise DuplicateError("web session exists already") from None

    async def get_web_session(self, id_hash: bytes, now: float) -> WebSessionRecord | None:
        row = await self._one(
            f"SELECT {_WEB_SESSION_COLS} FROM web_sessions WHERE id_hash = ? AND expires_at > ?",
            (id_hash, now),
        )
        return _web_session(row) if row else None

    async def update_web_session(
        self,
        id_hash: bytes,
        now: float,
        *,
        data: str | None = None,
        expect_data: str | None = None,
        expires_at: float | None = None,
    ) -> bool:
        sets = ["last_seen_at = ?"]
        params: list[Any] = [now]
        if data is not None:
            sets.append("data = ?")
            params.append(data)
        if expires_at is not None:
            sets.append("expires_at = ?")
            params.append(expires_at)
        where = "id_hash = ? AND expires_at > ?"
        params += [id_hash, now]
        if expect_data is not None:
            where += " AND data = ?"
            params.append(expect_data)
        n = await self._run(f"UPDATE web_sessions SET {', '.join(sets)} WHERE {where}", params)
        return n == 1

    async def delete_web_session(self, id_hash: bytes) -> bool:
        return await self._run("DELETE FROM web_sessions WHERE id_hash = ?", (id_hash,)) == 1

    async def delete_web_sessions(
        self, *, user_name: str | None = None, expired_before: float | None = None
    ) -> int:
        where: list[str] = []
        params: list[Any] = []
        if user_name is not None:
            where.append("user_name = ?")
            params.append(user_name)
        if expired_before is not None:
            where.append("expires_at <= ?")
            params.append(expired_before)
        if not where:
            return 0
        return await self._run(f"DELETE FROM web_sessions WHERE {' AND '.join(where)}", params)

    # -- device certificates
    async def add_device(self, device: DeviceRecord) -> None:
        try:
            await self._run(
                f"INSERT INTO devices ({_DEVICE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    device.id,
                    device.user_name,
                    device.name,
                    device.serial,
                    device.fingerprint,
                    device.created_at,
                    device.expires_at,
                    device.revoked_at,
                ),
            )
        except DuplicateError:
            raise DuplicateError(
                f"device {device.id!r} or its certificate exists already"
            ) from None

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        row = await self._one(f"SELECT {_DEVICE_COLS} FROM devices WHERE id = ?", (device_id,))
        return DeviceRecord(*row) if row else None

    async def find_device(self, fingerprint: str) -> DeviceRecord | None:
        row = await self._one(
            f"SELECT {_DEVICE_COLS} FROM devices WHERE fingerprint = ?", (fingerprint,)
        )
        return DeviceRecord(*row) if row else None

    async def list_devices(
        self, *, user_name: str | None = None, include_revoked: bool = False
    ) -> list[DeviceRecord]:
        where: list[str] = []
        params: list[Any] = []
        if user_name is not None:
            where.append("user_name = ?")
            params.append(user_name)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_DEVICE_COLS} FROM devices{clause} ORDER BY created_at, id", params
        )
        return [DeviceRecord(*r) for r in rows]

    async def revoke_device(self, device_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE devices SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (now, device_id),
        )
        return n == 1

    async def revoke_user_devices(self, user_name: str, now: float) -> int:
        return await self._run(
            "UPDATE devices SET revoked_at = ? WHERE user_name = ? AND revoked_at IS NULL",
            (now, user_name),
        )

    # -- audit
    async def append_audit(self, record: AuditRecord) -> int:
        row = await self._one(
            "INSERT INTO audit (ts, kind, result, user_name, source, door, factor, reason, actor,"
            " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                record.ts,
                record.kind,
                record.result,
                record.user_name,
                record.source,
                record.door,
                record.factor,
                record.reason,
                record.actor,
                json.dumps(dict(record.detail), sort_keys=True),
            ),
        )
        assert row is not None
        return int(row[0])

    async def query_audit(
        self,
        *,
        user_name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        result: str | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("user_name", user_name), ("kind", kind), ("result", result)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if until is not None:
            where.append("ts < ?")
            params.append(until)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_AUDIT_COLS} FROM audit{clause} ORDER BY ts DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [_audit(r) for r in reversed(rows)]

    async def audit_page(
        self,
        *,
        after: tuple[float, int] | None = None,
        user_name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        where: list[str] = []
        params: list[Any] = []
        if user_name is not None:
            where.append("user_name = ?")
            params.append(user_name)
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if until is not None:
            where.append("ts < ?")
            params.append(until)
        if after is not None:
            where.append("(ts > ? OR (ts = ? AND id > ?))")
            params += [after[0], after[0], after[1]]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_AUDIT_COLS} FROM audit{clause} ORDER BY ts, id LIMIT ?", [*params, limit]
        )
        return [_audit(r) for r in rows]

    async def delete_audit_before(self, ts: float) -> int:
        return await self._run("DELETE FROM audit WHERE ts < ?", (ts,))


def _ensure_file(path: Path, create: bool) -> None:
    if path.exists():
        return
    if not create:
        raise StoreError(f"database not found: {path} (run 'roamgate init' first)")
    # Created 0600 up front: the file holds sealed secrets and password hashes.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _reason(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "file is not a database" in text:
        return "the file is corrupt or is not a roamgate database"
    if "locked" in text:
        return "the database is locked by another process (waited 5 s)"
    if "no such table" in text:
        return f"{text} (run 'roamgate init', or the file is not a roamgate database)"
    return text


def _user(r: sqlite3.Row) -> UserRecord:
    return UserRecord(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7])


def _token(r: sqlite3.Row) -> TokenRecord:
    return TokenRecord(
        id=r[0],
        user_id=r[1],
        kind=r[2],
        sealed_secret=bytes(r[3]),
        digits=r[4],
        period=r[5],
        algorithm=r[6],
        state=r[7],
        label=r[8],
        created_at=r[9],
        last_used_at=r[10],
        revoked_at=r[11],
    )


def _throttle(r: sqlite3.Row) -> ThrottleRecord:
    return ThrottleRecord(r[0], r[1], r[2], r[3], r[4], bool(r[5]))


def _callback(r: sqlite3.Row) -> CallbackRecord:
    return CallbackRecord(r[0], r[1], r[2], r[3], r[4], r[5])


def _pending(r: sqlite3.Row) -> PendingCallback:
    token_hash = bytes(r[4]) if r[4] is not None else None
    return PendingCallback(r[0], r[1], r[2], r[3], token_hash, r[5], r[6], r[7])


def _ssh_key(r: sqlite3.Row) -> SshKeyRecord:
    return SshKeyRecord(r[0], r[1], r[2], r[3], r[4], r[5])


def _session(r: sqlite3.Row) -> SessionRecord:
    return SessionRecord(*r)


def _invite(r: sqlite3.Row) -> InviteRecord:
    return InviteRecord(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6], r[7])


def _web_session(r: sqlite3.Row) -> WebSessionRecord:
    return WebSessionRecord(bytes(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7])


def _audit(r: sqlite3.Row) -> AuditRecord:
    try:
        detail = json.loads(r[10])
    except ValueError:
        detail = {}
    return AuditRecord(
        id=r[0],
        ts=r[1],
        kind=r[2],
        result=r[3],
        user_name=r[4],
        source=r[5],
        door=r[6],
        factor=r[7],
        reason=r[8],
        actor=r[9],
        detail=detail,
    )
