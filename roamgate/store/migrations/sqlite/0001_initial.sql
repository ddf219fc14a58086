-- The foundation schema: users, tokens, backup codes, throttling, callbacks, sessions, audit.
-- Times are seconds since the epoch (REAL); booleans are 0/1.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    email         TEXT,
    enabled       INTEGER NOT NULL DEFAULT 1,
    profile       TEXT NOT NULL DEFAULT 'lan',
    password_hash TEXT,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);

-- state: TOTP = last accepted time step (NULL before the first use); HOTP = next counter.
-- It only ever grows, by compare-and-set, which is what makes a code single-use.
CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('totp', 'hotp')),
    sealed_secret BLOB NOT NULL,
    digits        INTEGER NOT NULL,
    period        INTEGER NOT NULL,
    algorithm     TEXT NOT NULL,
    state         INTEGER,
    label         TEXT NOT NULL DEFAULT '',
    created_at    REAL NOT NULL,
    last_used_at  REAL,
    revoked_at    REAL
);
CREATE INDEX tokens_user ON tokens(user_id);

-- code_hash is an HMAC under the gateway key: the table alone does not reveal a code.
CREATE TABLE backup_codes (
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash  BLOB NOT NULL,
    created_at REAL NOT NULL,
    used_at    REAL,
    PRIMARY KEY (user_id, code_hash)
);

-- scope 'user' (key = user name) or 'source' (key = IPv4 address or IPv6 /64).
CREATE TABLE throttle (
    scope           TEXT NOT NULL,
    key             TEXT NOT NULL,
    failures        INTEGER NOT NULL DEFAULT 0,
    last_failure_at REAL,
    locked_until    REAL,
    hard_locked     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, key)
);

CREATE TABLE callbacks (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    channel     TEXT NOT NULL,
    address     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    verified_at REAL,
    UNIQUE (user_id, channel, address)
);

CREATE TABLE sessions (
    id               TEXT PRIMARY KEY,
    user_name        TEXT NOT NULL,
    door             TEXT NOT NULL,
    source           TEXT NOT NULL,
    device           TEXT,
    node             TEXT NOT NULL,
    started_at       REAL NOT NULL,
    last_seen_at     REAL NOT NULL,
    ended_at         REAL,
    end_reason       TEXT,
    end_requested_at REAL,
    bytes_in         INTEGER NOT NULL DEFAULT 0,
    bytes_out        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_open ON sessions(ended_at);

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    ts      REAL NOT NULL,
    kind    TEXT NOT NULL,
    result  TEXT NOT NULL,
    user_name TEXT,
    source  TEXT,
    door    TEXT,
    factor  TEXT,
    reason  TEXT,
    actor   TEXT,
    detail  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_ts ON audit(ts);
CREATE INDEX audit_user_ts ON audit(user_name, ts);
