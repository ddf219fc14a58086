"""Logins per second through the TLS door, on SQLite and PostgreSQL, with one and two nodes.

    python -m bench.login_rate [--logins 300] [--clients 16] [--scrypt-ln 15,10]
                               [--stores sqlite,postgresql] [--nodes 1,2] [--cache cold,warm]
                               [--dovecot performance|stock] [--spares N]

One login is what a road user's mail client does: TCP connect, TLS handshake (no session
resumption), `LOGIN user password+code`, `LOGOUT`. The password verifier is `local` (scrypt
hashes in the store); the upstream login to a private Dovecot is included (passthrough, its
spare connections as configured by default). The travel window is off, so every login checks
and uses up a fresh HOTP code: each client owns one user and counts its codes in order.

scrypt's cost (ln=15, what `roamgate user passwd` writes) is a deliberate choice; --scrypt-ln
also runs with cheaper hashes to show what the rest of the login path can do.

--cache: `cold` runs the gateway with `auth.password_cache_seconds: 0`, so every login pays
scrypt (what a cache miss costs: a user's first login, or one after the TTL); `warm` runs it with
the default cache after one login per user, so every measured login is a hit (the same users
logging in again: a mail client's next poll, its second connection, a mass reconnect after a
line drop). "capacity" is what the gateway alone could do from its CPU per login: 1000 / ms per
core (one node process runs one event loop: one core, plus scrypt in worker threads).

--dovecot: `performance` (the default) sets the private Dovecot up as an operator would for
many logins (long-lived imap-login processes, reused imap processes, Dovecot's auth cache);
`stock` leaves Dovecot's default of a new process per login, as the tests run it.
--spares sets imap_proxy.upstream_spares (upstream connections made ahead of logins): it moves
the upstream connect out of a login's wait, not its CPU.

Bounded: each scenario makes exactly --logins logins. Prints figures; asserts nothing about
speed. Set BENCH_PROFILE=DIR to run each node under cProfile (DIR/node-<store>-<n>-<i>.prof),
or BENCH_PYSPY=DIR under py-spy (DIR/node-....txt, collapsed stacks; CPU figures then include
py-spy's own).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyotp

from roamgate.auth.passwords import hash_password
from roamgate.config import load_config
from roamgate.demo.dovecot import PrivateDovecot, free_port
from roamgate.demo.postgres import PrivatePostgres
from roamgate.runtime import open_runtime


@dataclass
class Account:
    name: str
    password: str
    hotp: pyotp.HOTP
    counter: int = 0

    def secret(self) -> str:
        code = self.hotp.at(self.counter)
        self.counter += 1
        return self.password + code


@dataclass
class Outcome:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    failures: int = 0


def _cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "roamgate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"roamgate {args[0]} failed: {out.stderr.strip()}")
    return out.stdout


def _scrypt_hash(password: str, log2_n: int) -> str:
    """A hash in the format verify_password reads, at a chosen cost (15 is what roamgate writes)."""
    if log2_n == 15:
        return hash_password(password)
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=2**log2_n, r=8, p=1, maxmem=64 << 20, dklen=32
    )

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode().rstrip("=")

    return f"$scrypt$ln={log2_n},r=8,p=1${b64(salt)}${b64(digest)}"


def _make_gateway(d: Path, dovecot: PrivateDovecot, store: str) -> Path:
    _cli(
        "init", "--dir", str(d), "--upstream-imap", f"127.0.0.1:{dovecot.imaps_port}",
        "--upstream-tls", "implicit", "--upstream-ca", str(dovecot.ca_file),
        "--imaps-port", str(free_port()), "--imap-port", str(free_port()),
        "--ssh-port", str(free_port()), "--web-port", str(free_port()),
        "--verifier", "local", "--store", store,
    )  # fmt: skip
    config = d / "roamgate.yaml"
    text = config.read_text()
    for old, new in (
        ("travel_window_seconds: 43200", "travel_window_seconds: 0"),
        # All clients come from 127.0.0.1; nothing here fails on purpose.
        ("ip_threshold: 20", "ip_threshold: 100000"),
        ("max_connections_per_source: 20", "max_connections_per_source: 1000"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    return config


def _second_node(first: Path, target: Path) -> Path:
    """A copy of the first node's directory with ports of its own, on the same store."""
    shutil.copytree(first.parent, target)
    config = target / "roamgate.yaml"
    text = config.read_text()
    cfg = load_config(first)
    for listener in (cfg.listeners.ssh, cfg.listeners.imaps, cfg.listeners.imap, cfg.listeners.web):
        if listener is not None:
            text = text.replace(f"    port: {listener.port}\n", f"    port: {free_port()}\n")
    if "://" not in cfg.store.url:  # SQLite: the first node's file, not the copy
        text = text.replace(
            f"url: {json.dumps(cfg.store.url)}", f"url: {json.dumps(cfg.store_url())}"
        )
    config.write_text(text)
    return config


