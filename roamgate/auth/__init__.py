"""Sans-IO authentication policy: one-time passwords, backup codes, lockout, password hashing."""
