"""`roamgate doctor`: check what a running gateway depends on, one line each, with a remedy.

Every check contacts only what the config names (the store, the upstream IMAP and SMTP
servers, doctor.clock_url) and changes nothing: the store is opened without migrating.
Exit code: 0 every check OK, 1 at least one WARN and no FAIL, 2 at least one FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import email.utils
import json
import os
import re
import shutil
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509

from roamgate.config import Config, ConfigError, UpstreamServer, load_config
from roamgate.runtime import SetupError, load_secret_box
from roamgate.store import StoreError, open_store

Status = Literal["OK", "WARN", "FAIL"]
EXIT = {"OK": 0, "WARN": 1, "FAIL": 2}

CERT_WARN_DAYS = 30
# Free space next to the audit log: below FAIL_BYTES the trail may stop at any moment.
DISK_FAIL_BYTES = 50 * 1024 * 1024
DISK_WARN_BYTES = 500 * 1024 * 1024
DISK_WARN_FRACTION = 0.05
CLOCK_WARN_SECONDS = 5.0
# SMTP replies are short; a server sending more than this is not one to wait for.
SMTP_MAX_LINE = 2048
SMTP_MAX_LINES = 100
# `Fri, 4 Dec 2026 08:00:00 +0000` as sendmail and Exchange put it in their greeting.
_SMTP_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}"
)


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    message: str
    remedy: str = ""

    def line(self) -> str:
        text = f"{self.status:<5}{self.name}: {self.message}"
        if self.status != "OK" and self.remedy:
            text += f" -- {self.remedy}"
        return text


def redact(text: str) -> str:
    """A URL's password never reaches the report (`postgresql://u:pw@h/db`)."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def run(args: argparse.Namespace) -> int:
    """The CLI entry: print each check's line, return the exit code."""
    checks = asyncio.run(diagnose(Path(args.config)))
    if getattr(args, "json", False):
        for c in checks:
            print(
                json.dumps(
                    {"check": c.name, "status": c.status, "message": c.message, "remedy": c.remedy}
                )
            )
    else:
        for c in checks:
            print(c.line(), flush=True)
    return max((EXIT[c.status] for c in checks), default=0)


async def diagnose(path: Path, *, now: Callable[[], float] = time.time) -> list[Check]:
    try:
        cfg = load_config(path, check_key_files=True)
    except ConfigError as exc:
        lines = exc.lines()
        more = f" (and {len(lines) - 1} more; run roamgate check-config)" if len(lines) > 1 else ""
        return [
            Check("config", "FAIL", lines[0] + more, "fix the file and run roamgate doctor again")
        ]
    checks = [Check("config", "OK", f"{cfg.path} is valid")]
    checks.append(_secret_key(cfg))
    checks.append(await _store(cfg))
    checks.append(await _upstream_imap(cfg))
    greetings: dict[str, tuple[str, float]] = {}
    checks.append(await _upstream_smtp(cfg, greetings))
    if cfg.ldap is not None:
        checks.append(await _directory(cfg))
    for key, file in (("tls.cert_file", cfg.tls.cert_file), ("tls.ca_file", cfg.tls.ca_file)):
        checks.append(_certificate(key, file, now()))
    checks.append(await _clock(cfg, now, greetings.get("smtp")))
    checks.append(_disk(cfg))
    return checks


def _secret_key(cfg: Config) -> Check:
    try:
        load_secret_box(cfg)
    except (SetupError, OSError) as exc:
        return Check("secret key", "FAIL", str(exc), "restore the key file every node shares")
    return Check("secret key", "OK", f"usable ({cfg.secrets.key.origin})")


def _latest_migration(url: str) -> int:
    from roamgate.store.sqlite import load_migrations

    dialect = "postgres" if url.startswith(("postgresql://", "postgres://")) else "sqlite"
    try:
        return max((v for v, _n, _s in load_migrations(dialect)), default=0)
    except FileNotFoundError:
        return 0


async def _store(cfg: Config) -> Check:
    url = cfg.store_url()
    shown = redact(url)
    try:
        store = await open_store(url, migrate=False, password=cfg.store_password(), pool_size=1)
    except StoreError as exc:
        return Check(
            "store",
            "FAIL",
            redact(str(exc)),
            "start the database or correct store.url; a new gateway: roamgate init",
        )
    try:
        version = await store.schema_version()
    except StoreError as exc:
        return Check("store", "FAIL", redact(str(exc)), "check the database server and its logs")
    finally:
        with contextlib.suppress(Exception):
            await store.close()
    latest = _latest_migration(url)
    if version < latest:
        return Check(
            "store",
            "FAIL",
            f"{shown}: schema version {version}, this roamgate needs {latest}",
            "start roamgate serve (or any roamgate command) once: it applies the migrations",
        )
    if version > latest:
        return Check(
            "store",
            "FAIL",
            f"{shown}: schema version {version} is newer than this roamgate ({latest})",
            "upgrade roamgate on this node to the version the other nodes run",
        )
    return Check("store", "OK", f"{shown}: reachable, schema version {version}")


