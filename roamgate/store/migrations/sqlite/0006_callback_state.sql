-- Callback verification: a policy per user, the sources a user logged in from, the device key
-- of a dial-back registration, and the one outstanding callback per user (compare-and-set).

CREATE TABLE callback_policies (
    user_id    INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    policy     TEXT NOT NULL CHECK (policy IN ('never', 'always', 'new_source')),
    updated_at REAL NOT NULL
);

-- key: 'net:<IPv4 /24 or IPv6 /64>' or 'device:<device>' seen in a successful login.
CREATE TABLE known_sources (
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen  REAL NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- The dial-back device key, sealed with the gateway key (NULL for other channels).
ALTER TABLE callbacks ADD COLUMN sealed_key BLOB;

-- At most one row per user: a new callback may only take the row once the old one is over.
-- token_hash: HMAC of the approve link's token under the gateway key (NULL for other channels).
-- status: pending -> delivered -> approved | denied | failed | done.
CREATE TABLE pending_callbacks (
    user_id    INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    id         TEXT NOT NULL UNIQUE,
    channel    TEXT NOT NULL,
    node       TEXT NOT NULL,
    token_hash BLOB,
    status     TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
