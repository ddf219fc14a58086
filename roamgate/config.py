"""The gateway's configuration: roamgate.yaml bound onto frozen, typed dataclasses."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from roamgate.profiles import LinkProfile, merged_profiles
from roamgate.store.urls import is_postgres, split_password, url_problem
from roamgate.yamlbind import PORT, ConfigError, ConfigIssue, Secret, int_range, load_yaml_into

__all__ = ["Config", "ConfigError", "ConfigIssue", "Secret", "load_config"]

DEFAULT_CONFIG_NAME = "roamgate.yaml"
# Profile names travel in IMAP user names (`alice#phs`) and audit lines: keep them plain.
PROFILE_NAME = re.compile(r"[a-z0-9_-]{1,32}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_ADDRESS = re.compile(r"[^@\s<>]{1,64}@[^@\s<>]{1,253}")


@dataclass(frozen=True)
class Listener:
    """One front door's socket."""

    port: int = field(metadata=PORT)
    host: str = "127.0.0.1"
    enabled: bool = True
    # Behind a load balancer: every connection must come from `trusted_proxies` and begin with
    # a PROXY v1/v2 header naming the client; any other connection is closed and audited.
    proxy_protocol: bool = False


@dataclass(frozen=True)
class Listeners:
    """The front doors. A door left out of the file is not opened."""

    ssh: Listener | None = None
    imaps: Listener | None = None
    imap: Listener | None = None
    web: Listener | None = None
    submissions: Listener | None = None  # SMTP submission with TLS from the first byte (465)
    submission: Listener | None = None  # SMTP submission with STARTTLS before AUTH (587)


# Every listener name, in the order serve opens them and the checks walk them.
LISTENER_NAMES = ("ssh", "imaps", "imap", "web", "submissions", "submission")


