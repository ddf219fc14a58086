-- The web app: one-time enrollment invites, browser sessions and device certificates.
-- Neither an invite token nor a session id is stored: only their SHA-256, so the table alone
-- lets nobody enroll or act as an administrator.

CREATE TABLE invites (
    id           TEXT PRIMARY KEY,
    user_name    TEXT NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    created_by   TEXT NOT NULL,
    used_at      REAL,
    cancelled_at REAL
);
CREATE INDEX invites_user ON invites(user_name);

-- kind: 'enroll' (opened through an invite) or 'admin' (password + code). data is JSON the
-- web app owns (a pending token's sealed secret, backup codes sealed until shown once).
CREATE TABLE web_sessions (
    id_hash      BLOB PRIMARY KEY,
    kind         TEXT NOT NULL,
    user_name    TEXT NOT NULL,
    csrf         TEXT NOT NULL,
    data         TEXT NOT NULL DEFAULT '{}',
    created_at   REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    expires_at   REAL NOT NULL
);
CREATE INDEX web_sessions_expiry ON web_sessions(expires_at);

-- Client certificates issued from the private CA. fingerprint: SHA-256 of the DER, as the TLS
-- door names the device (cert:<fingerprint>); serial in lower-case hex, as the CRL lists it.
CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    user_name   TEXT NOT NULL,
    name        TEXT NOT NULL,
    serial      TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    revoked_at  REAL
);
CREATE INDEX devices_user ON devices(user_name);
