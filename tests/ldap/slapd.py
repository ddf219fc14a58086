"""A private OpenLDAP slapd for the tests: its own config, mdb database and TLS, on 127.0.0.1.

Never the system slapd: the config is a slapd.conf in a temp dir (`-f`), the database lives
beside it, and it listens only on the loopback ports it is given. Entries are loaded with
ldapadd (ldap-utils) through the running server, so the memberOf overlay sees them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from roamgate.demo.dovecot import free_port
from roamgate.pki import cert_pem, issue_client_cert, issue_server_cert, key_pem, make_ca

SUFFIX = "dc=example,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root secret 1"
SERVICE_DN = f"cn=roamgate,ou=services,{SUFFIX}"
SERVICE_PW = "service secret 2"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"


def _program(name: str) -> str:
    for folder in ("/usr/sbin", "/usr/bin"):
        path = Path(folder) / name
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if found is None:
        # A failure, not a skip: `make test` installs it (deploy/dev/install-peers.sh).
        pytest.fail(
            f"{name} is not installed: `make test` installs it (deploy/dev/install-peers.sh)"
        )
    return found


class PrivateSlapd:
    """slapd with LDAPS on one port and ldap:// (for StartTLS) on another."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.ldaps_port = free_port()
        self.ldap_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = folder / "slapd.log"
        ca_key, ca = make_ca("roamgate test directory CA")
        key, cert = issue_server_cert(ca_key, ca, "localhost", [])
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(cert_pem(ca))
        (folder / "server.pem").write_bytes(cert_pem(cert))
        (folder / "server.key").write_bytes(key_pem(key))
        (folder / "server.key").chmod(0o600)
        # A certificate for a user's userCertificate;binary (an S/MIME certificate stands in).
        _k, user_cert = issue_client_cert(ca_key, ca, "Alice Example")
        from cryptography.hazmat.primitives.serialization import Encoding

        self.user_cert_der = user_cert.public_bytes(Encoding.DER)
        (folder / "db").mkdir()
        self.conf = folder / "slapd.conf"
        self.conf.write_text(self._config())

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    def _config(self) -> str:
        d = self.dir
        return f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key
database mdb
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw "{ROOT_PW}"
directory {d}/db
maxsize 33554432
overlay memberof
access to attrs=userPassword
    by anonymous auth
    by self =xw
    by * none
access to *
    by dn.exact="{SERVICE_DN}" read
    by self read
    by * none
"""

    def start(self) -> None:
        slapd = _program("slapd")
        with self.log_file.open("ab") as log:
            # -d stats: stay in the foreground (the test owns the process) and log each
            # operation (tests read which binds reached the server).
            self.process = subprocess.Popen(
                [
                    slapd,
                    "-f",
                    str(self.conf),
                    "-h",
                    f"{self.ldaps_url}/ {self.ldap_url}/",
                    "-d",
                    "stats",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"slapd exited: {self.log_file.read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.ldaps_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        pytest.fail("slapd did not open its port within 20 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def _tool(self, name: str, *args: str, stdin: str) -> str:
        env = {**os.environ, "LDAPTLS_CACERT": str(self.ca_file), "LDAPTLS_REQCERT": "demand"}
        r = subprocess.run(
            [_program(name), "-H", self.ldaps_url, "-x", "-D", ROOT_DN, "-w", ROOT_PW, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    def add(self, ldif: str) -> None:
        self._tool("ldapadd", stdin=ldif)

    def modify(self, ldif: str) -> None:
        self._tool("ldapmodify", stdin=ldif)

    def __enter__(self) -> PrivateSlapd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def binds(self, dn: str) -> int:
        """How many BIND requests for this DN reached the server so far."""
        lines = self.log_file.read_text(errors="replace").splitlines()
        # The request line carries the method; the result line repeats the DN.
        return sum(f'BIND dn="{dn}" method=' in line for line in lines)
