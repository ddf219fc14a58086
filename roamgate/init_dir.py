"""`roamgate init`: a working gateway directory with config, keys, certificates and database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from roamgate import pki
from roamgate.secretbox import write_key_file
from roamgate.store import StoreError, open_store
from roamgate.store.urls import is_postgres, redact, split_password, url_problem

CONFIG_NAME = "roamgate.yaml"
KEY_NAME = "secret.key"
DB_NAME = "roamgate.db"
AUDIT_NAME = "audit.jsonl"
STORE_PASSWORD_NAME = "store.password"  # noqa: S105 (a file name)
TLS_DIR = "tls"

# Files init owns; --force replaces exactly these and nothing else in the directory.
OWNED = [
    CONFIG_NAME,
    KEY_NAME,
    DB_NAME,
    f"{DB_NAME}-wal",
    f"{DB_NAME}-shm",
    STORE_PASSWORD_NAME,
    f"{TLS_DIR}/ca.pem",
    f"{TLS_DIR}/ca.key",
    f"{TLS_DIR}/server.pem",
    f"{TLS_DIR}/server.key",
    "ssh_host_ed25519_key",
    "ssh_host_ed25519_key.pub",
    "ssh_host_rsa_key",
    "ssh_host_rsa_key.pub",
]


class InitError(Exception):
    """init cannot proceed; the message says why and what to do."""


@dataclass(frozen=True)
class InitOptions:
    directory: Path
    upstream_imap: tuple[str, int]
    upstream_smtp: tuple[str, int] | None = None
    upstream_tls: Literal["implicit", "starttls", "none"] | None = None
    upstream_ca: Path | None = None
    hostname: str = "localhost"
    listen_host: str = "127.0.0.1"
    ssh_port: int = 2022
    imaps_port: int = 9993
    imap_port: int = 9143
    web_port: int = 9443
    # The submission doors are written when there is an upstream.smtp to relay to.
    submission_port: int = 465
    submission_starttls_port: int = 587
    verifier: Literal["upstream", "local"] = "upstream"
    force: bool = False
    # A SQLite file (relative to the directory) or a postgresql:// URL shared by every node.
    store: str = DB_NAME


@dataclass(frozen=True)
class InitReport:
    config: Path
    ca_fingerprint: str
    ssh_fingerprints: list[tuple[Path, str]]
    created: list[Path]


def default_tls(port: int) -> Literal["implicit", "starttls"]:
    """993 and 465 speak TLS from the first byte; other ports upgrade with STARTTLS."""
    return "implicit" if port in (993, 465) else "starttls"


def _q(value: str) -> str:
    # JSON strings are valid YAML scalars: quoting stays correct for any name or path.
    return json.dumps(value)


SUBMISSION_SECTION = """\
# Sending mail (the submission doors and the SSH door's `submission`). More in README.md.
submission:
  upstream_login: passthrough      # passthrough | relay (relay_user + relay_password_file) | none
  # sender_domain: example.com     # a user without --email owns USER@this domain
  max_recipients: 50               # per message
  max_messages_per_hour: 100       # per user, counted over every node
  max_message_bytes: 26214400      # announced as SIZE
  users: {}                        # e.g. alice: {senders: [sales@example.com], max_recipients: 200}

"""


def render_config(o: InitOptions) -> str:
    imap_host, imap_port = o.upstream_imap
    tls = o.upstream_tls or default_tls(imap_port)
    ca_line = f"    ca_file: {_q(str(o.upstream_ca))}\n" if o.upstream_ca else ""
    smtp = ""
    if o.upstream_smtp is not None:
        smtp_host, smtp_port = o.upstream_smtp
        smtp_tls = o.upstream_tls or default_tls(smtp_port)
        smtp = (
            "  smtp:\n"
            f"    host: {_q(smtp_host)}\n"
            f"    port: {smtp_port}\n"
            f"    tls: {smtp_tls}\n"
            f"{ca_line}"
        )
    listen = _q(o.listen_host)
    submission_doors = ""
    submission = ""
    if o.upstream_smtp is not None:
        submission_doors = (
            "  submissions:      # SMTP submission with TLS from the first byte (RFC 8314)\n"
            f"    host: {listen}\n"
            f"    port: {o.submission_port}\n"
            "  submission:       # SMTP submission with STARTTLS (no AUTH before it)\n"
            f"    host: {listen}\n"
            f"    port: {o.submission_starttls_port}\n"
        )
        submission = SUBMISSION_SECTION
    return f"""\