async def _upstream_imap(cfg: Config) -> Check:
    from roamgate.gateway.upstream import UpstreamError, UpstreamImap

    server = cfg.upstream.imap
    where = f"{server.host}:{server.port} ({server.tls})"
    try:
        conn = await UpstreamImap.connect(server)
    except UpstreamError as exc:
        return Check(
            "upstream imap",
            "FAIL",
            str(exc),
            "is the IMAP server up and reachable from here? check upstream.imap host, port, tls, ca_file",
        )
    await conn.close()
    return Check("upstream imap", "OK", f"{where}: greeting received{_tls_note(server)}")


_DIRECTORY_REMEDIES = {
    "unreachable": "is the directory up and reachable from here? check ldap.url",
    "tls": "the directory's certificate is not trusted or names another host:"
    " check ldap.ca_file and the host name in ldap.url",
    "service_bind": "check ldap.bind_dn and the password in ldap.bind_password_file",
    "base": "check ldap.user_base and what the service account may read",
    "timeout": "the directory is slow or hangs: check it, or raise ldap.timeout_seconds",
}


async def _directory(cfg: Config) -> Check:
    """TLS to the directory, the service bind, a read of user_base and of each group."""
    from roamgate.directory.client import DirectoryError
    from roamgate.directory.service import Directory

    assert cfg.ldap is not None
    directory = Directory(cfg.ldap)
    try:
        missing = await directory.probe()
    except DirectoryError as exc:
        remedy = _DIRECTORY_REMEDIES.get(exc.cause, "check the ldap: section and the directory")
        return Check("directory", "FAIL", f"{exc.cause}: {exc}", remedy)
    finally:
        directory.close()
    how = "StartTLS" if cfg.ldap.start_tls else "LDAPS"
    where = f"{cfg.ldap.url} ({how}, certificate verified, service bind ok)"
    if missing:
        return Check(
            "directory",
            "WARN",
            f"{where}: group not found: {', '.join(missing)}",
            "check ldap.groups: nobody in a missing group can log in",
        )
    return Check("directory", "OK", f"{where}: user_base and {len(cfg.ldap.groups)} group(s) found")


def _tls_note(server: UpstreamServer) -> str:
    return ", TLS verified" if server.tls != "none" else ", no TLS (loopback only)"


async def _upstream_smtp(cfg: Config, greetings: dict[str, tuple[str, float]]) -> Check:
    server = cfg.upstream.smtp
    if server is None:
        return Check("upstream smtp", "OK", "not configured (no submission)")
    where = f"{server.host}:{server.port} ({server.tls})"
    try:
        greeting = await asyncio.wait_for(_smtp_probe(server, greetings), server.timeout_seconds)
    except TimeoutError:
        problem = f"no answer within {server.timeout_seconds} s"
    except (OSError, ssl.SSLError, SmtpError) as exc:
        problem = str(exc) or type(exc).__name__
    else:
        return Check("upstream smtp", "OK", f"{where}: {greeting[:60]!r}{_tls_note(server)}")
    return Check(
        "upstream smtp",
        "FAIL",
        f"{where}: {problem}",
        "is the SMTP server up and reachable from here? check upstream.smtp host, port, tls, ca_file",
    )


class SmtpError(Exception):
    """The SMTP server's answer was not what the probe needs."""


async def _smtp_reply(reader: asyncio.StreamReader) -> tuple[int, list[str]]:
    lines: list[str] = []
    while len(lines) < SMTP_MAX_LINES:
        raw = await reader.readline()
        if not raw:
            raise SmtpError("the server closed the connection")
        if len(raw) > SMTP_MAX_LINE:
            raise SmtpError("reply line too long")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if len(line) < 3 or not line[:3].isdigit():
            raise SmtpError("not an SMTP reply")
        lines.append(line[4:])
        if line[3:4] != "-":
            return int(line[:3]), lines
    raise SmtpError("reply with too many lines")


async def _smtp_probe(server: UpstreamServer, greetings: dict[str, tuple[str, float]]) -> str:
    """Connect, greet, STARTTLS if so configured (verified), QUIT; return the greeting."""
    from roamgate.login.verifiers import upstream_ssl_context

    ctx = upstream_ssl_context(server) if server.tls != "none" else None
    if server.tls == "implicit":
        reader, writer = await asyncio.open_connection(
            server.host, server.port, ssl=ctx, server_hostname=server.host, limit=SMTP_MAX_LINE
        )
    else:
        reader, writer = await asyncio.open_connection(
            server.host, server.port, limit=SMTP_MAX_LINE
        )
    try:
        code, greeting = await _smtp_reply(reader)
        # The greeting's date, if it has one, serves the clock check.
        greetings["smtp"] = (greeting[0], time.time())
        if code != 220:
            raise SmtpError(f"greeting {code}")
        if server.tls == "starttls":
            writer.write(b"EHLO roamgate-doctor\r\n")
            code, lines = await _smtp_reply(reader)
            if code != 250:
                raise SmtpError(f"EHLO answered {code}")
            if not any(x.upper().split(" ")[0] == "STARTTLS" for x in lines[1:]):
                raise SmtpError("the server does not offer STARTTLS")
            writer.write(b"STARTTLS\r\n")
            code, _ = await _smtp_reply(reader)
            if code != 220:
                raise SmtpError(f"STARTTLS answered {code}")
            assert ctx is not None
            await writer.start_tls(ctx, server_hostname=server.host)
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(SmtpError, OSError):
            await _smtp_reply(reader)
        return greeting[0]
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 2)


