-- A link profile for one of a user's devices (as `session list` names them: cert:..., addr:...),
-- which its sessions get unless the login name or the client's ID asks for another.

CREATE TABLE device_profiles (
    user_id    bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device     text NOT NULL,
    profile    text NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (user_id, device)
);
