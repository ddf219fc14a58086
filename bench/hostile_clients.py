"""Hostile clients against a running gateway, and a legitimate user's login time while they run.

Each attack is a bounded function (it stops by itself or when told) that the tests in
tests/gateway/test_hostile_clients.py and tests/ssh/test_ssh_hostile.py also run. The bench
starts a private Dovecot and a real `roamgate serve`, measures the legitimate user's LOGIN (password
+ HOTP code) + SELECT + FETCH when idle, then during each attack, and prints both:

    python -m bench.hostile_clients [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import socket
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ATTACKER_SOURCE = "127.0.0.2"  # attackers connect from here; the legitimate user from 127.0.0.1


@dataclass
class Target:
    """Where the TLS door listens and how to trust it."""

    port: int
    context: ssl.SSLContext
    stop: threading.Event = field(default_factory=threading.Event)
    # What each attack saw, for the tests to assert on.
    notes: dict[str, object] = field(default_factory=dict)

    def connect(self, timeout: float = 30) -> ssl.SSLSocket:
        raw = socket.create_connection(
            ("127.0.0.1", self.port), timeout=timeout, source_address=(ATTACKER_SOURCE, 0)
        )
        return self.context.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_line(sock: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
        if len(data) > 1 << 16:
            break
    return bytes(data)


def _drain_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the gateway sends until it closes; and when it closed (monotonic)."""
    got = bytearray()
    sock.settimeout(limit)
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            got += chunk
    return bytes(got), time.monotonic()


def slowloris(t: Target, interval: float = 10.0) -> None:
    """One byte every `interval` seconds of a line that never ends; the grace time must end it."""
    sock = t.connect()
    began = time.monotonic()
    greeting = _read_line(sock)
    sock.settimeout(interval)
    sent = 0
    closed_by_gateway = False
    tail = b""
    try:
        for byte in b"A1 LOGIN bob " + b"x" * 10_000:
            if t.stop.is_set():
                break
            sock.sendall(bytes([byte]))
            sent += 1
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            tail += data
            if not data or b"BYE" in tail:
                closed_by_gateway = True
                break
    except OSError:
        closed_by_gateway = True
    finally:
        sock.close()
    t.notes["slowloris"] = {
        "greeting": greeting,
        "bytes_sent": sent,
        "closed_by_gateway": closed_by_gateway,
        "seconds": time.monotonic() - began,
        "last": tail,
    }


def endless_literal(t: Target) -> None:
    """A non-synchronising literal of 2 GB whose bytes keep coming until the gateway stops it."""
    sock = t.connect()
    began = time.monotonic()
    _read_line(sock)
    sent = 0
    chunk = b"\x41" * 65536
    sock.sendall(b"A1 LOGIN bob {2000000000+}\r\n")
    try:
        while not t.stop.is_set() and sent < 2_000_000_000:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    reply, _ = _drain_until_closed(sock, 5)
    sock.close()
    t.notes["endless_literal"] = {
        "bytes_sent": sent,
        "reply": reply[-200:],
        "seconds": time.monotonic() - began,
    }


def pipelined(t: Target, count: int = 10_000) -> None:
    """`count` commands sent in one go without reading; then every answer is read."""
    sock = t.connect()
    _read_line(sock)
    payload = b"".join(b"P%d NOOP\r\n" % i for i in range(count))
    writer = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
    writer.start()
    time.sleep(1)  # the gateway must stop reading rather than queue 10,000 answers
    got = bytearray()
    sock.settimeout(30)
    last = b"P%d OK" % (count - 1)
    with contextlib.suppress(OSError):
        while last not in got:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    writer.join(30)
    sock.close()
    t.notes["pipelined"] = {"answered": got.count(b" OK NOOP completed."), "sent": count}


def deep_nesting(t: Target, depth: int = 1000) -> None:
    """ID with a thousand nested lists (within the 8 KiB line), then a NOOP on the same connection."""
    sock = t.connect()
    _read_line(sock)
    sock.sendall(b"N1 ID " + b"(" * depth + b")" * depth + b"\r\nN2 NOOP\r\n")
    replies = [_read_line(sock), _read_line(sock)]
    sock.close()
    t.notes["deep_nesting"] = replies


def bad_bytes(t: Target) -> None:
    """Invalid UTF-8 in a quoted string, NUL bytes, 8-bit atoms; then a NOOP still answers."""
    sock = t.connect()
    _read_line(sock)
    lines = [
        b'U1 LOGIN "\xff\xfe\xc3" "x"\r\n',
        b"U2 NO\x00OP\r\n",
        b"U3 LOGIN bob\x00 x\r\n",
        b'U4 ID ("name" "\xed\xa0\x80")\r\n',
        b"\x00\x00\x00\r\n",
        b"U5 NOOP\r\n",
    ]
    sock.sendall(b"".join(lines))
    replies = [_read_line(sock) for _ in range(len(lines))]
    sock.close()
    t.notes["bad_bytes"] = replies


