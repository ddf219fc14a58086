"""Shared fixtures: a fake clock, a gateway directory made by the real `roamgate init`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roamgate.demo.postgres import PG_BIN, PrivatePostgres


class FakeClock:
    """A clock the test moves by hand; injected wherever the code asks for the time."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def run_cli(
    *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m roamgate ARGS` as a separate process, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "roamgate", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="session")
def gateway_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `roamgate init` per test session (keys take a moment); tests copy it."""
    d = tmp_path_factory.mktemp("template") / "gw"
    r = run_cli("init", "--dir", str(d), "--upstream-imap", "127.0.0.1:1", "--upstream-tls", "none")
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture
def gateway_dir(gateway_template: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of an initialised gateway directory."""
    d = tmp_path / "gw"
    shutil.copytree(gateway_template, d)
    yield d


def require_program(name: str) -> str:
    """The path of a peer program; fail (not skip) if the install step did not provide it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: `make test` installs it (deploy/dev/install-peers.sh)"
        )
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    """One real PostgreSQL 15 for the whole session (started on first use, stopped at the end)."""
    if not (PG_BIN / "pg_ctl").exists():
        pytest.fail(
            f"PostgreSQL 15 is not installed ({PG_BIN}): `make test` installs it"
            " (deploy/dev/install-peers.sh)"
        )
    with PrivatePostgres() as server:
        yield server


@pytest.fixture
def pg_database(postgres: PrivatePostgres) -> Iterator[str]:
    """A fresh, empty database for one test: its postgresql:// URL (password included)."""
    name = postgres.create_database()
    yield postgres.url(name)
    # FORCE: a test that failed half-way may have left a pool open.
    postgres.sql(f"DROP DATABASE {name} WITH (FORCE)")