@dataclass(frozen=True)
class TlsFiles:
    """Certificate and key of the TLS doors, and the private CA that signed them."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    ca_key_file: Path | None = None
    client_certificates: Literal["none", "optional", "required"] = "none"


@dataclass(frozen=True)
class SshForward:
    """A further service the SSH door forwards to, for the users named (none: nobody)."""

    target: str  # HOST:PORT inside the company
    users: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResumeSettings:
    """Resumable IMAP streams (`imap-resume`): kept with their upstream session while the line is down."""

    enabled: bool = True
    # How long a stream and its upstream IMAP session wait for the connector to come back.
    grace_seconds: int = field(default=600, metadata=int_range(1, 86400))
    # Bytes sent but not yet acknowledged, kept per stream for a resend (the back-pressure window).
    buffer_bytes: int = field(default=1024 * 1024, metadata=int_range(64 * 1024, 16 * 1024 * 1024))
    max_streams_per_user: int = field(default=16, metadata=int_range(1, 1000))


@dataclass(frozen=True)
class SshSettings:
    """The SSH door: host keys, login limits, keep-alives and the forwards it allows."""

    host_key_files: tuple[Path, ...]
    login_timeout_seconds: int = field(default=60, metadata=int_range(5, 600))
    # asyncssh has no MaxAuthTries: password/code answers (and keys) counted per connection.
    max_auth_attempts: int = field(default=6, metadata=int_range(1, 20))
    # Wait before answering a failed login: slows guessing, hides which factor failed.
    failure_delay_ms: int = field(default=2500, metadata=int_range(0, 10000))
    keepalive_seconds: int = field(default=30, metadata=int_range(5, 3600))
    keepalive_count_max: int = field(default=3, metadata=int_range(1, 100))
    max_connections: int = field(default=500, metadata=int_range(1, 100000))
    max_connections_per_source: int = field(default=10, metadata=int_range(1, 10000))
    max_channels_per_connection: int = field(default=32, metadata=int_range(1, 1000))
    # How long a revoked session may run on before this node notices (it polls the store).
    session_check_seconds: int = field(default=5, metadata=int_range(1, 300))
    # Named services besides `imap` and `submission`: `-L 8080:NAME:80` or the exact target.
    forwards: dict[str, SshForward] = field(default_factory=dict)
    resume: ResumeSettings = field(default_factory=ResumeSettings)


@dataclass(frozen=True)
class UpstreamServer:
    """A corporate server behind the gateway."""

    host: str
    port: int = field(metadata=PORT)
    tls: Literal["implicit", "starttls", "none"] = "starttls"
    ca_file: Path | None = None
    timeout_seconds: int = field(default=15, metadata=int_range(1, 300))


@dataclass(frozen=True)
class Upstream:
    """The corporate mail servers."""

    imap: UpstreamServer
    smtp: UpstreamServer | None = None


@dataclass(frozen=True)
class ImapProxySettings:
    """The IMAP doors (imaps and imap+STARTTLS): timeouts, caps and how the upstream login is made."""

    login_grace_seconds: int = field(default=120, metadata=int_range(10, 600))
    # A logged-in client silent this long (not in IDLE, nothing outstanding) is logged out.
    idle_timeout_seconds: int = field(default=1800, metadata=int_range(60, 86400))
    # Upstream IDLE is renewed before servers drop it at 30 minutes (RFC 2177).
    idle_renew_seconds: int = field(default=1500, metadata=int_range(30, 1740))
    keepalive_seconds: int = field(default=120, metadata=int_range(10, 1800))
    max_connections: int = field(default=1000, metadata=int_range(1, 100000))
    max_connections_per_source: int = field(default=20, metadata=int_range(1, 10000))
    # Wait before answering a failed login: slows guessing, hides which factor failed.
    failure_delay_ms: int = field(default=2500, metadata=int_range(0, 10000))
    max_login_failures: int = field(default=3, metadata=int_range(1, 10))
    # Upstream connections made ahead of logins (TLS done, not logged in), and how long one is
    # kept unused; 0 spares: connect at each login.
    upstream_spares: int = field(default=2, metadata=int_range(0, 50))
    upstream_spare_seconds: int = field(default=20, metadata=int_range(1, 120))
    # How long a revoked session may run on before this node notices (it polls the store).
    session_check_seconds: int = field(default=5, metadata=int_range(1, 300))
    # passthrough: log in upstream as the user with their password. master: as
    # `user<separator>master_user` with the master password (Dovecot master users), for
    # password verifiers whose password the upstream does not know.
    upstream_login: Literal["passthrough", "master"] = "passthrough"
    master_user: str | None = None
    master_password: Secret | None = None
    master_separator: str = "*"
    # `alice#phs` as the IMAP user name picks the link profile `phs` for that session.
    profile_separator: str = "#"


@dataclass(frozen=True)
class SubmissionUser:
    """One user's own sending rules; a limit left out follows the submission: section."""

    # Addresses the user may send as, besides their own (user add --email, else user@domain).
    senders: tuple[str, ...] = ()
    max_recipients: int | None = field(default=None, metadata=int_range(1, 10000))
    max_messages_per_hour: int | None = field(default=None, metadata=int_range(1, 100000))
    max_message_bytes: int | None = field(default=None, metadata=int_range(1024, 1 << 30))


@dataclass(frozen=True)
class SubmissionSettings:
    """The SMTP submission doors (submissions, submission) and the SSH door's `submission`."""

    # passthrough: AUTH upstream as the user with their password. relay: as relay_user with
    # relay_password (an account the upstream lets send for everyone). none: no AUTH upstream
    # (an upstream that trusts the gateway's address); the gateway's own policy still applies.
    upstream_login: Literal["passthrough", "relay", "none"] = "passthrough"
    relay_user: str | None = None
    relay_password: Secret | None = None
    # A user without an e-mail address of record owns USER@sender_domain (none: no address).
    sender_domain: str | None = None
    max_recipients: int = field(default=50, metadata=int_range(1, 10000))
    max_messages_per_hour: int = field(default=100, metadata=int_range(1, 100000))
    max_message_bytes: int = field(default=25 << 20, metadata=int_range(1024, 1 << 30))
    # A message larger than this goes to a temporary file instead of memory.
    spool_memory_bytes: int = field(default=256 << 10, metadata=int_range(0, 64 << 20))
    # Where spool files go (default: the system's temporary directory).
    spool_dir: Path | None = None
    # All messages on disk at once, on this node: past it a message is refused with 452 4.3.1
    # (temporary) instead of filling the disk the audit log and the store live on.
    spool_max_bytes: int = field(default=1 << 30, metadata=int_range(1 << 20, 1 << 40))
    login_grace_seconds: int = field(default=120, metadata=int_range(10, 600))
    idle_timeout_seconds: int = field(default=300, metadata=int_range(30, 3600))
    max_connections: int = field(default=500, metadata=int_range(1, 100000))
    max_connections_per_source: int = field(default=10, metadata=int_range(1, 10000))
    # Wait before answering a failed AUTH: slows guessing, hides which factor failed.
    failure_delay_ms: int = field(default=2500, metadata=int_range(0, 10000))
    max_login_failures: int = field(default=3, metadata=int_range(1, 10))
    users: dict[str, SubmissionUser] = field(default_factory=dict)