def oversized_id(t: Target) -> None:
    """ID with too many pairs, then with a 2,000-byte value by literal; then a NOOP answers."""
    sock = t.connect()
    _read_line(sock)
    pairs = b" ".join(b'"k%d" "v"' % i for i in range(31))
    sock.sendall(b"I1 ID (" + pairs + b")\r\n")
    first = _read_line(sock)
    sock.sendall(b'I2 ID ("name" {2000}\r\n')
    go_ahead = _read_line(sock)
    if go_ahead.startswith(b"+"):
        sock.sendall(b"v" * 2000 + b")\r\n")
    second = _read_line(sock) if go_ahead.startswith(b"+") else go_ahead
    sock.sendall(b"I3 NOOP\r\n")
    third = _read_line(sock)
    sock.close()
    t.notes["oversized_id"] = [first, second, third]


def auth_flood(t: Target, connections: int = 40, attempts: int = 3) -> None:
    """Failed logins from many source ports at once (each connection its own port)."""
    results: list[bytes] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            sock = t.connect()
            _read_line(sock)
            for j in range(attempts):
                if t.stop.is_set():
                    break
                sock.sendall(b"F%d LOGIN flood%d wrong-password%06d\r\n" % (j, i, j))
                reply = _read_line(sock)
                with lock:
                    results.append(reply)
                if not reply or b"BYE" in reply:
                    break
            sock.close()
        except OSError as exc:
            with lock:
                results.append(type(exc).__name__.encode())

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # A short attack is repeated while the user logs in, and the last round may be stopped
    # before it sends anything: the replies of every round count.
    earlier = t.notes.get("auth_flood")
    t.notes["auth_flood"] = (earlier if isinstance(earlier, list) else []) + results


ATTACKS: dict[str, Callable[[Target], None]] = {
    "slowloris": slowloris,
    "endless_literal": endless_literal,
    "pipelined_10000": pipelined,
    "deep_nesting": deep_nesting,
    "invalid_utf8_and_nul": bad_bytes,
    "oversized_id": oversized_id,
    "auth_flood": auth_flood,
}

# Attacks that only the gateway can end (the grace time): not repeated.
ENDED_BY_THE_GATEWAY = frozenset({"slowloris"})


@contextlib.contextmanager
def under_attack(
    t: Target, attack: Callable[[Target], None], warmup: float = 1.0, *, to_the_end: bool = False
) -> Iterator[None]:
    """Run the attack in a thread; the body runs while it is under way; then stop and join it.

    to_the_end: let the attack finish by itself (the gateway must end it) instead of stopping it.
    """
    t.stop.clear()

    def again() -> None:
        # A short attack is repeated, so that it is under way while the user logs in.
        attack(t)
        while not to_the_end and not t.stop.is_set():
            attack(t)

    thread = threading.Thread(target=again, daemon=True)
    thread.start()
    time.sleep(warmup)
    try:
        yield
    finally:
        if not to_the_end:
            t.stop.set()
        thread.join(120)
        t.stop.set()


def legitimate_session(
    port: int, context: ssl.SSLContext, user: str, secret: str, timeout: float = 60
) -> float:
    """LOGIN (password + code), SELECT INBOX, FETCH 1 BODY.PEEK[]; seconds it took."""
    began = time.monotonic()
    client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=timeout)
    try:
        assert client.login(user, secret)[0] == "OK"
        assert client.select("INBOX")[0] == "OK"
        typ, data = client.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK" and data and data[0] is not None
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    return time.monotonic() - began


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    import pyotp

    from roamgate.demo.dovecot import PrivateDovecot
    from tests.gateway.conftest import running_gateway

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="legitimate sessions per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, PrivateDovecot(Path(tmp) / "dovecot") as dovecot:
        dovecot.add_user("bob", "bob-pw")
        dovecot.deliver("bob", b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n")
        with running_gateway(
            dovecot,
            Path(tmp) / "gw",
            users={"bob": "bob-pw"},
            proxy_settings={"login_grace_seconds": 10, "failure_delay_ms": 2500},
            replace={"ip_threshold: 10000": "ip_threshold: 20", "level: debug": "level: info"},
        ) as gw:
            hotp = pyotp.HOTP(gw.secrets["bob"])
            counter = [0]

            def session() -> float:
                code = hotp.at(counter[0])
                counter[0] += 1
                return legitimate_session(gw.imaps_port, gw.context(), "bob", "bob-pw" + code)

            target = Target(gw.imaps_port, gw.context())
            session()  # warm the spare upstream connections
            rss = [_rss_kib(gw.process.pid)]
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(0.2):
                    rss.append(_rss_kib(gw.process.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            print(
                f"{'attack':<22} {'idle median':>12} {'under attack':>13} {'ratio':>6}"
                f" {'max under attack':>17}   (LOGIN+SELECT+FETCH, {args.rounds} rounds each;"
                " idle measured just before each attack)"
            )
            for name, attack in ATTACKS.items():
                idle = [session() for _ in range(args.rounds)]
                with under_attack(target, attack, to_the_end=name in ENDED_BY_THE_GATEWAY):
                    times = [session() for _ in range(args.rounds)]
                ratio = statistics.median(times) / statistics.median(idle)
                print(
                    f"{name:<22} {statistics.median(idle) * 1000:>9.0f} ms"
                    f" {statistics.median(times) * 1000:>10.0f} ms {ratio:>5.2f}x"
                    f" {max(times) * 1000:>14.0f} ms"
                )
            sampling.set()
            sampler.join(5)
            alive = gw.process.poll() is None
            print(
                f"gateway still running: {alive}; its RSS {rss[0] // 1024} MiB before the"
                f" attacks, at most {max(rss) // 1024} MiB during them ({len(rss)} samples)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