def _certificate(key: str, file: Path, now: float) -> Check:
    name = "door certificate" if key == "tls.cert_file" else "CA certificate"
    try:
        cert = x509.load_pem_x509_certificates(file.read_bytes())[0]
    except (OSError, ValueError) as exc:
        return Check(name, "FAIL", f"{file}: {exc}", f"put a PEM certificate at {key}")
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    ends = cert.not_valid_after_utc
    left = ends - moment
    when = ends.strftime("%Y-%m-%d %H:%M UTC")
    if key == "tls.cert_file":
        remedy = f"install a renewed certificate at {key} (signed by {file.parent / 'ca.pem'} or your CA) and restart roamgate serve"
    else:
        remedy = "make a new CA, reissue the door certificate, give clients the new ca.pem"
    if cert.not_valid_before_utc > moment:
        return Check(
            name,
            "FAIL",
            f"{file}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            "check this machine's clock, or the certificate's dates",
        )
    if left.total_seconds() <= 0:
        return Check(name, "FAIL", f"{file}: expired {when}", remedy)
    if left < dt.timedelta(days=CERT_WARN_DAYS):
        return Check(name, "WARN", f"{file}: expires {when}, in {left.days} days", remedy)
    return Check(name, "OK", f"{file}: valid until {when} ({left.days} days)")


async def _clock(
    cfg: Config, now: Callable[[], float], greeting: tuple[str, float] | None
) -> Check:
    """Compare this machine's clock with a configured reference: TOTP codes depend on it."""
    otp = cfg.auth.otp
    fail_at = max(float(otp.totp_period_seconds * otp.totp_window_steps), 15.0)
    url = cfg.doctor.clock_url
    try:
        if url is not None:
            reference, skew = url, await _http_skew(url, now)
        else:
            found = _smtp_skew(cfg, greeting)
            if found is None:
                return Check(
                    "clock",
                    "WARN",
                    "not checked: no configured server tells the time",
                    "set doctor.clock_url to an internal https:// URL (its Date header is used)",
                )
            reference, skew = found
    except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
        return Check(
            "clock",
            "WARN",
            f"{url}: {redact(str(exc)) or type(exc).__name__}",
            "check doctor.clock_url; it must answer with a Date header",
        )
    text = f"{skew:+.1f} s against {redact(reference)}"
    remedy = "synchronise this machine's clock (systemd-timesyncd, chrony); TOTP codes fail beyond the window"
    if abs(skew) >= fail_at:
        return Check("clock", "FAIL", text + f" (window ±{fail_at:.0f} s)", remedy)
    if abs(skew) >= CLOCK_WARN_SECONDS:
        return Check("clock", "WARN", text, remedy)
    return Check("clock", "OK", text)


async def _http_skew(url: str, now: Callable[[], float]) -> float:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        began = now()
        async with session.head(url, allow_redirects=False) as response:
            ended = now()
            header = response.headers.get("Date")
    if header is None:
        raise ValueError("no Date header in the answer")
    their = email.utils.parsedate_to_datetime(header).timestamp()
    # The Date header has whole seconds; compare with the middle of the exchange.
    return (began + ended) / 2 - their


def _smtp_skew(cfg: Config, seen: tuple[str, float] | None) -> tuple[str, float] | None:
    server = cfg.upstream.smtp
    if server is None or seen is None:
        return None
    greeting, at = seen
    match = _SMTP_DATE.search(greeting)
    if match is None:
        return None
    try:
        their = email.utils.parsedate_to_datetime(match.group(0)).timestamp()
    except (TypeError, ValueError):
        return None
    return f"smtp://{server.host}:{server.port} greeting", at - their


def _disk(cfg: Config) -> Check:
    file = cfg.audit.file if cfg.audit.file.is_absolute() else cfg.base_dir / cfg.audit.file
    folder = file.parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError as exc:
        return Check(
            "audit disk", "FAIL", f"{folder}: {exc.strerror}", "create the directory of audit.file"
        )
    writable = os.access(file if file.exists() else folder, os.W_OK)
    free = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB at {folder}"
    if not writable:
        return Check(
            "audit disk",
            "FAIL",
            f"{file} is not writable",
            "give the roamgate user write access to it",
        )
    if usage.free < DISK_FAIL_BYTES:
        return Check(
            "audit disk",
            "FAIL",
            free,
            "free space or move audit.file; the audit trail stops when the disk is full",
        )
    if usage.free < DISK_WARN_BYTES or usage.free < usage.total * DISK_WARN_FRACTION:
        return Check("audit disk", "WARN", free, "free space, rotate or export old audit lines")
    return Check("audit disk", "OK", free)
