"""A private Postfix on 127.0.0.1: the company's submission server behind the submission door."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"

# Only the services a submission server that delivers locally needs; no chroot (column 5 `n`).
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(Exception):
    """The private Postfix could not be set up or started."""


class PrivatePostfix:
    """One Postfix instance with its own config_directory, queue_directory and data_directory.

    It accepts mail on 127.0.0.1:port only after STARTTLS and SASL AUTH (Dovecot's SASL, through
    a socket that the test's private Dovecot opens at `sasl_socket`), and delivers everything
    for example.com into one Maildir, `maildir`, which the test reads. nobody@example.com is
    refused at RCPT, as an unknown user would be.

    Traps met on the way, so the next person does not:
    - Postfix says nothing on stderr unless stderr is a terminal: a config error makes
      `postfix check` or `start-fg` exit 1 in silence. `maillog_file` (here postfix.log) is
      where its words go, and it must start with one of `maillog_file_prefixes` (default
      /var, /dev/stdout), or start-up fails, again silently.
    - The daemons drop to the `postfix` user and the `virtual` agent to the mail uid: every
      directory above the queue, the Maildir and the SASL socket must be traversable by
      them. pytest's tmp directories are 0700 root, so the instance lives in its own 0755
      directory under /tmp (`workdir` is a mkdtemp one, removed by stop()).
    - `postfix -c DIR start-fg` keeps the master in the foreground, but the master outlives
      a killed `postfix` parent: stop() runs `postfix -c DIR stop` and then kills the pid in
      queue/pid/master.pid if it is still there.
    - The data directory must belong to `postfix`, else `postfix check` warns and tlsmgr
      cannot keep its PRNG and session cache.
    """

    host = "127.0.0.1"

    def __init__(self, port: int, *, size_limit: int) -> None:
        self.port = port
        self.workdir = Path(tempfile.mkdtemp(prefix="roamgate-postfix-"))
        self.workdir.chmod(0o755)
        self.config_dir = self.workdir / "conf"
        self.queue_dir = self.workdir / "queue"
        self.data_dir = self.workdir / "data"
        self.mail_base = self.workdir / "mail"
        self.maildir = self.mail_base / "inbox"
        self.sasl_dir = self.workdir / "sasl"
        self.sasl_socket = self.sasl_dir / "auth"
        self.log_file = self.workdir / "postfix.log"
        self._process: subprocess.Popen[bytes] | None = None
        nobody = pwd.getpwnam("nobody")
        postfix = pwd.getpwnam("postfix")
        for d in (self.config_dir, self.queue_dir, self.data_dir, self.mail_base, self.sasl_dir):
            d.mkdir(mode=0o755)
        os.chown(self.data_dir, postfix.pw_uid, postfix.pw_gid)
        os.chown(self.mail_base, nobody.pw_uid, nobody.pw_gid)
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(port=port))
        (self.config_dir / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = upstream.example.test
mydomain = example.test
mydestination =
inet_interfaces = {self.host}
inet_protocols = ipv4
mynetworks = {self.host}/32
relayhost =
alias_maps =
alias_database =
maillog_file = {self.log_file}
maillog_file_prefixes = {self.workdir}
message_size_limit = {size_limit}
virtual_mailbox_limit = 0
virtual_mailbox_domains = example.com
virtual_mailbox_base = {self.mail_base}
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
smtpd_tls_cert_file = {self.config_dir}/cert.pem
smtpd_tls_key_file = {self.config_dir}/key.pem
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {self.sasl_socket}
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions =
    check_recipient_access inline:{{ {{nobody@example.com=REJECT 5.1.1 No such user here}} }},
    permit_sasl_authenticated, reject
""")

    def install_certificate(self, cert_file: Path, key_file: Path) -> None:
        # The key is read by root at start-up, before the daemons drop privileges.
        shutil.copy(cert_file, self.config_dir / "cert.pem")
        shutil.copy(key_file, self.config_dir / "key.pem")
        (self.config_dir / "key.pem").chmod(0o600)

    def start(self) -> None:
        check = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), "check"], capture_output=True, timeout=60
        )
        if check.returncode != 0:
            raise PostfixError(f"postfix check failed\n{self.log_tail()}")
        self._process = subprocess.Popen(
            [POSTFIX, "-c", str(self.config_dir), "start-fg"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as sock:
                    if sock.recv(100).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise PostfixError(f"Postfix did not greet within 30 s\n{self.log_tail()}")
            time.sleep(0.1)

    def _master_pid(self) -> int:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def stop(self) -> None:
        pid = self._master_pid()
        subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), "stop"], capture_output=True, timeout=60
        )
        deadline = time.monotonic() + 15
        while pid > 0 and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid > 0 and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        if self._process is not None:
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
            self._process = None

    def remove(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no postfix.log)"

    def delivered(self) -> list[bytes]:
        """Every message in the Maildir (new/ and cur/), oldest first."""
        found: list[Path] = []
        for sub in ("new", "cur"):
            d = self.maildir / sub
            if d.is_dir():
                found += [p for p in d.iterdir() if p.is_file()]
        return [p.read_bytes() for p in sorted(found, key=lambda p: p.stat().st_mtime)]

    def wait_for(self, marker: bytes, timeout: float = 30) -> bytes:
        """The delivered message that contains marker, waiting for Postfix to deliver it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.delivered():
                if marker in message:
                    return message
            time.sleep(0.2)
        raise AssertionError(f"no message with {marker!r} delivered\n{self.log_tail()}")
