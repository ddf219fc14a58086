"""The login decision: first factor, second factor, throttling and audit, tied to the store."""
