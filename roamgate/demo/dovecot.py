"""A private Dovecot 2.3 on 127.0.0.1: the real corporate IMAP server for the demo and tests."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.parser
import email.utils
import grp
import hashlib
import imaplib
import ipaddress
import os
import pwd
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["UNTRUSTED_SOURCE", "DovecotError", "PrivateDovecot", "free_port"]

DOVECOT: Final = "/usr/sbin/dovecot"
DOVEADM: Final = "/usr/bin/doveadm"
MODULE_DIR: Final = Path("/usr/lib/dovecot/modules")  # Debian's mail_plugin_dir
UNTRUSTED_SOURCE: Final = "127.0.0.2"  # a loopback source that is neither trusted nor "local"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")  # no "*": it is the master separator
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@-]+")  # Dovecot expands % and splits on spaces
_SESSIONS_PER_PROCESS = 50  # imap sessions per imap process when scaled up
_MAX_BASE_DIR = 70  # sun_path is 108 bytes and Dovecot adds names like "token-login/tokenlogin"


class DovecotError(RuntimeError):
    """The private Dovecot did not start, or refused an administrative operation."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, picked below the kernel's ephemeral range.

    Ports from bind(0) come out of the ephemeral range, which every outgoing connection on the
    machine also draws from: under load (parallel tests, a benchmark's thousands of logins) a
    client socket could take the port before the server binds it. Below that range only other
    listeners compete, and a random pick makes two callers unlikely to meet.
    """
    low = _ephemeral_low()
    for _ in range(50):
        port = random.randint(10_000, low - 1) if low > 10_001 else 0  # noqa: S311 (not a secret)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _hash(password: str) -> str:
    """Dovecot's {SSHA512}: a salted hash, so no clear password sits in the working dir."""
    salt = os.urandom(16)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode("ascii")


def _quote(mailbox: str) -> str:
    if not mailbox.isascii():
        raise ValueError(f"folder names must be ASCII (no modified UTF-7 here): {mailbox!r}")
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with mode 0600 (Dovecot re-reads passwd-files on change)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def _internaldate(message: bytes) -> str:
    """The message's own Date as INTERNALDATE, so populated folders are the same every run."""
    date = email.parser.BytesHeaderParser().parsebytes(message).get("Date")
    with contextlib.suppress(TypeError, ValueError):
        return imaplib.Time2Internaldate(email.utils.parsedate_to_datetime(str(date)))
    return ""  # imaplib then sends no date and the server uses its clock


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment"]
    names += ["key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]
    return x509.KeyUsage(**{name: allowed.get(name, False) for name in names})


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [state, ppid, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _descendants(pid: int) -> list[int]:
    """All processes below `pid`, found by walking /proc (Dovecot forks each service)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(entry.name)] = int(_proc_stat(int(entry.name))[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _alive(pid: int) -> bool:
    try:
        return _proc_stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM the given pids, then SIGKILL whatever is still there after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in filter(_alive, pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.02)


class PrivateDovecot:
    """One private Dovecot instance: IMAP with STARTTLS, IMAPS, passwd-file users.

    It never reads /etc/dovecot: config, sockets, state, log, certificates, password files
    and mail all live under `workdir` (sockets move to a short /tmp dir when that path is too
    long for a unix socket).

    As root, Dovecot's own users (`dovecot`, `dovenull`) run the internal and login processes,
    mail belongs to `nobody:nogroup`, and each mail process chroots into the mail directory:
    pytest's tmp directories are 0700 root, which `nobody` could not traverse otherwise. The
    auth process runs as root for the same reason (it reads the password files). As any other
    user, every process runs as that user and nothing chroots.

    Dovecot counts a connection as "secured" when it comes from `login_trusted_networks` or
    when client and server addresses are equal, so a client on 127.0.0.1 may LOGIN in
    plaintext before STARTTLS. Bind a client to UNTRUSTED_SOURCE to be treated as remote.
    """

    host: Final = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        imap_port: int | None = None,
        imaps_port: int | None = None,
        start_timeout: float = 15.0,
        auth_failure_delay: int = 0,
        sasl_socket: Path | None = None,
        max_connections: int = 200,
        login_processes: int = 0,
    ) -> None:
        self.workdir = workdir.resolve()
        if not _SAFE_PATH.fullmatch(str(self.workdir)):
            raise ValueError(f"working directory must match {_SAFE_PATH.pattern}: {self.workdir}")
        self.imap_port = imap_port or free_port(self.host)
        self.imaps_port = imaps_port or free_port(self.host)
        while self.imaps_port == self.imap_port:
            self.imaps_port = free_port(self.host)
        self.start_timeout = start_timeout
        # Seconds (Dovecot takes whole ones) before a failed login is answered; its default is 2.
        self.auth_failure_delay = auth_failure_delay
        # A Dovecot SASL socket for an MTA (Postfix's smtpd_sasl_type = dovecot), mode 0666.
        self.sasl_socket = sasl_socket
        # Concurrent IMAP sessions to allow (bench/idle_sessions.py asks for thousands): above
        # the default, login and imap processes each serve many connections (Dovecot's
        # "performance mode") instead of one process per connection.
        self.max_connections = max_connections
        # Above 0: Dovecot's high-performance login mode for many logins a second, as an
        # operator would set it (bench/login_rate.py): this many long-lived imap-login processes
        # (service_count = 0, each doing TLS for many clients), kept started, and imap (mail)
        # processes reused by later logins instead of one fork and exec per login.
        self.login_processes = login_processes
        self.config_file = self.workdir / "dovecot.conf"
        self.log_file = self.workdir / "dovecot.log"
        self.stderr_file = self.workdir / "dovecot.stderr"
        self.ca_file = self.workdir / "tls" / "ca.pem"
        self.cert_file = self.workdir / "tls" / "server.pem"
        self.key_file = self.workdir / "tls" / "server.key"
        self.users_file = self.workdir / "users.passwd"
        self.masters_file = self.workdir / "masters.passwd"
        self.mail_dir = self.workdir / "mail"
        self.state_dir = self.workdir / "state"
        # Shows in every process title ("dovecot-roamgate-1a2b3c4d/imap"), so ps can tell us apart.
        digest = hashlib.sha256(str(self.workdir).encode()).hexdigest()[:8]
        self.instance_name = f"roamgate-{digest}"
        self.base_dir = self.workdir / "run"
        self._temp_base_dir = len(str(self.base_dir)) > _MAX_BASE_DIR
        if self._temp_base_dir:  # created by start(), removed by stop()
            self.base_dir = Path(tempfile.gettempdir()) / f"dovecot-{self.instance_name}"
        self.compress = (MODULE_DIR / "lib30_imap_zlib_plugin.so").exists()
        self._root = os.geteuid() == 0
        mail_user = pwd.getpwnam("nobody") if self._root else pwd.getpwuid(os.getuid())
        self.mail_uid, self.mail_gid = mail_user.pw_uid, mail_user.pw_gid
        self._process: subprocess.Popen[bytes] | None = None
        for directory in (self.workdir, self.mail_dir, self.state_dir, self.workdir / "tls"):
            directory.mkdir(parents=True, exist_ok=True)
        if self._root:
            os.chown(self.mail_dir, self.mail_uid, self.mail_gid)
        for passwd in (self.users_file, self.masters_file):
            if not passwd.exists():
                _write_private(passwd, b"")
        if not (self.ca_file.exists() and self.cert_file.exists() and self.key_file.exists()):
            self._write_certificates()
        self.config_file.write_text(self._config())

    # -- configuration ---------------------------------------------------------------------

    def _write_certificates(self) -> None:
        """A CA and a server certificate for 127.0.0.1 and localhost, strict-X.509 friendly."""
        now = dt.datetime.now(dt.UTC)
        ca_key, key = (
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP256R1()),
        )
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "roamgate demo mail CA")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        san = [x509.IPAddress(ipaddress.ip_address(self.host)), x509.DNSName("localhost")]
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        key_pem = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(self.key_file, key_pem)
        self.cert_file.write_bytes(server.public_bytes(pem))
        self.ca_file.write_bytes(ca.public_bytes(pem))

    def _config(self) -> str:
        if self._root:
            # Mail processes chroot into mail_dir ("/./" in home), as nobody; see module doc.
            home = f"{self.mail_dir}/./%u"
            identity = f"valid_chroot_dirs = {self.mail_dir}\n"
            auth_service = "  user = root\n"
        else:
            auth_service = ""
            # The group matters too: sockets such as stats-writer are chowned to it.
            me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
            home = f"{self.mail_dir}/%u"
            identity = (
                f"default_internal_user = {me}\ndefault_internal_group = {group}\n"
                f"default_login_user = {me}\n"
                f"first_valid_uid = {self.mail_uid}\nfirst_valid_gid = {self.mail_gid}\n"
            )
            # Only root may chroot: these services chroot by default.
            for service in ("anvil", "ipc", "old-stats", "aggregator", "imap-login"):
                identity += f"service {service} {{\n  chroot =\n}}\n"
            identity += "service imap-urlauth-login {\n  chroot =\n}\n"
        if self.sasl_socket is not None:
            auth_service += f"  unix_listener {self.sasl_socket} {{\n    mode = 0666\n  }}\n"
        if auth_service:
            identity += f"service auth {{\n{auth_service}}}\n"
        plugins = "zlib" if self.compress else ""
        imap_plugins = "imap_zlib" if self.compress else ""
        folders = "".join(
            f"  mailbox {name} {{\n    special_use = \\{name}\n    auto = subscribe\n  }}\n"
            for name in ("Drafts", "Sent", "Trash", "Junk")
        )
        return f"""# Written by roamgate.demo.dovecot: a private instance that never reads /etc/dovecot.
instance_name = {self.instance_name}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_file}
listen = {self.host}
protocols = imap
login_greeting = Kestrel Instruments mail server ready.
{identity}
# required: no authentication at all, not even non-plaintext SASL, before TLS.
ssl = required
ssl_cert = <{self.cert_file}
ssl_key = <{self.key_file}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login
# 0: wrong-password tests stay fast; the gateway in front does its own throttling. Besides
# this delay, anvil's per-IP penalty (2, 4, 8, 15 s) hits even login_trusted_networks here:
# its socket's mode = 0 below is Dovecot's documented off switch.
auth_failure_delay = {self.auth_failure_delay} secs
auth_master_user_separator = *
# The gateway connects from here and forwards the road user's address with ID x-originating-ip.
login_trusted_networks = {self.host}/32
default_process_limit = {max(200, self.max_connections // _SESSIONS_PER_PROCESS + 20)}
default_client_limit = {max(1000, self.max_connections + 200)}
mail_max_userip_connections = {max(200, self.max_connections)}
{self._scale_config()}mail_location = maildir:~/Maildir
mail_plugins = $mail_plugins {plugins}
mailbox_idle_check_interval = 1 secs
namespace inbox {{
  inbox = yes
  separator = /
{folders}}}
protocol imap {{
  mail_plugins = $mail_plugins {imap_plugins}
  imap_idle_notify_interval = 2 secs
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
{self._login_scale_config()}  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
}}
passdb {{
  driver = passwd-file
  master = yes
  # pass = yes: after the master's password, the target user must still exist.
  pass = yes
  args = scheme=SSHA512 {self.masters_file}
}}
passdb {{
  driver = passwd-file
  args = scheme=SSHA512 {self.users_file}
}}
userdb {{
  driver = static
  args = uid={self.mail_uid} gid={self.mail_gid} home={home}
}}
"""

    def _login_scale_config(self) -> str:
        if self.max_connections <= 200 and not self.login_processes:
            return ""
        return (
            f"  service_count = 0\n  client_limit = {self.max_connections + 200}\n"
            f"  process_min_avail = {max(2, self.login_processes)}\n  vsz_limit = 1G\n"
        )

    def _scale_config(self) -> str:
        if self.max_connections > 200:
            return f"""service imap {{
  client_limit = {_SESSIONS_PER_PROCESS}
  service_count = 0
  process_limit = {self.max_connections // _SESSIONS_PER_PROCESS + 20}
}}
"""
        if self.login_processes:
            # One session per mail process (as by default) but processes reused, some kept
            # ready: a login no longer pays fork, exec and the binary's start-up. Every user
            # here has the same uid and chroot, which reuse requires.
            return f"""service imap {{
  service_count = 0
  process_min_avail = {self.login_processes}
}}
auth_cache_size = 10M
"""
        return ""

    # -- accounts ----------------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add or replace a mail user; while running this takes up to a second to apply."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"user names must match {_NAME.pattern}: {name!r}")
        home = self.mail_dir / name  # made here: a chrooted mail process cannot create it
        home.mkdir(mode=0o700, exist_ok=True)
        if self._root:
            os.chown(home, self.mail_uid, self.mail_gid)
        self._add(self.users_file, name, password)

    def add_master_user(self, name: str, password: str) -> None:
        """Add a master user: LOGIN `user*master` with the master's password opens `user`."""
        self._add(self.masters_file, name, password)

    def _add(self, passwd: Path, name: str, password: str) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"user names must match {_NAME.pattern}: {name!r}")
        lines = [
            line
            for line in passwd.read_text().splitlines()
            if line and line.split(":", 1)[0] != name
        ]
        lines.append(f"{name}:{_hash(password)}::::::")
        before = int(passwd.stat().st_mtime)
        _write_private(passwd, ("\n".join(lines) + "\n").encode())
        # Dovecot reloads a passwd-file when its mtime (whole seconds) or size changes, and
        # stats it at most once a second: a same-size rewrite within one second would go
        # unseen, and a login in the same second may still see the old file.
        if int(passwd.stat().st_mtime) <= before:
            os.utime(passwd, (before + 1, before + 1))
        if self.running:
            time.sleep(1.02 - time.time() % 1)

    # -- process -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start Dovecot in the foreground as our child and wait until IMAPS greets us."""
        if self.running:
            return
        for port in (self.imap_port, self.imaps_port):
            self._check_port_free(port)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        argv = [DOVECOT, "-F", "-c", str(self.config_file)]
        setpriv = shutil.which("setpriv")
        if setpriv:  # if we die without stop() (SIGKILL), the kernel still stops Dovecot
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        with self.stderr_file.open("wb") as stderr:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=self.workdir
            )
        self._process = process
        deadline = time.monotonic() + self.start_timeout
        while not self._greets():
            if process.poll() is not None:
                self.stop()
                raise DovecotError(f"Dovecot exited during start-up\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DovecotError(
                    f"Dovecot did not greet on {self.host}:{self.imaps_port} within "
                    f"{self.start_timeout:g} s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _check_port_free(self, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, port))
            except OSError as exc:
                raise DovecotError(f"port {self.host}:{port} is already in use") from exc

    def _greets(self) -> bool:
        """True once the IMAPS listener completes a verified handshake and says * OK."""
        try:
            with (
                socket.create_connection((self.host, self.imaps_port), timeout=2) as raw,
                self.client_context().wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                return tls.recv(1024).startswith(b"* OK")
        except OSError:  # refused, reset, TLS failures, timeouts: not up yet
            return False

    def stop(self) -> None:
        """Stop Dovecot (SIGTERM, then SIGKILL after 10 s) and wait for it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            children = _descendants(process.pid)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            # The master exits before its services: imap, log, anvil... linger while a client
            # is still connected. Stop exactly the pids it had started.
            _terminate(children)
        if self._temp_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PrivateDovecot:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Dovecot's log and its stderr (config errors land on stderr)."""
        out = []
        for path in (self.stderr_file, self.log_file):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out += [f"--- {path.name}", *tail]
        return "\n".join(out)

    # -- mail --------------------------------------------------------------------------------

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts only this instance's CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @contextlib.contextmanager
    def imap(self, user: str, password: str) -> Iterator[imaplib.IMAP4_SSL]:
        """A logged-in imaplib IMAPS session, logged out (and closed) on exit."""
        session = imaplib.IMAP4_SSL(
            self.host, self.imaps_port, ssl_context=self.client_context(), timeout=30
        )
        try:
            session.login(user, password)
            yield session
        finally:
            try:
                session.logout()
            except (imaplib.IMAP4.error, OSError):
                session.shutdown()

    def populate(self, user: str, password: str, mailbox: Mapping[str, list[bytes]]) -> int:
        """Create and subscribe the folders and APPEND the messages into each empty one.

        A folder that already holds mail is left alone, so a second call adds nothing.
        Returns the number of messages appended.
        """
        appended = 0
        with self.imap(user, password) as session:
            for folder, messages in mailbox.items():
                name = _quote(folder)
                if folder.upper() != "INBOX":
                    typ, data = session.create(name)
                    if typ != "OK" and b"ALREADYEXISTS" not in b" ".join(map(bytes, data)):
                        raise DovecotError(f"CREATE {folder} failed: {data!r}")
                    session.subscribe(name)
                typ, data = session.status(name, "(MESSAGES)")
                found = re.search(rb"MESSAGES (\d+)", bytes(data[0] or b""))
                if typ != "OK" or found is None:
                    raise DovecotError(f"STATUS {folder} failed: {data!r}")
                if int(found.group(1)):
                    continue
                for message in messages:
                    typ, data = session.append(name, "", _internaldate(message), message)
                    if typ != "OK":
                        raise DovecotError(f"APPEND to {folder} failed: {data!r}")
                    appended += 1
        return appended

    def deliver(self, user: str, message: bytes, folder: str = "INBOX") -> None:
        """Drop one message into a folder of a running instance, as a mail delivery would.

        Uses `doveadm save`, so no password is needed and open sessions (IDLE) see it arrive.
        """
        if not self.running:
            raise DovecotError("deliver() needs a running Dovecot")
        argv = [DOVEADM, "-c", str(self.config_file), "save", "-u", user, "-m", folder]
        result = subprocess.run(argv, input=message, capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip()
            raise DovecotError(f"doveadm save failed ({result.returncode}): {detail}")
