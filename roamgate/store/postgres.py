"""The PostgreSQL backend: asyncpg connection pool, migrations under an advisory lock.

Several gateway nodes share one database. Every decision that must hold across nodes (a code
used once, a failure counted once) is one SQL statement: under READ COMMITTED a concurrent
UPDATE waits for the row lock and re-checks its WHERE clause on the row as committed, so of N
nodes racing with one code exactly one sees its UPDATE change a row.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

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
from roamgate.store.sqlite import load_migrations
from roamgate.store.urls import redact, url_problem

# pg_advisory_xact_lock key for migrations: b"roamgate" read as a (positive) bigint.
MIGRATION_LOCK = int.from_bytes(b"roamgate", "big")
CONNECT_TIMEOUT = 10.0  # seconds to connect, and to wait for a free pooled connection
COMMAND_TIMEOUT = 30.0

_USER_COLS = "id, name, email, enabled, profile, password_hash, created_at, updated_at"
_TOKEN_COLS = ", ".join(  # column names, not a secret
    (
        *("id", "user_id", "kind", "sealed_secret", "digits", "period", "algorithm", "state"),
        *("label", "created_at", "last_used_at", "revoked_at"),
    )
)
_THROTTLE_COLS = "scope, key, failures, last_failure_at, locked_until, hard_locked"
_CALLBACK_COLS = "id, user_id, channel, address, created_at, verified_at"
_SESSION_COLS = (
    "id, user_name, door, source, device, node, started_at, last_seen_at, ended_at,"
    " end_reason, end_requested_at, bytes_in, bytes_out"
)
_SSH_KEY_COLS = "id, user_id, fingerprint, public_key, comment, created_at"
_WINDOW_COLS = "id, user_name, device, door, created_at, expires_at, revoked_at"
_PENDING_COLS = "id, user_id, channel, node, token_hash, status, created_at, expires_at"
_AUDIT_COLS = "id, ts, kind, result, user_name, source, door, factor, reason, actor, detail"
_INVITE_COLS = (
    "id, user_name, token_hash, created_at, expires_at, created_by, used_at, cancelled_at"
)
_WEB_SESSION_COLS = "id_hash, kind, user_name, csrf, data, created_at, last_seen_at, expires_at"
_DEVICE_COLS = "id, user_name, name, serial, fingerprint, created_at, expires_at, revoked_at"
# Text is ordered byte-wise, as SQLite does, whatever the database's collation.
_C = ' COLLATE "C"'

Row = Sequence[Any]


class _OneLine(logging.Filter):
    """asyncpg's pool logs a traceback each time it cannot refill itself: make it one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            reason = _os_reason(exc) if isinstance(exc, OSError) else _message(exc)
            record.msg, record.args = f"{record.getMessage()}: {reason}", ()
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("asyncpg.pool").addFilter(_OneLine())


