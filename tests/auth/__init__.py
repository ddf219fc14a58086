"""Pure policy tests: OTP, backup codes, lockout, password hashes."""