@dataclass(frozen=True)
class OtpSettings:
    """One-time password policy."""

    digits: int = field(default=6, metadata=int_range(6, 8))
    totp_period_seconds: int = field(default=30, metadata=int_range(15, 120))
    totp_window_steps: int = field(default=1, metadata=int_range(0, 5))
    hotp_look_ahead: int = field(default=10, metadata=int_range(0, 100))
    hotp_resync_window: int = field(default=200, metadata=int_range(10, 10000))
    drift_report_steps: int = field(default=20, metadata=int_range(0, 1000))
    issuer: str = "roamgate"


@dataclass(frozen=True)
class Lockout:
    """Throttling against guessing (NIST SP 800-63B 5.2.2)."""

    user_threshold: int = field(default=10, metadata=int_range(1, 99))
    user_lock_seconds: int = field(default=60, metadata=int_range(1, 86400))
    user_lock_max_seconds: int = field(default=3600, metadata=int_range(1, 7 * 86400))
    hard_lock_after: int = field(default=99, metadata=int_range(2, 99))
    ip_threshold: int = field(default=20, metadata=int_range(1, 100000))
    ip_lock_seconds: int = field(default=60, metadata=int_range(1, 86400))
    ip_lock_max_seconds: int = field(default=3600, metadata=int_range(1, 7 * 86400))
    ip_forget_seconds: int = field(default=3600, metadata=int_range(60, 30 * 86400))


@dataclass(frozen=True)
class AuthSettings:
    """How logins are checked."""

    password_verifier: Literal["upstream", "local", "ldap"] = "upstream"  # noqa: S105
    # After a password+code login the device may use the password alone this long (0: never).
    travel_window_seconds: int = field(default=12 * 3600, metadata=int_range(0, 30 * 86400))
    # `local` only: a password that passed scrypt is accepted from memory (an HMAC of it under
    # a per-process key, never the password) for this long; 0: every login pays scrypt.
    password_cache_seconds: int = field(default=900, metadata=int_range(0, 3600))
    password_cache_size: int = field(default=10000, metadata=int_range(1, 1_000_000))
    otp: OtpSettings = field(default_factory=OtpSettings)
    lockout: Lockout = field(default_factory=Lockout)