class PostgresStore(Store):
    """Store on a PostgreSQL database, reached through a pool of asyncpg connections."""

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.shown_url = redact(url)
        self._pool = pool

    @classmethod
    async def open(
        cls, url: str, *, password: str | None = None, pool_size: int = 10
    ) -> PostgresStore:
        shown = redact(url)
        problem = url_problem(url)
        if problem is not None:
            raise StoreError(f"store URL {problem}")
        try:
            pool = await asyncpg.create_pool(
                url,
                password=password,
                min_size=1,
                max_size=pool_size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                server_settings={"application_name": "roamgate"},
                reset=_keep_session,
            )
        except asyncpg.PostgresError as exc:
            # The server's own words ('password authentication failed for user "x"',
            # 'database "y" does not exist') name no password.
            raise StoreError(f"cannot use the database at {shown}: {_message(exc)}") from None
        except (asyncpg.InterfaceError, ValueError):
            # asyncpg's DSN errors may quote the URL: say what is wrong in our own words.
            raise StoreError(f"store URL is not a valid PostgreSQL URL: {shown}") from None
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else _os_reason(exc)
            raise StoreError(f"cannot reach the database at {shown}: {reason}") from None
        return cls(url, pool)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), CONNECT_TIMEOUT)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self._pool.terminate()

    # -- helpers
    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
                yield conn
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise DuplicateError(_message(exc)) from None
        except asyncpg.PostgresError as exc:
            raise StoreError(f"database {self.shown_url}: {_message(exc)}") from None
        except asyncpg.InterfaceError as exc:
            raise StoreError(f"database {self.shown_url}: {_message(exc)}") from None
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else _os_reason(exc)
            raise StoreError(f"database {self.shown_url} unreachable: {reason}") from None

    async def _all(self, sql: str, *args: Any) -> list[Row]:
        async with self._conn() as conn:
            return list(await conn.fetch(sql, *_clean(args)))

    async def _one(self, sql: str, *args: Any) -> Row | None:
        async with self._conn() as conn:
            row: Row | None = await conn.fetchrow(sql, *_clean(args))
            return row

    async def _run(self, sql: str, *args: Any) -> int:
        """Execute one statement; return the number of rows it changed."""
        async with self._conn() as conn:
            status: str = await conn.execute(sql, *_clean(args))
        return _count(status)

    # -- lifecycle
    async def schema_version(self) -> int:
        async with self._conn() as conn:
            return await _schema_version(conn)

    async def migrate(self) -> int:
        migrations = load_migrations("postgres")
        known = max((v for v, _n, _s in migrations), default=0)
        applied = 0
        async with self._conn() as conn, conn.transaction():
            # Nodes starting together queue here; the lock ends with the transaction, and the
            # schema changes (transactional in PostgreSQL) are all applied or none.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at double precision NOT NULL)"
            )
            current = await _schema_version(conn)
            if current > known:
                raise StoreError(
                    f"database {self.shown_url} has schema version {current}, newer than this"
                    f" roamgate ({known}): upgrade roamgate"
                )
            for version, name, sql in migrations:
                if version <= current:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES ($1, $2, extract(epoch FROM now()))",
                    version,
                    name,
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
            row = await self._one(
                "INSERT INTO users (name, email, enabled, profile, password_hash, created_at,"
                f" updated_at) VALUES ($1, $2, true, $3, $4, $5, $5) RETURNING {_USER_COLS}",
                name,
                email,
                profile,
                password_hash,
                now,
            )
        except DuplicateError:
            raise DuplicateError(f"user {name!r} exists already") from None
        assert row is not None
        return _user(row)

    async def get_user(self, name: str) -> UserRecord | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE name = $1", name)
        return _user(row) if row else None

    async def get_user_by_id(self, user_id: int) -> UserRecord | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE id = $1", user_id)
        return _user(row) if row else None

    async def list_users(self) -> list[UserRecord]:
        rows = await self._all(f"SELECT {_USER_COLS} FROM users ORDER BY name{_C}")
        return [_user(r) for r in rows]

    async def set_user_enabled(self, name: str, enabled: bool, now: float) -> bool:
        n = await self._run(
            "UPDATE users SET enabled = $1, updated_at = $2 WHERE name = $3", enabled, now, name
        )
        return n == 1

    async def set_password_hash(self, name: str, password_hash: str | None, now: float) -> bool:
        n = await self._run(
            "UPDATE users SET password_hash = $1, updated_at = $2 WHERE name = $3",
            password_hash,
            now,
            name,
        )
        return n == 1

    async def set_user_profile(self, name: str, profile: str, now: float) -> bool:
        n = await self._run(
            "UPDATE users SET profile = $1, updated_at = $2 WHERE name = $3", profile, now, name
        )
        return n == 1

    async def set_user_email(self, name: str, email: str | None, now: float) -> bool:
        n = await self._run(
            "UPDATE users SET email = $1, updated_at = $2 WHERE name = $3", email, now, name
        )
        return n == 1

    async def set_device_profile(
        self, user_id: int, device: str, profile: str | None, now: float
    ) -> None:
        if profile is None:
            await self._run(
                "DELETE FROM device_profiles WHERE user_id = $1 AND device = $2", user_id, device
            )
            return
        await self._run(
            "INSERT INTO device_profiles (user_id, device, profile, updated_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device) DO UPDATE SET"
            " profile = excluded.profile, updated_at = excluded.updated_at",
            user_id,
            device,
            profile,
            now,
        )

    async def device_profiles(self, user_id: int) -> dict[str, str]:
        rows = await self._all(
            f"SELECT device, profile FROM device_profiles WHERE user_id = $1 ORDER BY device{_C}",
            user_id,
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def remove_user(self, name: str) -> bool:
        return await self._run("DELETE FROM users WHERE name = $1", name) == 1

    # -- tokens
    async def add_token(self, token: TokenRecord) -> None:
        try:
            await self._run(
                f"INSERT INTO tokens ({_TOKEN_COLS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
            )
        except DuplicateError:
            raise DuplicateError(
                f"token {token.id!r} exists already or its user does not"
            ) from None

    async def get_token(self, token_id: str) -> TokenRecord | None:
        row = await self._one(f"SELECT {_TOKEN_COLS} FROM tokens WHERE id = $1", token_id)
        return _token(row) if row else None

    async def list_tokens(
        self, user_id: int | None = None, *, include_revoked: bool = False
    ) -> list[TokenRecord]:
        where: list[str] = []
        params: list[Any] = []
        if user_id is not None:
            params.append(user_id)
            where.append(f"user_id = ${len(params)}")
        if not include_revoked:
            where.append("revoked_at IS NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_TOKEN_COLS} FROM tokens{clause} ORDER BY created_at, id{_C}", *params
        )
        return [_token(r) for r in rows]

    async def revoke_token(self, token_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", now, token_id
        )
        return n == 1

    async def advance_token_state(self, token_id: str, new_state: int, now: float) -> bool:
        # One statement: a racing UPDATE re-reads the committed state and its WHERE fails.
        n = await self._run(
            "UPDATE tokens SET state = $1, last_used_at = $2 WHERE id = $3"
            " AND revoked_at IS NULL AND (state IS NULL OR state < $1)",
            new_state,
            now,
            token_id,
        )
        return n == 1

    # -- backup codes
    async def replace_backup_codes(
        self, user_id: int, code_hashes: Sequence[bytes], now: float
    ) -> None:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("DELETE FROM backup_codes WHERE user_id = $1", user_id)
            await conn.execute(
                "INSERT INTO backup_codes (user_id, code_hash, created_at)"
                " SELECT $1, h, $3 FROM unnest($2::bytea[]) AS h",
                user_id,
                list(code_hashes),
                now,
            )

    async def consume_backup_code(self, user_id: int, code_hash: bytes, now: float) -> bool:
        n = await self._run(
            "UPDATE backup_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3"
            " AND used_at IS NULL",
            now,
            user_id,
            code_hash,
        )
        return n == 1

    async def backup_code_status(self, user_id: int, code_hash: bytes) -> str | None:
        row = await self._one(
            "SELECT used_at FROM backup_codes WHERE user_id = $1 AND code_hash = $2",
            user_id,
            code_hash,
        )
        if row is None:
            return None
        return "unused" if row[0] is None else "used"

    async def count_backup_codes(self, user_id: int) -> int:
        row = await self._one(
            "SELECT count(*) FROM backup_codes WHERE user_id = $1 AND used_at IS NULL", user_id
        )
        return int(row[0]) if row else 0

    # -- throttling
    async def get_throttle(self, scope: ThrottleScope, key: str) -> ThrottleRecord | None:
        row = await self._one(
            f"SELECT {_THROTTLE_COLS} FROM throttle WHERE scope = $1 AND key = $2", scope, key
        )
        return _throttle(row) if row else None

    async def get_login_throttles(
        self, user: str | None, source: str | None
    ) -> tuple[ThrottleRecord | None, ThrottleRecord | None]:
        rows = await self._all(
            f"SELECT {_THROTTLE_COLS} FROM throttle WHERE (scope = 'user' AND key = $1)"
            " OR (scope = 'source' AND key = $2)",
            user,
            source,
        )
        found = {(r[0], r[1]): _throttle(r) for r in rows}
        return found.get(("user", user)), found.get(("source", source))

    async def record_failure(
        self, scope: ThrottleScope, key: str, now: float, *, forget_before: float | None = None
    ) -> ThrottleRecord:
        horizon = forget_before if forget_before is not None else float("-inf")
        row = await self._one(
            "INSERT INTO throttle (scope, key, failures, last_failure_at) VALUES ($1, $2, 1, $3)"
            " ON CONFLICT (scope, key) DO UPDATE SET"
            " failures = CASE WHEN throttle.last_failure_at IS NULL"
            "   OR throttle.last_failure_at >= $4 THEN throttle.failures + 1 ELSE 1 END,"
            " last_failure_at = excluded.last_failure_at"
            f" RETURNING {_THROTTLE_COLS}",
            scope,
            key,
            now,
            horizon,
        )
        assert row is not None
        return _throttle(row)

    async def set_lock(
        self, scope: ThrottleScope, key: str, locked_until: float | None, hard: bool
    ) -> None:
        await self._run(
            "INSERT INTO throttle (scope, key, failures, locked_until, hard_locked)"
            " VALUES ($1, $2, 0, $3, $4) ON CONFLICT (scope, key) DO UPDATE SET"
            " locked_until = excluded.locked_until, hard_locked = excluded.hard_locked",
            scope,
            key,
            locked_until,
            hard,
        )

    async def clear_throttle(self, scope: ThrottleScope, key: str) -> bool:
        n = await self._run("DELETE FROM throttle WHERE scope = $1 AND key = $2", scope, key)
        return n == 1

    async def list_throttles(self, scope: ThrottleScope | None = None) -> list[ThrottleRecord]:
        if scope is None:
            rows = await self._all(
                f"SELECT {_THROTTLE_COLS} FROM throttle ORDER BY scope{_C}, key{_C}"
            )
        else:
            rows = await self._all(
                f"SELECT {_THROTTLE_COLS} FROM throttle WHERE scope = $1 ORDER BY key{_C}", scope
            )
        return [_throttle(r) for r in rows]

    # -- callbacks
    async def add_callback(
        self, user_id: int, channel: str, address: str, now: float
    ) -> CallbackRecord:
        try:
            row = await self._one(
                "INSERT INTO callbacks (user_id, channel, address, created_at)"
                f" VALUES ($1, $2, $3, $4) RETURNING {_CALLBACK_COLS}",
                user_id,
                channel,
                address,
                now,
            )
        except DuplicateError:
            raise DuplicateError(
                "this callback is registered already, or the user does not exist"
            ) from None
        assert row is not None
        return _callback(row)

    async def list_callbacks(self, user_id: int) -> list[CallbackRecord]:
        rows = await self._all(
            f"SELECT {_CALLBACK_COLS} FROM callbacks WHERE user_id = $1 ORDER BY id", user_id
        )
        return [_callback(r) for r in rows]

    async def mark_callback_verified(self, callback_id: int, now: float) -> bool:
        n = await self._run("UPDATE callbacks SET verified_at = $1 WHERE id = $2", now, callback_id)
        return n == 1

    async def remove_callback(self, callback_id: int) -> bool:
        return await self._run("DELETE FROM callbacks WHERE id = $1", callback_id) == 1

    async def set_callback_key(self, callback_id: int, sealed_key: bytes) -> bool:
        n = await self._run(
            "UPDATE callbacks SET sealed_key = $1 WHERE id = $2", sealed_key, callback_id
        )
        return n == 1

    async def get_callback_key(self, callback_id: int) -> bytes | None:
        row = await self._one("SELECT sealed_key FROM callbacks WHERE id = $1", callback_id)
        return bytes(row[0]) if row is not None and row[0] is not None else None

    # -- callback policy, known sources, the outstanding callback
    async def set_callback_policy(self, user_id: int, policy: CallbackPolicy, now: float) -> None:
        await self._run(
            "INSERT INTO callback_policies (user_id, policy, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (user_id) DO UPDATE SET policy = excluded.policy,"
            " updated_at = excluded.updated_at",
            user_id,
            policy,
            now,
        )

    async def get_callback_policy(self, user_id: int) -> CallbackPolicy | None:
        row = await self._one("SELECT policy FROM callback_policies WHERE user_id = $1", user_id)
        if row is None:
            return None
        policy: CallbackPolicy = row[0]
        return policy

    async def note_known_sources(self, user_id: int, keys: Sequence[str], now: float) -> None:
        if not keys:
            return
        # One statement for all keys; the same key twice in one call counts once.
        await self._run(
            "INSERT INTO known_sources (user_id, key, first_seen, last_seen)"
            " SELECT $1, k, $3, $3 FROM (SELECT DISTINCT unnest($2::text[]) AS k) AS ks"
            " ON CONFLICT (user_id, key) DO UPDATE SET last_seen = excluded.last_seen",
            user_id,
            list(keys),
            now,
        )

    async def unknown_sources(self, user_id: int, keys: Sequence[str]) -> list[str]:
        rows = await self._all("SELECT key FROM known_sources WHERE user_id = $1", user_id)
        known = {str(r[0]) for r in rows}
        return [k for k in keys if k not in known]

    async def claim_pending_callback(self, pending: PendingCallback) -> bool:
        # One statement: the insert, or the take-over of an expired row, happens for one caller.
        n = await self._run(
            f"INSERT INTO pending_callbacks ({_PENDING_COLS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (user_id) DO UPDATE SET id = excluded.id, channel = excluded.channel,"
            " node = excluded.node, token_hash = excluded.token_hash, status = excluded.status,"
            " created_at = excluded.created_at, expires_at = excluded.expires_at"
            " WHERE pending_callbacks.expires_at <= excluded.created_at",
            pending.id,
            pending.user_id,
            pending.channel,
            pending.node,
            pending.token_hash,
            pending.status,
            pending.created_at,
            pending.expires_at,
        )
        return n == 1

    async def get_pending_callback(self, pending_id: str) -> PendingCallback | None:
        row = await self._one(
            f"SELECT {_PENDING_COLS} FROM pending_callbacks WHERE id = $1", pending_id
        )
        return _pending(row) if row else None

    async def update_pending_callback(
        self, pending_id: str, from_statuses: Sequence[str], status: str, now: float
    ) -> bool:
        if not from_statuses:
            return False
        n = await self._run(
            "UPDATE pending_callbacks SET status = $1 WHERE id = $2"
            " AND status = ANY($3::text[]) AND expires_at > $4",
            status,
            pending_id,
            list(from_statuses),
            now,
        )
        return n == 1

    async def answer_pending_callback(
        self, token_hash: bytes, status: str, now: float
    ) -> PendingCallback | None:
        row = await self._one(
            "UPDATE pending_callbacks SET status = $1 WHERE token_hash = $2"
            " AND status IN ('pending', 'delivered') AND expires_at > $3"
            f" RETURNING {_PENDING_COLS}",
            status,
            token_hash,
            now,
        )
        return _pending(row) if row else None

    async def finish_pending_callback(self, pending_id: str) -> bool:
        n = await self._run("DELETE FROM pending_callbacks WHERE id = $1", pending_id)
        return n == 1

    # -- SSH keys
    async def add_ssh_key(
        self, user_id: int, fingerprint: str, public_key: str, comment: str, now: float
    ) -> SshKeyRecord:
        try:
            row = await self._one(
                "INSERT INTO ssh_keys (user_id, fingerprint, public_key, comment, created_at)"
                f" VALUES ($1, $2, $3, $4, $5) RETURNING {_SSH_KEY_COLS}",
                user_id,
                fingerprint,
                public_key,
                comment,
                now,
            )
        except DuplicateError:
            raise DuplicateError(
                "this key is registered already, or the user does not exist"
            ) from None
        assert row is not None
        return _ssh_key(row)

    async def list_ssh_keys(self, user_id: int) -> list[SshKeyRecord]:
        rows = await self._all(
            f"SELECT {_SSH_KEY_COLS} FROM ssh_keys WHERE user_id = $1 ORDER BY id", user_id
        )
        return [_ssh_key(r) for r in rows]

    async def remove_ssh_key(self, user_id: int, fingerprint: str) -> bool:
        n = await self._run(
            "DELETE FROM ssh_keys WHERE user_id = $1 AND fingerprint = $2", user_id, fingerprint
        )
        return n == 1

    # -- sessions
    async def open_session(self, session: SessionRecord) -> None:
        try:
            await self._run(
                f"INSERT INTO sessions ({_SESSION_COLS}) VALUES"
                " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
            )
        except DuplicateError:
            raise DuplicateError(f"session {session.id!r} exists already") from None

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._one(f"SELECT {_SESSION_COLS} FROM sessions WHERE id = $1", session_id)
        return SessionRecord(*row) if row else None

    async def touch_session(
        self, session_id: str, now: float, bytes_in: int, bytes_out: int
    ) -> None:
        await self._run(
            "UPDATE sessions SET last_seen_at = $1, bytes_in = $2, bytes_out = $3"
            " WHERE id = $4 AND ended_at IS NULL",
            now,
            bytes_in,
            bytes_out,
            session_id,
        )

    async def close_session(
        self, session_id: str, now: float, reason: str, bytes_in: int, bytes_out: int
    ) -> bool:
        n = await self._run(
            "UPDATE sessions SET ended_at = $1, last_seen_at = $1, end_reason = $2,"
            " bytes_in = $3, bytes_out = $4 WHERE id = $5 AND ended_at IS NULL",
            now,
            reason,
            bytes_in,
            bytes_out,
            session_id,
        )
        return n == 1

    async def request_session_end(self, session_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE sessions SET end_requested_at = $1 WHERE id = $2 AND ended_at IS NULL"
            " AND end_requested_at IS NULL",
            now,
            session_id,
        )
        return n == 1

    async def list_sessions(self, *, open_only: bool = True) -> list[SessionRecord]:
        clause = " WHERE ended_at IS NULL" if open_only else ""
        rows = await self._all(
            f"SELECT {_SESSION_COLS} FROM sessions{clause} ORDER BY started_at, id{_C}"
        )
        return [SessionRecord(*r) for r in rows]

    # -- travel windows
    async def open_travel_window(
        self, window_id: str, user_name: str, device: str, door: str, now: float, expires_at: float
    ) -> TravelWindow:
        row = await self._one(
            f"INSERT INTO travel_windows ({_WINDOW_COLS}) VALUES ($1, $2, $3, $4, $5, $6, NULL)"
            " ON CONFLICT (user_name, device) DO UPDATE SET id = excluded.id,"
            " door = excluded.door, created_at = excluded.created_at,"
            f" expires_at = excluded.expires_at, revoked_at = NULL RETURNING {_WINDOW_COLS}",
            window_id,
            user_name,
            device,
            door,
            now,
            expires_at,
        )
        assert row is not None
        return TravelWindow(*row)

    async def find_travel_window(
        self, user_name: str, device: str, now: float
    ) -> TravelWindow | None:
        row = await self._one(
            f"SELECT {_WINDOW_COLS} FROM travel_windows WHERE user_name = $1 AND device = $2"
            " AND revoked_at IS NULL AND expires_at > $3",
            user_name,
            device,
            now,
        )
        return TravelWindow(*row) if row else None

    async def list_travel_windows(
        self, now: float, *, user_name: str | None = None, include_ended: bool = False
    ) -> list[TravelWindow]:
        where: list[str] = []
        params: list[Any] = []
        if user_name is not None:
            params.append(user_name)
            where.append(f"user_name = ${len(params)}")
        if not include_ended:
            params.append(now)
            where.append(f"revoked_at IS NULL AND expires_at > ${len(params)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_WINDOW_COLS} FROM travel_windows{clause} ORDER BY created_at, id{_C}",
            *params,
        )
        return [TravelWindow(*r) for r in rows]

    async def revoke_travel_window(self, window_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE travel_windows SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            now,
            window_id,
        )
        return n == 1

    async def revoke_user_travel_windows(self, user_name: str, now: float) -> int:
        return await self._run(
            "UPDATE travel_windows SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL",
            now,
            user_name,
        )

    # -- audit
    async def append_audit(self, record: AuditRecord) -> int:
        row = await self._one(
            "INSERT INTO audit (ts, kind, result, user_name, source, door, factor, reason, actor,"
            " detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
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
                params.append(value)
                where.append(f"{column} = ${len(params)}")
        if since is not None:
            params.append(since)
            where.append(f"ts >= ${len(params)}")
        if until is not None:
            params.append(until)
            where.append(f"ts < ${len(params)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        params.append(limit)
        rows = await self._all(
            f"SELECT {_AUDIT_COLS} FROM audit{clause} ORDER BY ts DESC, id DESC"
            f" LIMIT ${len(params)}",
            *params,
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
            params.append(user_name)
            where.append(f"user_name = ${len(params)}")
        if since is not None:
            params.append(since)
            where.append(f"ts >= ${len(params)}")
        if until is not None:
            params.append(until)
            where.append(f"ts < ${len(params)}")
        if after is not None:
            # Keyset paging on (ts, id): stable while new records are appended.
            params += [after[0], after[1]]
            where.append(f"(ts, id) > (${len(params) - 1}, ${len(params)})")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        params.append(limit)
        rows = await self._all(
            f"SELECT {_AUDIT_COLS} FROM audit{clause} ORDER BY ts, id LIMIT ${len(params)}",
            *params,
        )
        return [_audit(r) for r in rows]

    async def delete_audit_before(self, ts: float) -> int:
        return await self._run("DELETE FROM audit WHERE ts < $1", ts)

    # -- enrollment invites
    async def add_invite(self, invite: InviteRecord) -> None:
        try:
            await self._run(
                f"INSERT INTO invites ({_INVITE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                invite.id,
                invite.user_name,
                invite.token_hash,
                invite.created_at,
                invite.expires_at,
                invite.created_by,
                invite.used_at,
                invite.cancelled_at,
            )
        except DuplicateError:
            raise DuplicateError(f"invite {invite.id!r} exists already") from None

    async def find_invite(self, token_hash: bytes) -> InviteRecord | None:
        row = await self._one(
            f"SELECT {_INVITE_COLS} FROM invites WHERE token_hash = $1", token_hash
        )
        return _invite(row) if row else None

    async def list_invites(
        self, now: float, *, user_name: str | None = None, include_ended: bool = False
    ) -> list[InviteRecord]:
        where: list[str] = []
        params: list[Any] = []
        if user_name is not None:
            params.append(user_name)
            where.append(f"user_name = ${len(params)}")
        if not include_ended:
            params.append(now)
            where.append(
                f"used_at IS NULL AND cancelled_at IS NULL AND expires_at > ${len(params)}"
            )
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_INVITE_COLS} FROM invites{clause} ORDER BY created_at DESC, id{_C}",
            *params,
        )
        return [_invite(r) for r in rows]

    async def consume_invite(self, invite_id: str, now: float) -> bool:
        # One statement: of concurrent uses (on any node) exactly one changes the row.
        n = await self._run(
            "UPDATE invites SET used_at = $1 WHERE id = $2 AND used_at IS NULL"
            " AND cancelled_at IS NULL AND expires_at > $1",
            now,
            invite_id,
        )
        return n == 1

    async def cancel_invite(self, invite_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE invites SET cancelled_at = $1 WHERE id = $2 AND used_at IS NULL"
            " AND cancelled_at IS NULL",
            now,
            invite_id,
        )
        return n == 1

    # -- web sessions
    async def add_web_session(self, session: WebSessionRecord) -> None:
        try:
            await self._run(
                f"INSERT INTO web_sessions ({_WEB_SESSION_COLS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                session.id_hash,
                session.kind,
                session.user_name,
                session.csrf,
                session.data,
                session.created_at,
                session.last_seen_at,
                session.expires_at,
            )
        except DuplicateError:
            raise DuplicateError("web session exists already") from None

    async def get_web_session(self, id_hash: bytes, now: float) -> WebSessionRecord | None:
        row = await self._one(
            f"SELECT {_WEB_SESSION_COLS} FROM web_sessions WHERE id_hash = $1 AND expires_at > $2",
            id_hash,
            now,
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
        params: list[Any] = [now, id_hash]
        sets = ["last_seen_at = $1"]
        where = "id_hash = $2 AND expires_at > $1"
        if data is not None:
            params.append(data)
            sets.append(f"data = ${len(params)}")
        if expires_at is not None:
            params.append(expires_at)
            sets.append(f"expires_at = ${len(params)}")
        if expect_data is not None:
            # Compare-and-set: something shown once is shown to one request only.
            params.append(expect_data)
            where += f" AND data = ${len(params)}"
        n = await self._run(f"UPDATE web_sessions SET {', '.join(sets)} WHERE {where}", *params)
        return n == 1

    async def delete_web_session(self, id_hash: bytes) -> bool:
        return await self._run("DELETE FROM web_sessions WHERE id_hash = $1", id_hash) == 1

    async def delete_web_sessions(
        self, *, user_name: str | None = None, expired_before: float | None = None
    ) -> int:
        where: list[str] = []
        params: list[Any] = []
        if user_name is not None:
            params.append(user_name)
            where.append(f"user_name = ${len(params)}")
        if expired_before is not None:
            params.append(expired_before)
            where.append(f"expires_at <= ${len(params)}")
        if not where:
            return 0
        return await self._run(f"DELETE FROM web_sessions WHERE {' AND '.join(where)}", *params)

    # -- device certificates
    async def add_device(self, device: DeviceRecord) -> None:
        try:
            await self._run(
                f"INSERT INTO devices ({_DEVICE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                device.id,
                device.user_name,
                device.name,
                device.serial,
                device.fingerprint,
                device.created_at,
                device.expires_at,
                device.revoked_at,
            )
        except DuplicateError:
            raise DuplicateError(
                f"device {device.id!r} or its certificate exists already"
            ) from None

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        row = await self._one(f"SELECT {_DEVICE_COLS} FROM devices WHERE id = $1", device_id)
        return DeviceRecord(*row) if row else None

    async def find_device(self, fingerprint: str) -> DeviceRecord | None:
        row = await self._one(
            f"SELECT {_DEVICE_COLS} FROM devices WHERE fingerprint = $1", fingerprint
        )
        return DeviceRecord(*row) if row else None

    async def list_devices(
        self, *, user_name: str | None = None, include_revoked: bool = False
    ) -> list[DeviceRecord]:
        where: list[str] = []
        params: list[Any] = []
        if user_name is not None:
            params.append(user_name)
            where.append(f"user_name = ${len(params)}")
        if not include_revoked:
            where.append("revoked_at IS NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(
            f"SELECT {_DEVICE_COLS} FROM devices{clause} ORDER BY created_at, id{_C}", *params
        )
        return [DeviceRecord(*r) for r in rows]

    async def revoke_device(self, device_id: str, now: float) -> bool:
        n = await self._run(
            "UPDATE devices SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            now,
            device_id,
        )
        return n == 1

    async def revoke_user_devices(self, user_name: str, now: float) -> int:
        return await self._run(
            "UPDATE devices SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL",
            now,
            user_name,
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is (asyncpg still rolls back an open transaction).

    asyncpg's default runs `RESET ALL; UNLISTEN *; CLOSE ALL; ...` at every release: one more
    round trip per statement. This store never changes session state (no SET, no LISTEN, no
    session-level advisory lock, no cursor), so there is nothing to reset.
    """


async def _schema_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    return int(version) if version is not None else 0


def _clean(args: Sequence[Any]) -> list[Any]:
    # PostgreSQL text cannot hold NUL (SQLite can): a name a client sent with one is stored
    # and looked up with U+FFFD instead, rather than failing the login or its audit record.
    return [a.replace("\x00", "\ufffd") if isinstance(a, str) else a for a in args]


def _count(status: str) -> int:
    """Rows changed, from a command tag such as 'UPDATE 1' or 'INSERT 0 3'."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


def _message(exc: BaseException) -> str:
    # Only the primary message: a constraint's DETAIL would quote the row's values.
    text = getattr(exc, "message", None) or (exc.args[0] if exc.args else type(exc).__name__)
    return str(text)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and listening there?)"
    return exc.strerror or str(exc) or type(exc).__name__


def _user(r: Row) -> UserRecord:
    return UserRecord(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7])


def _token(r: Row) -> TokenRecord:
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


def _throttle(r: Row) -> ThrottleRecord:
    return ThrottleRecord(r[0], r[1], r[2], r[3], r[4], bool(r[5]))


def _callback(r: Row) -> CallbackRecord:
    return CallbackRecord(r[0], r[1], r[2], r[3], r[4], r[5])


def _pending(r: Row) -> PendingCallback:
    token_hash = bytes(r[4]) if r[4] is not None else None
    return PendingCallback(r[0], r[1], r[2], r[3], token_hash, r[5], r[6], r[7])


def _ssh_key(r: Row) -> SshKeyRecord:
    return SshKeyRecord(r[0], r[1], r[2], r[3], r[4], r[5])


def _invite(r: Row) -> InviteRecord:
    return InviteRecord(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6], r[7])


def _web_session(r: Row) -> WebSessionRecord:
    return WebSessionRecord(bytes(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7])


def _audit(r: Row) -> AuditRecord:
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
