-- Callback verification: a policy per user, the sources a user logged in from, the device key
-- of a dial-back registration, and the one outstanding callback per user (compare-and-set).
-- (The PostgreSQL twin of sqlite/0006.)

CREATE TABLE callback_policies (
    user_id    bigint PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    policy     text NOT NULL CHECK (policy IN ('never', 'always', 'new_source')),
    updated_at double precision NOT NULL
);

-- key: 'net:<IPv4 /24 or IPv6 /64>' or 'device:<device>' seen in a successful login.
CREATE TABLE known_sources (
    user_id    bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key        text NOT NULL,
    first_seen double precision NOT NULL,
    last_seen  double precision NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- The dial-back device key, sealed with the gateway key (NULL for other channels).
ALTER TABLE callbacks ADD COLUMN sealed_key bytea;

-- At most one row per user: a new callback may only take the row once the old one is over.
-- token_hash: HMAC of the approve link's token under the gateway key (NULL for other channels).
-- status: pending -> delivered -> approved | denied | failed | done.
CREATE TABLE pending_callbacks (
    user_id    bigint PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    id         text NOT NULL UNIQUE,
    channel    text NOT NULL,
    node       text NOT NULL,
    token_hash bytea,
    status     text NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX pending_callbacks_token ON pending_callbacks(token_hash);
