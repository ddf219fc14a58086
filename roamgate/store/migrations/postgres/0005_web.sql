-- The web app: one-time enrollment invites, browser sessions and device certificates.
-- Neither an invite token nor a session id is stored: only their SHA-256, so the table alone
-- lets nobody enroll or act as an administrator. (The PostgreSQL twin of sqlite/0005.)

CREATE TABLE invites (
    id           text PRIMARY KEY,
    user_name    text NOT NULL,
    token_hash   bytea NOT NULL UNIQUE,
    created_at   double precision NOT NULL,
    expires_at   double precision NOT NULL,
    created_by   text NOT NULL,
    used_at      double precision,
    cancelled_at double precision
);
CREATE INDEX invites_user ON invites(user_name);

-- kind: 'enroll' (opened through an invite) or 'admin' (password + code). data is JSON the
-- web app owns (a pending token's sealed secret, backup codes sealed until shown once).
CREATE TABLE web_sessions (
    id_hash      bytea PRIMARY KEY,
    kind         text NOT NULL,
    user_name    text NOT NULL,
    csrf         text NOT NULL,
    data         text NOT NULL DEFAULT '{}',
    created_at   double precision NOT NULL,
    last_seen_at double precision NOT NULL,
    expires_at   double precision NOT NULL
);
CREATE INDEX web_sessions_expiry ON web_sessions(expires_at);

-- Client certificates issued from the private CA. fingerprint: SHA-256 of the DER, as the TLS
-- door names the device (cert:<fingerprint>); serial in lower-case hex, as the CRL lists it.
CREATE TABLE devices (
    id          text PRIMARY KEY,
    user_name   text NOT NULL,
    name        text NOT NULL,
    serial      text NOT NULL UNIQUE,
    fingerprint text NOT NULL UNIQUE,
    created_at  double precision NOT NULL,
    expires_at  double precision NOT NULL,
    revoked_at  double precision
);
CREATE INDEX devices_user ON devices(user_name);
