-- Travel windows: after a password+code login a device may log in with the password alone
-- until expires_at. device is 'cert:<sha256 of its client certificate>' or 'addr:<address>'.

CREATE TABLE travel_windows (
    id         TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL,
    device     TEXT NOT NULL,
    door       TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    UNIQUE (user_name, device)
);
