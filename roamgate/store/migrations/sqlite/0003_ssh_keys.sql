-- SSH public keys a user may log in with instead of the password (never instead of the code).
-- public_key is the OpenSSH one-line form; fingerprint its SHA256:... form.

CREATE TABLE ssh_keys (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    UNIQUE (user_id, fingerprint)
);