async def _add_accounts(config: Path, dovecot_users: dict[str, str], log2_n: int) -> list[Account]:
    accounts = []
    async with open_runtime(load_config(config)) as rt:
        for name, password in dovecot_users.items():
            user = await rt.store.get_user(name)
            if user is None:
                user = await rt.store.add_user(name, time.time())
            await rt.store.set_password_hash(name, _scrypt_hash(password, log2_n), time.time())
            for token in await rt.store.list_tokens(user.id):
                await rt.store.revoke_token(token.id, time.time())
            enrolled = await rt.second_factor.enroll(user, "hotp")
            accounts.append(Account(name, password, pyotp.HOTP(enrolled.secret)))
    return accounts


def _set_spares(config: Path, spares: int | None) -> None:
    """imap_proxy.upstream_spares for this run (None: the default)."""
    text = re.sub(r"(?m)^  upstream_spares: \d+\n", "", config.read_text())
    if spares is not None:
        text = text.replace("imap_proxy:\n", f"imap_proxy:\n  upstream_spares: {spares}\n", 1)
    config.write_text(text)


def _set_cache(config: Path, seconds: int) -> None:
    """Turn the verified-password cache off (cold: every login pays scrypt) or on (warm)."""
    text = config.read_text()
    text, n = re.subn(
        r"(?m)^  password_cache_seconds: \d+$", f"  password_cache_seconds: {seconds}", text
    )
    assert n == 1, "password_cache_seconds not in the config init wrote"
    config.write_text(text)


