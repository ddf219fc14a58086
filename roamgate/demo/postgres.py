"""A private PostgreSQL 15 on 127.0.0.1: the shared database of several gateway nodes.

The server refuses to run as root, so when we are root initdb and pg_ctl run as `nobody` on a
temporary directory it owns (pytest's own tmp directories are 0700 root: nobody could not
enter them). Connections over TCP need a password (scram-sha-256), as in production; the
administrator's connections (createdb) come through the Unix socket, which trusts.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Final
from urllib.parse import quote

from roamgate.demo.dovecot import free_port

__all__ = ["PG_BIN", "PostgresError", "PrivatePostgres"]

PG_BIN: Final = Path("/usr/lib/postgresql/15/bin")
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresError(RuntimeError):
    """The private PostgreSQL did not start, or refused an administrative command."""


class PrivatePostgres:
    """initdb + pg_ctl start in a temporary directory; stop() removes everything.

    durable=False turns fsync off: tests need no crash safety and the machine is shared.
    """

    def __init__(self, *, user: str = "roamgate", durable: bool = False) -> None:
        self.user = user
        self.password = secrets.token_urlsafe(18)
        self.durable = durable
        self.port = 0
        self.root: Path | None = None
        self._as_nobody = os.getuid() == 0

    # -- lifecycle
    def start(self) -> PrivatePostgres:
        if not (PG_BIN / "pg_ctl").exists():
            raise PostgresError(
                f"{PG_BIN}/pg_ctl not found: install Debian's postgresql (deploy/dev/install-peers.sh)"
            )
        root = Path(tempfile.mkdtemp(prefix="roamgate-pg-"))
        self.root = root
        if self._as_nobody:
            nobody = pwd.getpwnam("nobody")
            os.chown(root, nobody.pw_uid, nobody.pw_gid)
        pwfile = root / "pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.password + "\n")
        if self._as_nobody:
            os.chown(pwfile, nobody.pw_uid, nobody.pw_gid)
        self._run_as_owner(
            f"{PG_BIN}/initdb -D {root}/data -U {shlex.quote(self.user)} -E UTF8 --locale=C"
            f" --auth-local=trust --auth-host=scram-sha-256 --pwfile={pwfile} --no-sync"
        )
        (root / "pw").unlink()
        self.port = free_port()
        options = [
            f"-p {self.port}",
            f"-k {root}",
            "-c listen_addresses=127.0.0.1",
            "-c max_connections=200",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run_as_owner(
            f"{PG_BIN}/pg_ctl -D {root}/data -l {root}/server.log -w -t 60"
            f" -o {shlex.quote(' '.join(options))} start"
        )
        return self

    def stop(self) -> None:
        root = self.root
        if root is None:
            return
        self.root = None
        try:
            if (root / "data" / "postmaster.pid").exists():
                self._run_as_owner(f"{PG_BIN}/pg_ctl -D {root}/data -m fast -w -t 30 stop", root)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- administration
    def url(self, database: str, *, with_password: bool = True) -> str:
        """A postgresql:// URL for TCP on 127.0.0.1 (with the password unless told otherwise)."""
        auth = f"{self.user}:{quote(self.password, safe='')}" if with_password else self.user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its name."""
        name = name or f"t_{secrets.token_hex(6)}"
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"database names here are plain lower-case identifiers: {name!r}")
        self.sql(f"CREATE DATABASE {name}")
        return name

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the administrator (through the socket); return psql's output."""
        root = self._root()
        out = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-h",
                str(root),
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise PostgresError(f"psql {statement!r}: {out.stderr.strip()}")
        return out.stdout

    @property
    def pid(self) -> int:
        """The postmaster's process id (its backends are its children)."""
        return int((self._root() / "data" / "postmaster.pid").read_text().split()[0])

    def log(self) -> str:
        root = self._root()
        try:
            return (root / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- helpers
    def _root(self) -> Path:
        if self.root is None:
            raise PostgresError("the private PostgreSQL is not running")
        return self.root

    def _run_as_owner(self, command: str, root: Path | None = None) -> None:
        argv = ["su", "nobody", "-s", "/bin/sh", "-c", command] if self._as_nobody else None
        out = subprocess.run(
            argv or ["/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=str(root or self._root()),
        )
        if out.returncode != 0:
            tail = (self.log() if self.root else "")[-2000:]
            raise PostgresError(
                f"{command.split()[0]} failed ({out.returncode}): {out.stderr.strip()[-2000:]}\n{tail}"
            )