@dataclass(frozen=True)
class LdapSettings:
    """The corporate directory: password checks, group access, attributes and user sync."""

    # ldaps://HOST[:PORT], or ldap://HOST[:PORT] with start_tls: true (plain LDAP is refused).
    url: str
    bind_dn: str  # the service account that searches; its password from bind_password_file/_env
    bind_password: Secret
    user_base: str
    # Who may use the gateway: members (direct or nested) of any of these groups (DNs).
    groups: tuple[str, ...]
    start_tls: bool = False
    ca_file: Path | None = None  # unset: the system CAs
    user_filter: str = "(objectClass=inetOrgPerson)"
    user_attribute: str = "uid"  # the gateway user name is this attribute's value
    # Entries matching this filter are disabled in the directory, e.g. AD's
    # (userAccountControl:1.2.840.113556.1.4.803:=2); unset: none is.
    disabled_filter: str | None = None
    group_base: str | None = None  # unset: user_base's parent is searched for groups
    group_filter: str = "(objectClass=groupOfNames)"
    member_attribute: str = "member"
    # memberof: the entries' memberOf attribute (OpenLDAP overlay, AD); search: group searches.
    membership: Literal["memberof", "search"] = "memberof"
    max_nesting: int = field(default=8, metadata=int_range(1, 32))
    # Group DN -> link profile / callback policy of its members (first listed group wins).
    profiles: dict[str, str] = field(default_factory=dict)
    callback_policies: dict[str, Literal["never", "always", "new_source"]] = field(
        default_factory=dict
    )
    mail_attribute: str | None = "mail"
    callback_number_attribute: str | None = None  # e.g. mobile: registered as a webhook callback
    certificate_attribute: str | None = "userCertificate;binary"
    timeout_seconds: int = field(default=10, metadata=int_range(1, 120))
    # How often serve syncs users; a user who left the group is shut out within this time.
    sync_interval_seconds: int = field(default=300, metadata=int_range(1, 86400))
    # Reuse a group decision for this long (0: never); the password is never cached.
    group_cache_seconds: int = field(default=0, metadata=int_range(0, 3600))
    max_connections: int = field(default=4, metadata=int_range(1, 64))
    # A round that would disable more users than this disables none and says so (0: no cap):
    # an ACL that hides part of the tree, or a wrong base, should not shut out half the company.
    sync_max_disable: int = field(default=25, metadata=int_range(0, 1_000_000))


@dataclass(frozen=True)
class CallbackSettings:
    """Callback verification: which channels exist, the SMS/voice provider, the login's wait."""

    # The channels a registration may use, in the order a login tries them.
    channels: tuple[Literal["webhook", "dialback", "approve"], ...] = (
        "webhook",
        "dialback",
        "approve",
    )
    # Policy of users who have none of their own (`roamgate user set --callback-policy`).
    default_policy: Literal["never", "always", "new_source"] = "never"
    timeout_seconds: int = field(default=120, metadata=int_range(2, 600))
    # Wrong codes typed before the callback fails.
    max_attempts: int = field(default=3, metadata=int_range(1, 10))
    # The SMS/voice provider: a JSON POST, HMAC-signed with provider_secret (from a file).
    provider_url: str | None = None
    provider_secret: Secret | None = None
    provider_timeout_seconds: int = field(default=10, metadata=int_range(1, 120))
    # A provider status callback older (or newer) than this is refused.
    status_max_age_seconds: int = field(default=300, metadata=int_range(10, 3600))
    # The gateway's web address as users and the provider reach it (approve links, status).
    public_url: str | None = None
    dialback_timeout_seconds: int = field(default=10, metadata=int_range(1, 120))
    # Until the web door serves /callback/...: a plain HTTP listener of its own (tests, labs).
    http: Listener | None = None


@dataclass(frozen=True)
class StoreSettings:
    """Where state lives: a SQLite file path (one node) or a postgresql:// URL (several nodes)."""

    url: str = "roamgate.db"
    # The PostgreSQL password, when the URL carries none (password_file or password_env).
    password: Secret | None = None
    # Connections each node keeps to PostgreSQL at most (SQLite: one, this is ignored).
    pool_size: int = field(default=10, metadata=int_range(1, 200))


@dataclass(frozen=True)
class Secrets:
    """The key that encrypts token secrets at rest (32 random bytes, base64)."""

    key: Secret


@dataclass(frozen=True)
class AuditSettings:
    """The audit trail: kept in the store and appended to a JSON-lines file."""

    file: Path = Path("audit.jsonl")
    retention_days: int = field(default=400, metadata=int_range(1, 36500))
    # How often `serve` drops records older than retention_days (store and rotated files).
    prune_interval_seconds: int = field(default=3600, metadata=int_range(1, 86400))


