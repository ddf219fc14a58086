-- Travel windows: after a password+code login a device may log in with the password alone
-- until expires_at. device is 'cert:<sha256 of its client certificate>' or 'addr:<address>'.

CREATE TABLE travel_windows (
    id         text PRIMARY KEY,
    user_name  text NOT NULL,
    device     text NOT NULL,
    door       text NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    revoked_at double precision,
    UNIQUE (user_name, device)
);
