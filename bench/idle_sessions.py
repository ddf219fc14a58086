"""N idle IMAP sessions through the TLS door: the gateway's memory per session and CPU at idle.

    python -m bench.idle_sessions [--sessions 1000,5000] [--idle-seconds 30] [--concurrency 50]

For each N, a fresh `roamgate serve` in front of a private Dovecot (raised to N connections:
performance-mode login processes, 50 sessions per imap process). N clients, all asyncio streams
with TLS in this one process, each log in (password + code once, then the password alone
inside the travel window that login opened), SELECT INBOX and then stay silent. Printed:
the gateway's resident memory before and after (RSS delta / N against the issue's target of
100 KB per idle TLS IMAP session), its CPU while all N sit idle, and how long a SIGTERM
drain of N idle sessions takes. Open-file limits are raised to the hard limit first (this
process, and the gateway and Dovecot through inheritance).

Prints figures; asserts nothing about speed (this machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import json
import os
import re
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyotp

from roamgate.demo.dovecot import PrivateDovecot, free_port

USER, PASSWORD = "idle", "idle-password"
CLIENT_BUFFER = 16 * 1024  # this process's own TLS read buffer per client (it holds N clients)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "roamgate", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Client:
    """One idle session: greeting, LOGIN, SELECT INBOX, then nothing."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, port: int, ctx: ssl.SSLContext, secret: str) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
        )
        await self._expect(b"* OK")
        self.writer.write(b'a1 LOGIN %s "%s"\r\n' % (USER.encode(), secret.encode()))
        await self._expect(b"a1 OK")
        self.writer.write(b"a2 SELECT INBOX\r\n")
        await self._expect(b"a2 OK")

    async def _expect(self, prefix: bytes) -> None:
        assert self.reader is not None
        tag = prefix.split()[0]
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 120)
            if not line:
                raise ConnectionError("closed by the gateway")
            if line.startswith(tag + b" ") or tag == b"*":
                if not line.startswith(prefix):
                    raise RuntimeError(f"unexpected answer: {line[:80]!r}")
                return

    async def read_bye(self) -> bool:
        assert self.reader is not None
        try:
            line = await asyncio.wait_for(self.reader.readline(), 60)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            return False
        return line.startswith(b"* BYE")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _open_all(
    n: int, port: int, ctx: ssl.SSLContext, secret: str, concurrency: int
) -> tuple[list[Client], int]:
    clients = [Client() for _ in range(n)]
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(c: Client) -> None:
        nonlocal failures
        async with gate:
            try:
                await c.open(port, ctx, secret)
            except (OSError, ssl.SSLError, TimeoutError, RuntimeError, ConnectionError) as exc:
                failures += 1
                if failures <= 3:
                    print(f"  a session failed to open: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(c) for c in clients))
    return clients, failures


async def _measure(
    n: int,
    serve: subprocess.Popen[bytes],
    port: int,
    ctx: ssl.SSLContext,
    secret: str,
    args: argparse.Namespace,
) -> None:
    pid = serve.pid
    if args.tracemalloc:
        serve.send_signal(signal.SIGUSR1)  # the baseline snapshot
        await asyncio.sleep(5)
    before = _rss_kib(pid)
    began = time.monotonic()
    clients, failures = await _open_all(n, port, ctx, secret, args.concurrency)
    opened = time.monotonic() - began
    ok = n - failures
    await asyncio.sleep(5)  # let the logins' bookkeeping settle
    after = _rss_kib(pid)
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(args.idle_seconds)
    cpu1, t1 = _cpu_seconds(pid), time.monotonic()
    after_idle = _rss_kib(pid)
    if args.tracemalloc:
        serve.send_signal(signal.SIGUSR1)
        await asyncio.sleep(10)
    per = (after - before) / max(ok, 1)
    print(
        f"N={n}: {ok} sessions open in {opened:.1f} s ({ok / opened:.0f} logins/s,"
        f" concurrency {args.concurrency}); {failures} failed"
    )
    print(
        f"  gateway RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB with {ok} idle"
        f" sessions ({after_idle / 1024:.1f} MiB after {args.idle_seconds:g} s idle):"
        f" {per:.1f} KiB per session (target <= 100 KB = 97.7 KiB)"
    )
    print(
        f"  gateway CPU at idle: {100 * (cpu1 - cpu0) / (t1 - t0):.1f} % of one core"
        f" over {t1 - t0:.0f} s"
    )
    drain_began = time.monotonic()
    serve.send_signal(signal.SIGTERM)
    byes = await asyncio.gather(*(c.read_bye() for c in clients if c.writer is not None))
    code = await asyncio.to_thread(serve.wait, 120)
    print(
        f"  SIGTERM: {sum(byes)} of {len(byes)} told BYE; serve exited ({code}) after"
        f" {time.monotonic() - drain_began:.1f} s"
    )
    for c in clients:
        c.close()
    await asyncio.sleep(0.5)


# `--tracemalloc FILE`: serve runs with tracemalloc on and writes its top allocations (by line)
# to FILE when it gets SIGUSR1, which the bench sends once all sessions sit idle.
_TRACED_SERVE = """
import gc, signal, sys, tracemalloc
tracemalloc.start(1)
base = []
def dump(*_):
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    if not base:
        base.append(snap)
        return
    with open(sys.argv[1], "w") as out:
        total = sum(s.size_diff for s in snap.compare_to(base[0], "filename"))
        out.write(f"traced growth since the baseline: {total / 1024:.0f} KiB\\n")
        for stat in snap.compare_to(base[0], "lineno")[:40]:
            out.write(f"{stat}\\n")
signal.signal(signal.SIGUSR1, dump)
from roamgate.cli import main
sys.exit(main(["serve", "-c", sys.argv[2]]))
"""


def _start_serve(config: Path, log: Path, traced: str | None) -> subprocess.Popen[bytes]:
    argv = ["-m", "roamgate", "serve", "-c", str(config)]
    if traced is not None:
        argv = ["-c", _TRACED_SERVE, traced, str(config)]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _wait_port(port: int, serve: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("roamgate serve did not start") from None
            await asyncio.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sessions", default="1000,5000", help="comma-separated N values")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=50, help="logins under way at once")
    parser.add_argument("--tracemalloc", metavar="FILE", help="write serve's top allocations here")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sessions.split(",")]
    nofile = _raise_nofile()
    need = 2 * max(sizes) + 200
    print(
        f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, loopback;"
        f" open-file limit {nofile} (need about {need})"
    )
    if nofile < need:
        print("the open-file limit is too low for the largest N; raise the hard limit")
        return 1
    # The clients are this process's: a small TLS buffer each keeps the bench itself cheap.
    asyncio.sslproto.SSLProtocol.max_size = CLIENT_BUFFER
    with tempfile.TemporaryDirectory(prefix="roamgate-idle-") as tmp:
        work = Path(tmp)
        with PrivateDovecot(work / "dovecot", max_connections=max(sizes) + 50) as dovecot:
            dovecot.add_user(USER, PASSWORD)
            dovecot.populate(USER, PASSWORD, {"INBOX": []})
            gw = work / "gw"
            imaps = free_port()
            _cli(
                "init", "--dir", str(gw), "--upstream-imap", f"127.0.0.1:{dovecot.imaps_port}",
                "--upstream-tls", "implicit", "--upstream-ca", str(dovecot.ca_file),
                "--imaps-port", str(imaps), "--imap-port", str(free_port()),
                "--ssh-port", str(free_port()), "--web-port", str(free_port()),
            )  # fmt: skip
            config = gw / "roamgate.yaml"
            text = config.read_text().replace("level: info", "level: warning")
            cap = max(sizes) + 100
            text = re.sub(r"(?m)^  max_connections: \d+", f"  max_connections: {cap}", text)
            text = re.sub(
                r"(?m)^  max_connections_per_source: 20$",
                f"  max_connections_per_source: {cap}",
                text,
            )
            config.write_text(text)
            _cli("user", "add", USER, "-c", str(config))
            token = json.loads(
                _cli("token", "enroll", USER, "--type", "hotp", "--json", "-c", str(config))
            )
            # One code opens the travel window for this address; every later login sends the
            # same password + (now spent) code, as a mail client that saved it would.
            secret = PASSWORD + pyotp.HOTP(token["secret"]).at(0)
            ctx = ssl.create_default_context(cafile=str(gw / "tls" / "ca.pem"))
            for n in sizes:
                serve = _start_serve(config, gw / "serve.log", args.tracemalloc)
                try:
                    asyncio.run(_one_size(n, serve, imaps, ctx, secret, args))
                finally:
                    if serve.poll() is None:
                        serve.send_signal(signal.SIGTERM)
                        serve.wait(timeout=120)
    return 0


async def _one_size(
    n: int,
    serve: subprocess.Popen[bytes],
    port: int,
    ctx: ssl.SSLContext,
    secret: str,
    args: argparse.Namespace,
) -> None:
    await _wait_port(port, serve)
    warm = Client()  # imports, caches and the first handshakes before the baseline
    await warm.open(port, ctx, secret)
    warm.close()
    await asyncio.sleep(2)
    await _measure(n, serve, port, ctx, secret, args)


if __name__ == "__main__":
    sys.exit(main())