@dataclass(frozen=True)
class AlertSettings:
    """A webhook told about lockouts, failure bursts and the upstream going away (and back)."""

    url: str
    # Signs each POST (HMAC-SHA256); from a file or the environment, never inline.
    secret: Secret
    timeout_seconds: int = field(default=5, metadata=int_range(1, 60))
    max_attempts: int = field(default=5, metadata=int_range(1, 20))
    retry_base_seconds: int = field(default=1, metadata=int_range(1, 300))
    # Alerts waiting to be sent; when full, new ones are dropped (counted, logged), never waited for.
    queue_size: int = field(default=1000, metadata=int_range(1, 100000))
    # This many failed logins from one source network within the window: one alert per window.
    failure_threshold: int = field(default=20, metadata=int_range(1, 100000))
    failure_window_seconds: int = field(default=300, metadata=int_range(1, 86400))
    # How often the upstream IMAP server is probed (a connection and its greeting).
    upstream_check_seconds: int = field(default=30, metadata=int_range(1, 3600))


@dataclass(frozen=True)
class DoctorSettings:
    """`roamgate doctor`: where it may ask the time (only hosts named here are contacted)."""

    # An http(s) URL whose Date header is the clock reference; without one the upstream SMTP
    # greeting's date is used when it carries one.
    clock_url: str | None = None


@dataclass(frozen=True)
class LoggingSettings:
    """Operational logs (never secrets)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    file: Path | None = None


@dataclass(frozen=True)
class WebSettings:
    """The web app: enrollment through invites, admin pages, device certificates."""

    # Users who may log in to the admin pages (with password and code).
    admins: tuple[str, ...] = ()
    # The address put in invite links; default https://HOSTNAME:WEB_PORT.
    base_url: str | None = None
    invite_hours: int = field(default=72, metadata=int_range(1, 30 * 24))
    enroll_session_minutes: int = field(default=30, metadata=int_range(5, 240))
    admin_idle_minutes: int = field(default=15, metadata=int_range(1, 240))
    admin_session_hours: int = field(default=8, metadata=int_range(1, 24))
    # Wait before answering a failed login form: slows guessing, hides which factor failed.
    failure_delay_ms: int = field(default=1000, metadata=int_range(0, 10000))
    device_cert_days: int = field(default=365, metadata=int_range(1, 3650))
    # The CRL written on every revocation (also served at /crl.pem); relative to the config.
    crl_file: Path = Path("tls/crl.pem")
    # Who may read /metrics (addresses or networks); everyone else gets 403.
    metrics_allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    # /healthz answers from a result at most this old, so a storm of checks costs one probe.
    health_cache_seconds: int = field(default=5, metadata=int_range(1, 300))
    # The upstream probe of /healthz gives up after this long.
    health_timeout_seconds: int = field(default=5, metadata=int_range(1, 60))


@dataclass(frozen=True)
class Config:
    """The whole of roamgate.yaml."""

    hostname: str
    upstream: Upstream
    secrets: Secrets
    tls: TlsFiles
    listeners: Listeners = field(default_factory=Listeners)
    ssh: SshSettings | None = None
    imap_proxy: ImapProxySettings = field(default_factory=ImapProxySettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    web: WebSettings = field(default_factory=WebSettings)
    doctor: DoctorSettings = field(default_factory=DoctorSettings)
    callback: CallbackSettings | None = None
    ldap: LdapSettings | None = None
    # Link profiles by name: added to the built-in ones (lan, isdn, phs, pda) or replacing one.
    profiles: dict[str, LinkProfile] = field(default_factory=dict)
    alerts: AlertSettings | None = None
    # SIGTERM: how long in-flight transfers may run on before the doors close regardless.
    drain_seconds: int = field(default=30, metadata=int_range(0, 3600))
    # Load balancers (addresses or CIDR networks) whose PROXY headers the doors with
    # `proxy_protocol: true` believe; nobody else may connect to those doors.
    trusted_proxies: tuple[str, ...] = ()
    # Set by load_config, not read from the file.
    path: Path = field(default=Path(DEFAULT_CONFIG_NAME), metadata={"internal": True})

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def store_url(self) -> str:
        """The store URL with a relative SQLite path resolved against the config's directory."""
        url = self.store.url
        if "://" in url:
            return url
        p = Path(url).expanduser()
        return str(p if p.is_absolute() else self.base_dir / p)

    def store_password(self) -> str | None:
        """The PostgreSQL password from store.password_file/_env (None: the URL's, if any)."""
        if self.store.password is None:
            return None
        return self.store.password.text().rstrip("\r\n")

    def link_profiles(self) -> dict[str, LinkProfile]:
        """Every profile a user or a login may name: the built-in ones and the config's own."""
        return merged_profiles(self.profiles)


