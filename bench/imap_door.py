"""roamgate's TLS door against Dovecot's own IMAPS, side by side on loopback, in one run.

    python -m bench.imap_door [--rounds 15] [--big-mib 20]

1. LOGIN + SELECT + FETCH of 100 headers, direct vs through the gateway (the gateway's login
   includes the one-time code check: the travel window is off, every login uses a new HOTP code).
2. FETCH BODY[] of one large message, direct vs through the gateway: throughput, and the
   gateway process's resident memory sampled every 20 ms while it streams.

Prints figures; asserts nothing about speed (this machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyotp

from roamgate.demo.dovecot import PrivateDovecot, free_port

USER, PASSWORD = "bench", "bench-password"


def _message(i: int) -> bytes:
    return (
        f"From: sender{i}@example.com\r\nTo: {USER}@example.com\r\n"
        f"Subject: message number {i}\r\nMessage-ID: <bench-{i}@example.com>\r\n"
        f"Date: Thu, 03 Dec 2026 10:{i % 60:02d}:00 +0000\r\n\r\n"
        + "A line of body text for the benchmark.\r\n"
        * 20
    ).encode()


def _big_message(size: int) -> bytes:
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3\r\n"
    head = (
        b"From: big@example.com\r\nTo: bench@example.com\r\nSubject: big\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head + line * (size // len(line))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "roamgate", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout


def _session(connect: Callable[[], imaplib.IMAP4_SSL], secret: Callable[[], str]) -> float:
    started = time.perf_counter()
    client = connect()
    client.login(USER, secret())
    client.select("INBOX", readonly=True)
    status, data = client.fetch("1:100", "(BODY.PEEK[HEADER])")
    assert status == "OK" and len([d for d in data if isinstance(d, tuple)]) == 100
    client.logout()
    return time.perf_counter() - started


def _fetch_big(connect: Callable[[], imaplib.IMAP4_SSL], secret: str, size: int) -> float:
    client = connect()
    client.login(USER, secret)
    client.select("Big", readonly=True)
    started = time.perf_counter()
    status, data = client.fetch("1", "(BODY.PEEK[])")
    elapsed = time.perf_counter() - started
    first = data[0]
    assert status == "OK" and isinstance(first, tuple) and len(first[1]) == size
    client.logout()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--big-mib", type=int, default=20)
    parser.add_argument(
        "--spares", type=int, default=2, help="imap_proxy.upstream_spares (0: connect per login)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="roamgate-bench-") as tmp:
        work = Path(tmp)
        with PrivateDovecot(work / "dovecot") as dovecot:
            dovecot.add_user(USER, PASSWORD)
            big = _big_message(args.big_mib * 1024 * 1024)
            dovecot.populate(
                USER, PASSWORD, {"INBOX": [_message(i) for i in range(120)], "Big": [big]}
            )
            gw = work / "gw"
            imaps = free_port()
            _cli(
                "init", "--dir", str(gw), "--upstream-imap", f"127.0.0.1:{dovecot.imaps_port}",
                "--upstream-tls", "implicit", "--upstream-ca", str(dovecot.ca_file),
                "--imaps-port", str(imaps), "--imap-port", str(free_port()),
                "--ssh-port", str(free_port()), "--web-port", str(free_port()),
            )  # fmt: skip
            config = gw / "roamgate.yaml"
            text = config.read_text()
            for old, new in (
                ("travel_window_seconds: 43200", "travel_window_seconds: 0"),
                ("imap_proxy:\n", f"imap_proxy:\n  upstream_spares: {args.spares}\n"),
            ):
                assert old in text, old
                text = text.replace(old, new)
            config.write_text(text)
            _cli("user", "add", USER, "-c", str(config))
            token = json.loads(
                _cli("token", "enroll", USER, "--type", "hotp", "--json", "-c", str(config))
            )
            hotp = pyotp.HOTP(token["secret"])
            counter = [0]

            def next_secret() -> str:
                code = hotp.at(counter[0])
                counter[0] += 1
                return PASSWORD + code

            profile = os.environ.get("BENCH_PROFILE")  # a path: run serve under cProfile
            prefix = ["-m", "cProfile", "-o", profile] if profile else []
            serve = subprocess.Popen(
                [sys.executable, *prefix, "-m", "roamgate", "serve", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        imaplib.IMAP4_SSL(
                            "127.0.0.1", imaps, ssl_context=ssl.create_default_context(
                                cafile=str(gw / "tls" / "ca.pem"))
                        ).shutdown()  # fmt: skip
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                _run(args, dovecot, imaps, gw, next_secret, serve.pid, len(big))
            finally:
                serve.send_signal(signal.SIGTERM)
                serve.wait(timeout=20)
    return 0


def _run(
    args: argparse.Namespace,
    dovecot: PrivateDovecot,
    imaps: int,
    gw: Path,
    next_secret: Callable[[], str],
    serve_pid: int,
    big_size: int,
) -> None:
    gw_ctx = ssl.create_default_context(cafile=str(gw / "tls" / "ca.pem"))
    dv_ctx = dovecot.client_context()

    def direct() -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port, ssl_context=dv_ctx, timeout=60)

    def gateway() -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=gw_ctx, timeout=60)

    print(
        f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, loopback;"
        f" upstream_spares: {args.spares}"
    )
    # Warm both paths once (imports, first TLS handshakes), then alternate.
    _session(direct, lambda: PASSWORD)
    _session(gateway, next_secret)
    d_times, g_times = [], []
    for _ in range(args.rounds):
        d_times.append(_session(direct, lambda: PASSWORD))
        g_times.append(_session(gateway, next_secret))
    d_med, g_med = statistics.median(d_times), statistics.median(g_times)
    print(
        f"LOGIN+SELECT+FETCH 100 headers, median of {args.rounds}:"
        f" direct {d_med * 1000:.1f} ms, roamgate {g_med * 1000:.1f} ms"
        f" (ratio {g_med / d_med:.2f}x, target <= 1.5x; OTP check included)"
    )

    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_rss_kib(serve_pid))
            time.sleep(0.02)

    mib = big_size / (1024 * 1024)
    direct_times = [_fetch_big(direct, PASSWORD, big_size) for _ in range(3)]
    # One login with a code opens nothing long-lived: each FETCH run logs in afresh.
    before = _rss_kib(serve_pid)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    gw_times = [_fetch_big(gateway, next_secret(), big_size) for _ in range(3)]
    stop.set()
    thread.join()
    d_best, g_best = min(direct_times), min(gw_times)
    print(
        f"FETCH BODY[] of a {mib:.1f} MiB message, best of 3:"
        f" direct {mib / d_best:.0f} MiB/s, roamgate {mib / g_best:.0f} MiB/s"
        f" (ratio {d_best / g_best:.2f}x of direct, target >= 0.5x)"
    )
    print(
        f"roamgate serve RSS: {before / 1024:.1f} MiB before, max {max(samples) / 1024:.1f} MiB"
        f" while streaming ({len(samples)} samples, +{(max(samples) - before) / 1024:.1f} MiB"
        f" for a {mib:.0f} MiB message)"
    )


if __name__ == "__main__":
    sys.exit(main())
