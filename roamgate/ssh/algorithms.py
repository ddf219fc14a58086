"""The SSH door's algorithms: modern, forward-secret, AEAD or encrypt-then-MAC only.

asyncssh's defaults include SHA-1, CBC, NIST curves and small groups (ssh-audit: 9 failures);
these lists keep what OpenSSH 9 prefers. Strict key exchange (Terrapin, CVE-2023-48795) is on
by default in asyncssh >= 2.14.2.
"""

from __future__ import annotations

KEX = (
    "mlkem768x25519-sha256",  # post-quantum hybrid, when both sides have it
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group16-sha512",
)
# No chacha20-poly1305: OpenSSH clients pick it first when offered, and in asyncssh it costs the
# gateway's CPU about 1.7 times what AES-GCM does (bench/ssh_tunnel.py: 232 vs 394 MiB/s through
# one tunnel), which the gateway pays for every user at once. AES-GCM is as strong.
ENCRYPTION = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
MAC = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "umac-128-etm@openssh.com",
)
# Host-key signatures: no ssh-rsa (SHA-1).
SIGNATURE = ("ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256")
# zlib@openssh.com starts after authentication (no pre-auth decompression), and on a 29.2 kbit/s
# line it is worth having.
COMPRESSION = ("zlib@openssh.com", "none")