# roamgate configuration, written by `roamgate init`.
# Check it with: roamgate check-config -c {CONFIG_NAME}
# Relative paths are relative to this file's directory.
# Secrets never go in this file: a key ending in _file names a file that holds the secret,
# a key ending in _env names an environment variable that does.
# Every key is described in README.md ("Configuration").

hostname: {_q(o.hostname)}

# The front doors. Remove a section (or set enabled: false) to keep that door closed.
listeners:
  ssh:
    host: {listen}
    port: {o.ssh_port}
  imaps:            # IMAP with TLS from the first byte
    host: {listen}
    port: {o.imaps_port}
  imap:             # IMAP with STARTTLS (no login before it)
    host: {listen}
    port: {o.imap_port}
  web:              # enrollment and admin pages (HTTPS)
    host: {listen}
    port: {o.web_port}
{submission_doors}
tls:
  cert_file: {TLS_DIR}/server.pem
  key_file: {TLS_DIR}/server.key
  ca_file: {TLS_DIR}/ca.pem          # the private CA: give it to clients to verify the gateway
  ca_key_file: {TLS_DIR}/ca.key
  client_certificates: none        # none | optional | required

# The SSH door forwards only to named services: `imap` (roamgate's own IMAP proxy, no new
# code needed in the tunnel), `submission` (roamgate's own submission door, relaying to
# upstream.smtp) and the forwards listed here.
ssh:
  host_key_files:
    - ssh_host_ed25519_key
    - ssh_host_rsa_key
  login_timeout_seconds: 60
  max_auth_attempts: 6             # password/code answers per connection
  keepalive_seconds: 30            # a silent client is probed; 3 unanswered probes end it
  max_connections_per_source: 10
  forwards: {{}}                     # e.g. wiki: {{target: "10.0.0.5:80", users: [alice]}}

# The corporate mail servers behind the gateway.
upstream:
  imap:
    host: {_q(imap_host)}
    port: {imap_port}
    tls: {tls}                 # implicit | starttls | none (none: loopback only)
{ca_line}{smtp}
auth:
  # upstream: the corporate IMAP password, checked by a login to upstream.imap (no password
  # is stored here); local: scrypt hashes set with `roamgate user passwd`.
  password_verifier: {o.verifier}
  # After a password+code login the same device (its client certificate, else user + source
  # address) may log in with the password alone this long (12 h); 0 turns this off.
  travel_window_seconds: 43200
  # local only: after a good scrypt check the password is accepted from memory (an HMAC under a
  # per-process key, never the password) for 15 minutes; 0 turns this off.
  password_cache_seconds: 900
  otp:
    digits: 6
    totp_period_seconds: 30
    totp_window_steps: 1           # accept codes one step (30 s) early or late
    hotp_look_ahead: 10
    issuer: "roamgate"
  lockout:
    user_threshold: 10             # failures before the first lock
    user_lock_seconds: 60          # first lock; doubles with each further failure
    user_lock_max_seconds: 3600
    hard_lock_after: 99            # then only `roamgate user unlock` helps (NIST: < 100)
    ip_threshold: 20
    ip_lock_seconds: 60
    ip_lock_max_seconds: 3600
    ip_forget_seconds: 3600

# The IMAP doors (imaps, imap). More keys in README.md ("Configuration").
imap_proxy:
  login_grace_seconds: 120         # to log in after connecting
  idle_timeout_seconds: 1800       # a silent logged-in client (not in IDLE) is logged out
  max_connections: 1000
  max_connections_per_source: 20
  failure_delay_ms: 2500           # before a failed login is answered; above the upstream's own (Dovecot: 2 s)
  upstream_login: passthrough      # passthrough | master (a Dovecot master user)