def _cross_checks(cfg: Config, lines: dict[str, int], *, key_files: bool) -> list[ConfigIssue]:
    """Rules that involve more than one key or the file system."""
    issues: list[ConfigIssue] = []

    def at(key: str, message: str) -> None:
        # Fall back to the nearest enclosing key that has a line.
        probe = key
        while probe and probe not in lines:
            probe = probe.rpartition(".")[0]
        issues.append(ConfigIssue(lines.get(probe, 1), key, message))

    lock = cfg.auth.lockout
    if lock.user_lock_max_seconds < lock.user_lock_seconds:
        at("auth.lockout.user_lock_max_seconds", "must not be shorter than user_lock_seconds")
    if lock.hard_lock_after <= lock.user_threshold:
        at("auth.lockout.hard_lock_after", "must be larger than user_threshold")
    if lock.ip_lock_max_seconds < lock.ip_lock_seconds:
        at("auth.lockout.ip_lock_max_seconds", "must not be shorter than ip_lock_seconds")

    bound: dict[tuple[str, int], str] = {}
    for name in LISTENER_NAMES:
        listener: Listener | None = getattr(cfg.listeners, name)
        if listener is None or not listener.enabled:
            continue
        try:
            ipaddress.ip_address(listener.host)
        except ValueError:
            at(f"listeners.{name}.host", f"expected an IP address, got {listener.host!r}")
        other = bound.get((listener.host, listener.port))
        if other is not None:
            at(
                f"listeners.{name}.port",
                f"port {listener.port} is already used by listeners.{other}",
            )
        bound[(listener.host, listener.port)] = name
    for name in ("submissions", "submission"):
        listener = getattr(cfg.listeners, name)
        if listener is not None and listener.enabled and cfg.upstream.smtp is None:
            at(f"listeners.{name}", "the submission door needs upstream.smtp to relay to")
    sub = cfg.submission
    if sub.upstream_login == "relay" and (sub.relay_user is None or sub.relay_password is None):
        at("submission.upstream_login", "relay needs relay_user and relay_password_file")
    if sub.sender_domain is not None and not _DOMAIN.fullmatch(sub.sender_domain):
        at("submission.sender_domain", f"expected a domain name, got {sub.sender_domain!r}")
    largest = max([sub.max_message_bytes, *(u.max_message_bytes or 0 for u in sub.users.values())])
    if sub.spool_max_bytes < largest:
        at(
            "submission.spool_max_bytes",
            f"{sub.spool_max_bytes} is less than the largest message allowed ({largest}):"
            " such a message could never be taken",
        )
    for name, own in sub.users.items():
        for n, address in enumerate(own.senders):
            if not _ADDRESS.fullmatch(address):
                at(f"submission.users.{name}.senders.{n}", f"expected an address, got {address!r}")
    url = cfg.doctor.clock_url
    if url is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        at("doctor.clock_url", f"expected an http:// or https:// URL, got {url!r}")
    for i, entry in enumerate(cfg.trusted_proxies):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            at(f"trusted_proxies[{i}]", f"expected an IP address or network, got {entry!r}")
    for door in fields(cfg.listeners):
        name = door.name
        listener = getattr(cfg.listeners, name)
        if listener is None or not listener.enabled or not listener.proxy_protocol:
            continue
        if name == "web":
            at("listeners.web.proxy_protocol", "the web door takes no PROXY header")
        elif not cfg.trusted_proxies:
            at(
                f"listeners.{name}.proxy_protocol",
                "needs trusted_proxies: the load balancers' addresses",
            )
    if cfg.listeners.ssh is not None and cfg.listeners.ssh.enabled and cfg.ssh is None:
        at("listeners.ssh", "the SSH door needs an ssh: section with host_key_files")
    if cfg.ssh is not None:
        for name, rule in cfg.ssh.forwards.items():
            key = f"ssh.forwards.{name}"
            if name.lower() in ("imap", "submission"):
                at(key, f"{name!r} is built in; choose another name")
            host, sep, port = rule.target.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                at(f"{key}.target", f"expected HOST:PORT, got {rule.target!r}")

    for name in cfg.profiles:
        if not PROFILE_NAME.fullmatch(name):
            at(f"profiles.{name}", "a profile name is 1-32 of a-z, 0-9, '_' and '-'")
        elif name == "user":
            at(f"profiles.{name}", "'user' is reserved (`user set --device D --profile user`)")

    if cfg.callback is not None:
        cb = cfg.callback
        if cb.http is not None and cb.http.enabled:
            try:
                ipaddress.ip_address(cb.http.host)
            except ValueError:
                at("callback.http.host", f"expected an IP address, got {cb.http.host!r}")
            other = bound.get((cb.http.host, cb.http.port))
            if other is not None:
                at(
                    "callback.http.port",
                    f"port {cb.http.port} is already used by listeners.{other}",
                )
        if not cb.channels:
            at("callback.channels", "name at least one of webhook, dialback, approve")
        needs_provider = {"webhook", "approve"}.intersection(cb.channels)
        if needs_provider and not cb.provider_url:
            at("callback.provider_url", f"the {sorted(needs_provider)[0]} channel needs it")
        if needs_provider and cb.provider_secret is None:
            at("callback.provider_secret_file", "the provider's requests are signed with it")
        for key, url in (("provider_url", cb.provider_url), ("public_url", cb.public_url)):
            if url is not None and not url.startswith(("https://", "http://")):
                at(f"callback.{key}", f"expected an http(s):// URL, got {url!r}")
        if "approve" in cb.channels and not cb.public_url:
            at("callback.public_url", "approve links need the gateway's public web address")

    _ldap_checks(cfg, at)

    proxy = cfg.imap_proxy
    sep = proxy.profile_separator
    if not _is_separator(sep):
        at(
            "imap_proxy.profile_separator",
            f"expected one character other than a letter, digit, '@', '.' or space, got {sep!r}",
        )
    if proxy.upstream_login == "master":
        if not proxy.master_user:
            at("imap_proxy.master_user", "upstream_login: master needs master_user")
        if proxy.master_password is None:
            at(
                "imap_proxy.master_password_file",
                "upstream_login: master needs master_password_file",
            )

    problem = url_problem(cfg.store.url)
    if problem is not None:
        at("store.url", problem)
    elif cfg.store.password is not None and split_password(cfg.store.url)[1] is not None:
        at("store.url", "the URL carries a password and store.password_* gives one: keep one")
    elif cfg.store.password is not None and not is_postgres(cfg.store.url):
        at("store.password", "a SQLite store has no password")

    files: list[tuple[str, Path | None]] = [
        ("tls.cert_file", cfg.tls.cert_file),
        ("tls.key_file", cfg.tls.key_file),
        ("tls.ca_file", cfg.tls.ca_file),
        ("upstream.imap.ca_file", cfg.upstream.imap.ca_file),
    ]
    if cfg.upstream.smtp is not None:
        files.append(("upstream.smtp.ca_file", cfg.upstream.smtp.ca_file))
    if cfg.ldap is not None:
        files.append(("ldap.ca_file", cfg.ldap.ca_file))
    if cfg.ssh is not None:
        files += [(f"ssh.host_key_files[{i}]", p) for i, p in enumerate(cfg.ssh.host_key_files)]
    for key, p in files:
        if p is not None and not p.is_file():
            at(key, f"file not found: {p}")
    if key_files:
        # Imported here: asyncssh is slow to import and only check-config and serve need it.
        from roamgate.key_files import ssh_host_key_problem, tls_pair_problems

        if cfg.tls.cert_file.is_file() and cfg.tls.key_file.is_file():
            for key, message in tls_pair_problems(cfg.tls.cert_file, cfg.tls.key_file):
                at(key, message)
        for key, p in files:
            if key.startswith("ssh.host_key_files[") and p is not None and p.is_file():
                problem = ssh_host_key_problem(p)
                if problem is not None:
                    at(key, problem)
    if cfg.alerts is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", cfg.alerts.url):
        at("alerts.url", f"expected an http:// or https:// URL, got {cfg.alerts.url!r}")
    for i, entry in enumerate(cfg.web.metrics_allow):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            at(f"web.metrics_allow[{i}]", f"expected an IP address or network, got {entry!r}")
    if cfg.web.base_url is not None and not cfg.web.base_url.startswith("https://"):
        at("web.base_url", f"expected an https:// address, got {cfg.web.base_url!r}")
    web = cfg.listeners.web
    if web is not None and web.enabled and cfg.tls.ca_key_file is None:
        at("tls.ca_key_file", "the web door issues device certificates: it needs the CA key")
    for name in ("imap", "smtp"):
        server: UpstreamServer | None = getattr(cfg.upstream, name)
        if server is not None and server.tls == "none" and not _is_loopback(server.host):
            at(
                f"upstream.{name}.tls",
                "'none' is only allowed for an upstream on this machine (loopback)",
            )
    return issues