def _start(config: Path, profile: Path | None, pyspy: Path | None) -> subprocess.Popen[bytes]:
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
    spy = []
    if pyspy is not None:
        spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw"]
        spy += ["--rate", "200", "--subprocesses", "-o", str(pyspy), "--"]
    process = subprocess.Popen(
        [*spy, sys.executable, *prefix, "-m", "roamgate", "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listener = load_config(config).listeners.imaps
    assert listener is not None
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", listener.port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"roamgate serve -c {config} did not start") from None
            time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    children: list[str] = []
    if os.environ.get("BENCH_PYSPY"):  # py-spy writes its profile when the gateway ends
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    for child in children:
        os.kill(int(child), signal.SIGTERM)
    if not children:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _cpu_seconds(pid: int) -> float:
    """CPU of a process and all its descendants, alive or reaped (utime+stime+cutime+cstime)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = sum(int(f) for f in fields[11:15])
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += used.get(p, 0)
        todo += [c for c, parent in parents.items() if parent == p]
    return total / ticks


def _commits(pg: PrivatePostgres | None) -> int:
    """Transactions committed in the bench database (each autocommit statement is one)."""
    assert pg is not None
    time.sleep(1.5)  # backends report their counters at most once a second
    return int(pg.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'"))


async def _login(port: int, ctx: ssl.SSLContext, account: Account) -> bool:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
    )
    try:
        if not (await reader.readline()).startswith(b"* OK"):
            return False
        writer.write(f'a LOGIN {account.name} "{account.secret()}"\r\nb LOGOUT\r\n'.encode())
        ok = False
        while line := await reader.readline():
            if line.startswith(b"a "):
                ok = line.startswith(b"a OK")
            if line.startswith(b"b "):
                break
        return ok
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def _drive(
    ports: list[int], ctx: ssl.SSLContext, accounts: list[Account], logins: int
) -> Outcome:
    """Each client logs in as its own user, one login after another, on node (client % nodes)."""
    per_client = [
        logins // len(accounts) + (i < logins % len(accounts)) for i in range(len(accounts))
    ]
    outcome = Outcome(0.0)

    async def client(i: int) -> None:
        port = ports[i % len(ports)]
        for _ in range(per_client[i]):
            began = time.perf_counter()
            try:
                ok = await asyncio.wait_for(_login(port, ctx, accounts[i]), 60)
            except (OSError, ssl.SSLError, TimeoutError):
                ok = False
            outcome.latencies.append(time.perf_counter() - began)
            outcome.failures += not ok

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(len(accounts))))
    outcome.seconds = time.perf_counter() - started
    return outcome


def _scenario(
    store_kind: str,
    configs: list[Path],
    accounts: list[Account],
    args: argparse.Namespace,
    log2_n: int,
    peers: dict[str, int],
    pg: PrivatePostgres | None,
    cache: str,
) -> None:
    profile_dir = os.environ.get("BENCH_PROFILE")
    pyspy_dir = os.environ.get("BENCH_PYSPY")
    processes = []
    try:
        for i, config in enumerate(configs):
            name = f"node-{store_kind}-{len(configs)}-ln{log2_n}-{cache}-{i}"
            profile = Path(profile_dir) / f"{name}.prof" if profile_dir else None
            pyspy = Path(pyspy_dir) / f"{name}.txt" if pyspy_dir else None
            _set_cache(config, 0 if cache == "cold" else 900)
            _set_spares(config, args.spares)
            processes.append(_start(config, profile, pyspy))
        ports = []
        for config in configs:
            listener = load_config(config).listeners.imaps
            assert listener is not None
            ports.append(listener.port)
        ctx = ssl.create_default_context(cafile=str(configs[0].parent / "tls" / "ca.pem"))
        # Warm up: one login per client (imports, first handshakes, pools filled; with the
        # cache on, each user's password is now remembered).
        asyncio.run(_drive(ports, ctx, accounts, len(accounts)))
        if store_kind != "postgresql":
            peers = {k: v for k, v in peers.items() if k != "postgresql"}
        cpu_before = [_cpu_seconds(p.pid) for p in processes]
        peers_before = {name: _cpu_seconds(pid) for name, pid in peers.items()}
        commits_before = _commits(pg) if store_kind == "postgresql" else 0
        client_before = time.process_time()
        result = asyncio.run(_drive(ports, ctx, accounts, args.logins))
        client_cpu = time.process_time() - client_before
        gw_cpu = sum(_cpu_seconds(p.pid) - b for p, b in zip(processes, cpu_before, strict=True))
        peer_cpu = {name: _cpu_seconds(pid) - peers_before[name] for name, pid in peers.items()}
        commits = _commits(pg) - commits_before if store_kind == "postgresql" else 0
    finally:
        for p in processes:
            _stop(p)
    lat = sorted(result.latencies)
    p95 = lat[int(0.95 * (len(lat) - 1))]
    gw_ms = gw_cpu / args.logins * 1000
    print(
        f"{store_kind:10} {len(configs)} node{'s' if len(configs) > 1 else ' '}  scrypt ln={log2_n}"
        f" {cache:4}: {args.logins} logins in {result.seconds:5.1f} s ="
        f" {args.logins / result.seconds:6.1f} logins/s  (p50 {statistics.median(lat) * 1000:5.0f}"
        f" ms, p95 {p95 * 1000:5.0f} ms; failures {result.failures}; load"
        f" {os.getloadavg()[0]:.1f})\n    CPU ms per login: gateway {gw_cpu / args.logins * 1000:.1f},"
        + "".join(f" {k} {v / args.logins * 1000:.1f}," for k, v in peer_cpu.items())
        + f" client {client_cpu / args.logins * 1000:.1f}"
        + (f"; database transactions per login {commits / args.logins:.1f}" if commits else "")
        + f"\n    capacity implied by CPU: gateway alone {1000 / gw_ms:.0f} logins/s per core,"
        + "".join(
            f" {k} alone {1000 / (v / args.logins * 1000):.0f},"
            for k, v in peer_cpu.items()
            if v > 0
        )
        + f" gateway + peers on one core {1000 / ((gw_cpu + sum(peer_cpu.values())) / args.logins * 1000):.0f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logins", type=int, default=300, help="logins per scenario")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (= users)")
    parser.add_argument("--scrypt-ln", default="15,10", help="scrypt cost(s), log2 N")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--nodes", default="1,2")
    parser.add_argument("--cache", default="cold,warm", help="cold (cache off), warm (hits)")
    parser.add_argument("--dovecot", choices=("performance", "stock"), default="performance")
    parser.add_argument(
        "--spares", type=int, default=None, help="imap_proxy.upstream_spares (default: 2)"
    )
    args = parser.parse_args()
    if not 1 <= args.clients <= 200 or not 1 <= args.logins <= 100_000:
        parser.error("--clients 1-200, --logins 1-100000")
    costs = [int(x) for x in args.scrypt_ln.split(",")]
    node_counts = [int(x) for x in args.nodes.split(",")]
    users = {f"u{i:03d}": f"pw-{secrets.token_hex(4)}-{i}" for i in range(args.clients)}
    print(
        f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, python"
        f" {sys.version.split()[0]}, loopback; {args.clients} clients, TLS + LOGIN"
        f" (local scrypt password + HOTP code) + LOGOUT, upstream login to Dovecot"
        f" ({args.dovecot} login mode) included; upstream_spares"
        f" {2 if args.spares is None else args.spares}"
    )
    with tempfile.TemporaryDirectory(prefix="roamgate-bench-") as tmp:
        work = Path(tmp)
        processes = 4 if args.dovecot == "performance" else 0
        with PrivateDovecot(work / "dovecot", login_processes=processes) as dovecot:
            for name, password in users.items():
                dovecot.add_user(name, password)
            pg = PrivatePostgres(durable=True).start() if "postgresql" in args.stores else None
            peers = {"dovecot": int((dovecot.base_dir / "master.pid").read_text().split()[0])}
            if pg is not None:
                peers["postgresql"] = pg.pid
            try:
                for store_kind in args.stores.split(","):
                    if store_kind == "postgresql":
                        assert pg is not None
                        store = pg.url(pg.create_database("bench"))
                    else:
                        store = "roamgate.db"
                    first = _make_gateway(work / f"gw-{store_kind}-a", dovecot, store)
                    second = _second_node(first, work / f"gw-{store_kind}-b")
                    for log2_n in costs:
                        accounts = asyncio.run(_add_accounts(first, users, log2_n))
                        for n in node_counts:
                            for cache in args.cache.split(","):
                                _scenario(
                                    store_kind,
                                    [first, second][:n],
                                    accounts,
                                    args,
                                    log2_n,
                                    peers,
                                    pg,
                                    cache,
                                )
            finally:
                if pg is not None:
                    pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