{submission}{_store_section(o.store)}
secrets:
  key_file: {KEY_NAME}             # encrypts token secrets at rest; keep it 0600 and backed up

audit:
  file: {AUDIT_NAME}
  retention_days: 400

logging:
  level: info
"""


def _store_section(store: str) -> str:
    if not is_postgres(store):
        return f"store:\n  url: {_q(store)}                 # a SQLite file\n"
    url, password = split_password(store)
    lines = [
        "store:",
        "  # PostgreSQL, shared by every node; each node keeps at most pool_size connections.",
        f"  url: {_q(url)}",
    ]
    if password is not None:
        lines.append(f"  password_file: {STORE_PASSWORD_NAME}   # 0600, like the key")
    lines.append("  pool_size: 10")
    return "\n".join(lines) + "\n"


async def _prepare_postgres(url: str) -> None:
    """Reach the database and bring its schema up to date; refuse one that holds a gateway.

    Done before any file is written: a wrong URL leaves the directory as it was.
    """
    try:
        store = await open_store(url, migrate=False)
    except StoreError as exc:
        raise InitError(str(exc)) from None
    try:
        if await store.schema_version() > 0 and await store.list_users():
            # Its token secrets are sealed with another node's key: a new key cannot open them.
            raise InitError(
                f"the database at {redact(url)} already holds a gateway's users; nodes share"
                " one config and key: copy the first node's directory to this one instead"
            )
        await store.migrate()
    except StoreError as exc:
        raise InitError(str(exc)) from None
    finally:
        await store.close()


async def init_directory(o: InitOptions) -> InitReport:
    d = o.directory
    problem = url_problem(o.store)
    if problem is not None:
        raise InitError(f"--store: {problem}")
    d.mkdir(parents=True, exist_ok=True)
    existing = [name for name in OWNED if (d / name).exists()]
    if existing and not o.force:
        raise InitError(
            f"{d} already holds a gateway ({', '.join(existing[:3])}"
            f"{', ...' if len(existing) > 3 else ''}); use --force to replace it"
        )
    if is_postgres(o.store):
        await _prepare_postgres(o.store)
    for name in existing:
        (d / name).unlink()
    (d / TLS_DIR).mkdir(exist_ok=True)
    created: list[Path] = []

    write_key_file(d / KEY_NAME)
    created.append(d / KEY_NAME)

    ca_key, ca_cert = pki.make_ca(o.hostname)
    extra = [o.listen_host] if o.listen_host not in ("0.0.0.0", "::") else []  # noqa: S104
    # The web door publishes the CA's CRL (DER at /crl.der): the certificate says where.
    host = f"[{o.hostname}]" if ":" in o.hostname else o.hostname
    crl_url = f"https://{host}:{o.web_port}/crl.der"
    server_key, server_cert = pki.issue_server_cert(
        ca_key, ca_cert, o.hostname, extra, crl_url=crl_url
    )
    for name, data, private in (
        (f"{TLS_DIR}/ca.pem", pki.cert_pem(ca_cert), False),
        (f"{TLS_DIR}/ca.key", pki.key_pem(ca_key), True),
        (f"{TLS_DIR}/server.pem", pki.cert_pem(server_cert), False),
        (f"{TLS_DIR}/server.key", pki.key_pem(server_key), True),
    ):
        if private:
            pki.write_private(d / name, data)
        else:
            (d / name).write_bytes(data)
        created.append(d / name)

    ssh_keys = pki.make_ssh_host_keys(d)
    created += [p for p, _fp in ssh_keys]

    if is_postgres(o.store):
        password = split_password(o.store)[1]
        if password is not None:
            pki.write_private(d / STORE_PASSWORD_NAME, password.encode() + b"\n")
            created.append(d / STORE_PASSWORD_NAME)
    else:
        db = d / o.store  # an absolute path replaces d
        store = await open_store(str(db), create=True)
        await store.close()
        created.append(db)

    config_path = d / CONFIG_NAME
    config_path.write_text(render_config(o), encoding="utf-8")
    created.append(config_path)
    return InitReport(config_path, pki.cert_fingerprint(ca_cert), ssh_keys, created)