_LDAP_URL = re.compile(r"(ldaps?)://([^\s/:]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?/?")


def _ldap_checks(cfg: Config, at: Callable[[str, str], None]) -> None:
    """The directory's settings: TLS always, filters in parentheses, names that exist."""
    ldap = cfg.ldap
    if cfg.auth.password_verifier == "ldap" and ldap is None:  # noqa: S105
        at("auth.password_verifier", "ldap needs an ldap: section")
    if ldap is None:
        return
    m = _LDAP_URL.fullmatch(ldap.url)
    if m is None:
        at("ldap.url", f"expected ldaps://HOST[:PORT] or ldap://HOST[:PORT], got {ldap.url!r}")
    elif m.group(1) == "ldap" and not ldap.start_tls:
        at("ldap.url", "plain ldap:// sends passwords in clear: use ldaps:// or start_tls: true")
    elif m.group(1) == "ldaps" and ldap.start_tls:
        at("ldap.start_tls", "ldaps:// is TLS already: start_tls is for ldap:// URLs")
    if m is not None and m.group(3) is not None and not 1 <= int(m.group(3)) <= 65535:
        at("ldap.url", f"port {m.group(3)} is not 1-65535")
    for key in ("user_filter", "disabled_filter", "group_filter"):
        value: str | None = getattr(ldap, key)
        if value is not None and not (value.startswith("(") and value.endswith(")")):
            at(f"ldap.{key}", f"expected an LDAP filter in parentheses, got {value!r}")
    if not ldap.groups:
        at("ldap.groups", "name at least one group whose members may use the gateway")
    profiles = cfg.link_profiles()
    for group, profile in ldap.profiles.items():
        if profile not in profiles:
            at(f"ldap.profiles.{group}", f"unknown link profile {profile!r}")


def _is_separator(text: str) -> bool:
    # Printable ASCII only: it is typed into a mail client's user name field.
    return (
        len(text) == 1
        and text.isascii()
        and text.isprintable()
        and not text.isspace()
        and not text.isalnum()
        and text not in "@."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(
    path: Path, env: dict[str, str] | None = None, *, check_key_files: bool = False
) -> Config:
    """Read and validate a config file; raise ConfigError naming file, line and key of each problem.

    check_key_files also loads the TLS certificate and key and the SSH host keys, as `serve`
    will (check-config and serve ask for it; commands that never open a door do not).
    """
    filename = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(filename, [ConfigIssue(0, "", "file not found")]) from None
    except UnicodeDecodeError:
        raise ConfigError(filename, [ConfigIssue(0, "", "not UTF-8 text")]) from None
    except OSError as exc:
        raise ConfigError(filename, [ConfigIssue(0, "", f"cannot read: {exc.strerror}")]) from None
    base_dir = path.resolve().parent
    cfg, lines = load_yaml_into(Config, text, filename, base_dir, env)
    cfg = replace(cfg, path=path.resolve())
    issues = _cross_checks(cfg, lines, key_files=check_key_files)
    if issues:
        raise ConfigError(filename, issues)
    return cfg
