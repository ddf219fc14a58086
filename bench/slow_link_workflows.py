"""Mail workflows over an emulated slow link: direct IMAPS, OpenSSH tunnels, roamgate's profiles.

    python -m bench.slow_link_workflows [--links phs,isdn]
        [--paths direct,ssh,ssh-C,lan,isdn,phs,pda,connect]
        [--workflows triage,selective,full] [--corpus-scale 1.0] [--max-seconds 60]
        [--budget-minutes 20] [--direct-compress] [--cut-every 60 [--cut-first 2]]

Every path gets a SlowLink (bench/slowlink.py) on its client side:
  direct     imaplib -> link -> Dovecot IMAPS
  ssh, ssh-C imaplib -> ssh -L (without / with -C) -> link -> a private sshd -> Dovecot IMAP
  lan ...    imaplib -> link -> roamgate's TLS door, logged in as `bench#PROFILE` -> Dovecot
  connect    imaplib -> roamgate-connect (local IMAP port) -> link -> roamgate's SSH door (zlib)
             -> roamgate's IMAP proxy, logged in as `bench#phs` (`bench#isdn` on isdn) with the
             password alone: the tunnel's keyboard-interactive login took password and HOTP code
The client uses COMPRESS=DEFLATE where roamgate offers it (Dovecot's own only with
--direct-compress: the direct path stands for the simple client people use today).
The tunnel's own setup on the ssh and connect paths (TCP, SSH handshake, login) is left out of
a cell's bytes and time, as a laptop does it once a session; for connect it is printed apart.

Workflows (imaplib, one login each; the corpus is bench/corpus.py, every message \\Seen):
  triage     SELECT INBOX, FETCH (FLAGS RFC822.SIZE BODY.PEEK[HEADER]) of the 50 newest, then
             FETCH (RFC822) of each of the 5 newest
  selective  FETCH (ENVELOPE BODYSTRUCTURE) of the 50 newest, then BODY.PEEK[first text
             section] of the 5 newest
  full       every message whole, FETCH (RFC822) in batches of 50

Each cell runs once unshaped (loopback speed, to count bytes and round trips); when bytes /
rate + round trips x RTT fits in --max-seconds (and the run's --budget-minutes is not spent)
it runs again through the shaped link and the wall time is measured, else the time is that
estimate, marked `est.`. The limit column is the physics: the DEFLATE (zlib level 9) size of
what the user saw (the payloads imaplib returned) divided by the link rate.

With --cut-every N the shaped runs of the connect and ssh paths are made while the line drops
every N seconds (the first drop --cut-first seconds into the workflow): roamgate-connect resumes
its stream; the OpenSSH paths stand for a client that reconnects the tunnel, logs in again and
starts the workflow over. Such cells are only measured, never estimated, and say how often the
line was cut and how often the workflow started over (bytes and time include every reconnect).

Needs Dovecot; the ssh paths need root (sshd) and are skipped otherwise. Prints figures and
asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import imaplib
import io
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.corpus import build_corpus
from bench.slowlink import LINKS, LinkSpec, SlowLink, running_in_thread
from bench.ssh_tunnel import _ssh, _start_sshd
from roamgate.demo.dovecot import PrivateDovecot, free_port

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

USER, PASSWORD = "bench", "bench-password"
PROFILES = ("lan", "isdn", "phs", "pda")
PATHS = ("direct", "ssh", "ssh-C", *PROFILES, "connect")
ROAMGATE_PATHS = (*PROFILES, "connect")
WORKFLOWS = ("triage", "selective", "full")
MAXLINE = 1_000_000  # imaplib's own cap on a response line
TIMEOUT = 900.0  # seconds a single IMAP read may take on a shaped link

Seen = list[bytes]


# -- an imaplib client that can speak COMPRESS=DEFLATE (RFC 4978) ---------------------------


class _Deflating(imaplib.IMAP4):
    """imaplib with COMPRESS=DEFLATE: after `compress()` every read and send goes through zlib."""

    _zin: Any = None
    _zout: Any = None
    _zbuf = b""
    commands = 0  # commands sent, each a round trip: imaplib waits for every tagged answer

    def _command(self, name: str, *args: Any) -> str:
        self.commands += 1
        return super()._command(name, *args)  # type: ignore[misc,no-any-return]

    def compress(self) -> bool:
        typ, _ = self.xatom("COMPRESS", "DEFLATE")
        if typ != "OK":
            return False
        self._zin, self._zout = zlib.decompressobj(-15), zlib.compressobj(6, zlib.DEFLATED, -15)
        return True

    def _fill(self) -> None:
        file: io.BufferedReader = self.file  # type: ignore[assignment]  # makefile("rb")
        chunk = file.read1(65536)
        if not chunk:
            raise self.abort("socket error: EOF")
        self._zbuf += self._zin.decompress(chunk)

    def read(self, size: int) -> bytes:
        if self._zin is None:
            return super().read(size)
        while len(self._zbuf) < size:
            self._fill()
        out, self._zbuf = self._zbuf[:size], self._zbuf[size:]
        return out

    def readline(self) -> bytes:
        if self._zin is None:
            return super().readline()
        while (end := self._zbuf.find(b"\n")) < 0:
            if len(self._zbuf) > MAXLINE:
                raise self.error(f"got more than {MAXLINE} bytes")
            self._fill()
        out, self._zbuf = self._zbuf[: end + 1], self._zbuf[end + 1 :]
        return out

    def send(self, data: Buffer) -> None:
        if self._zout is None:
            super().send(data)
        else:
            self.sock.sendall(self._zout.compress(data) + self._zout.flush(zlib.Z_SYNC_FLUSH))


class PlainClient(_Deflating, imaplib.IMAP4):
    pass


class TLSClient(_Deflating, imaplib.IMAP4_SSL):
    pass


# -- IMAP response helpers -----------------------------------------------------------------


def _payloads(data: Sequence[Any]) -> Seen:
    """The literals of a FETCH response: the bytes the user's client shows."""
    return [item[1] for item in data if isinstance(item, tuple)]


def _joined(data: Sequence[Any]) -> bytes:
    """A FETCH response's data rejoined, each literal inline after its {n}."""
    pieces = [item[0] + item[1] if isinstance(item, tuple) else item for item in data]
    return b"".join(piece for piece in pieces if isinstance(piece, bytes))


def _parse(data: bytes) -> list[Any]:
    """An IMAP s-expression (atoms, strings, literals with their bytes inline, lists)."""
    stack: list[list[Any]] = [[]]
    i = 0
    while i < len(data):
        c = data[i : i + 1]
        if c in (b" ", b"\r", b"\n"):
            i += 1
        elif c == b"(":
            stack.append([])
            i += 1
        elif c == b")":
            done = stack.pop()
            stack[-1].append(done)
            i += 1
        elif c == b'"':
            j, out = i + 1, bytearray()
            while data[j : j + 1] != b'"':
                if data[j : j + 1] == b"\\":
                    j += 1
                out += data[j : j + 1]
                j += 1
            stack[-1].append(bytes(out))
            i = j + 1
        elif c == b"{":
            end = data.index(b"}", i)
            size = int(data[i + 1 : end])
            stack[-1].append(data[end + 1 : end + 1 + size])
            i = end + 1 + size
        else:
            m = re.compile(rb"[^ ()\r\n]+(\[[^\]]*\])?").match(data, i)
            assert m is not None
            atom = m.group()
            stack[-1].append(None if atom.upper() == b"NIL" else atom)
            i = m.end()
    return stack[0]


def _first_text(body: list[Any], prefix: str = "") -> str | None:
    """The section number of the first text/* part of a BODYSTRUCTURE."""
    if body and isinstance(body[0], list):  # multipart: parts, then the subtype
        for n, part in enumerate(p for p in body if isinstance(p, list)):
            found = _first_text(part, f"{prefix}{n + 1}.")
            if found:
                return found
        return None
    if body and isinstance(body[0], bytes) and body[0].upper() == b"TEXT":
        return prefix[:-1] or "1"
    return None


def _bodystructures(response: bytes) -> dict[int, list[Any]]:
    """Sequence number -> BODYSTRUCTURE, from a rejoined FETCH response."""
    top, out = _parse(response), {}
    for seq, items in zip(top[::2], top[1::2], strict=True):
        for key, value in zip(items[::2], items[1::2], strict=True):
            if isinstance(key, bytes) and key.upper() == b"BODYSTRUCTURE":
                out[int(seq)] = value
    return out


# -- workflows ------------------------------------------------------------------------------


@dataclasses.dataclass
class Seeing:
    """What a workflow showed the user, and whether whole messages came back as stored."""

    seen: Seen = dataclasses.field(default_factory=list)
    whole: dict[int, bytes] = dataclasses.field(default_factory=dict)
    missing: int = 0  # messages asked for that the server's FETCH answer left out


def _check(typ: str, data: Any, what: str) -> None:
    if typ != "OK":
        raise imaplib.IMAP4.error(f"{what}: {typ} {data!r}")


def _select(c: imaplib.IMAP4) -> int:
    typ, data = c.select("INBOX")
    _check(typ, data, "SELECT")
    return int(data[0] or b"0")


def triage(c: imaplib.IMAP4) -> Seeing:
    out, n = Seeing(), _select(c)
    typ, data = c.fetch(f"{max(1, n - 49)}:{n}", "(FLAGS RFC822.SIZE BODY.PEEK[HEADER])")
    _check(typ, data, "FETCH headers")
    out.seen += _payloads(data)
    out.missing += min(n, 50) - len(_payloads(data))
    for seq in range(n, max(0, n - 5), -1):
        typ, data = c.fetch(str(seq), "(RFC822)")
        _check(typ, data, "FETCH RFC822")
        payload = _payloads(data)
        out.seen += payload
        out.whole[seq] = b"".join(payload)
    return out


def selective(c: imaplib.IMAP4) -> Seeing:
    out, n = Seeing(), _select(c)
    typ, data = c.fetch(f"{max(1, n - 49)}:{n}", "(ENVELOPE BODYSTRUCTURE)")
    _check(typ, data, "FETCH ENVELOPE BODYSTRUCTURE")
    response = _joined(data)
    out.seen.append(response)
    structures = _bodystructures(response)
    out.missing += min(n, 50) - len(structures)
    for seq in range(n, max(0, n - 5), -1):
        if seq not in structures:
            continue
        section = _first_text(structures[seq])
        if section is None:
            continue
        typ, data = c.fetch(str(seq), f"(BODY.PEEK[{section}])")
        _check(typ, data, "FETCH text section")
        out.seen += _payloads(data)
    return out


def full(c: imaplib.IMAP4) -> Seeing:
    out, n = Seeing(), _select(c)
    for first in range(1, n + 1, 50):
        last = min(n, first + 49)
        typ, data = c.fetch(f"{first}:{last}", "(RFC822)")
        _check(typ, data, "FETCH RFC822")
        payloads = _payloads(data)
        out.missing += last - first + 1 - len(payloads)
        for seq, payload in zip(range(first, last + 1), payloads, strict=False):
            out.seen.append(payload)
            out.whole[seq] = payload
    return out


WORKFLOW_FUNCS: dict[str, Callable[[imaplib.IMAP4], Seeing]] = {
    "triage": triage,
    "selective": selective,
    "full": full,
}


# -- one measured cell ---------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    link: str
    path: str
    workflow: str
    up: int = 0
    down: int = 0
    turns: int = 0
    seconds: float = 0.0
    estimated: bool = False
    seen: int = 0
    seen_deflated: int = 0
    compressed: bool = False
    as_stored: bool | None = None  # whole messages identical to the stored ones
    note: str = ""
    profile: str = ""  # roamgate's link profile the client logged in with
    client_trips: int = 0  # the client's own round trips: the greeting, then one per command
    loopback_seconds: float = 0.0  # the unshaped run's time: the servers' and clients' own work
    # The tunnel's setup (connect path): TCP + SSH handshake + login, left out of the above.
    setup_up: int = 0
    setup_down: int = 0
    setup_turns: int = 0
    setup_seconds: float = 0.0
    cuts: int = 0  # the line dropped this often during the workflow (--cut-every)
    restarts: int = 0  # the workflow started over after a drop (OpenSSH paths)

    @property
    def total(self) -> int:
        return self.up + self.down


class LoginRefused(Exception):
    """The path's login failed (e.g. roamgate does not know USER#PROFILE yet)."""


@dataclasses.dataclass
class Env:
    """Everything the paths need: the servers, the client contexts, the next one-time code."""

    work: Path
    dovecot: PrivateDovecot
    corpus: list[bytes]
    gw_port: int = 0
    gw_ctx: ssl.SSLContext | None = None
    gw_ssh_port: int = 0
    gw_host_key: str = ""  # SHA256:... of the SSH door's Ed25519 host key, pinned by the connector
    askpass: Path | None = None  # the directory of the connector's askpass script and answers
    sshd_port: int = 0
    ssh_key: Path | None = None
    ssh_known: Path | None = None
    direct_compress: bool = False
    refused: dict[str, str] = dataclasses.field(default_factory=dict)  # profile -> how it failed

    def code(self) -> str:
        """The next HOTP code; the counter file is shared with the connector's askpass script."""
        assert self.askpass is not None
        counter_file = self.askpass / "counter"
        counter = int(counter_file.read_text())
        counter_file.write_text(f"{counter + 1}\n")
        out = subprocess.run(
            ["oathtool", "--hotp", "-b", "-c", str(counter), (self.askpass / "secret").read_text()],
            capture_output=True, text=True, check=True, timeout=10,
        )  # fmt: skip
        return out.stdout.strip()


# roamgate-connect runs `askpass PROMPT` and reads the answer from its output.
ASKPASS = """#!/bin/sh
dir=$(dirname "$0")
case "$1" in
  "Password: ") cat "$dir/password" ;;
  "One-time code: ")
    n=$(cat "$dir/counter")
    echo $((n + 1)) > "$dir/counter"
    exec oathtool --hotp -b -c "$n" "$(cat "$dir/secret")" ;;
  *) echo "askpass: unexpected prompt: $1" >&2; exit 1 ;;
esac
"""


def _login_compress(c: _Deflating, user: str, password: str, want: bool) -> bool:
    try:
        _, data = c.login(user, password)
    except imaplib.IMAP4.error as exc:
        raise LoginRefused(str(exc)) from None
    text = b" ".join(d for d in data if isinstance(d, bytes))
    caps = text if b"[CAPABILITY " in text else b" ".join(c.capability()[1] or [b""])
    return want and b"COMPRESS=DEFLATE" in caps.upper() and c.compress()


def _stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """End a tunnel process (ssh or roamgate-connect) and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def _ssh_tunnel(env: Env, link: SlowLink, compress: bool) -> Iterator[int]:
    """`ssh -N -L` through the link to the private sshd; yields the forward's local port."""
    assert env.ssh_key and env.ssh_known
    local = free_port()
    cmd = _ssh(link.port, local, f"127.0.0.1:{env.dovecot.imap_port}", env.ssh_known,
               "-i", str(env.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "HostKeyAlias=bench-sshd",
               "-o", f"Compression={'yes' if compress else 'no'}", "root@127.0.0.1")  # fmt: skip
    proc = subprocess.Popen(["setsid", *cmd], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # a probe: the forward carries Dovecot's greeting once the tunnel is up
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", local), timeout=60) as probe,
            ):
                if probe.makefile("rb").readline().startswith(b"* OK"):
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the ssh tunnel did not come up")
            time.sleep(0.2)
        time.sleep(1.0)  # the probe's close crosses the link before the counters are read
        yield local
    finally:
        _stop(proc)


def _wait_for_line(
    proc: subprocess.Popen[str], marker: str, deadline: float, lines: list[str]
) -> float:
    """Read the connector's stderr until a line holds `marker`; returns when it came."""
    assert proc.stderr is not None
    found: queue.Queue[float] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:  # until EOF: the pipe never fills while the connector runs
            lines.append(line.rstrip())
            if marker in line:
                found.put(time.monotonic())

    threading.Thread(target=read, name="connector-stderr", daemon=True).start()
    while True:
        with contextlib.suppress(queue.Empty):
            return found.get(timeout=0.2)
        if time.monotonic() > deadline or proc.poll() is not None:
            time.sleep(0.2)  # the last lines
            text = "\n".join(lines[-10:])
            raise RuntimeError(f"roamgate-connect did not bring the link up:\n{text}")


@contextlib.contextmanager
def _connector(env: Env, link: SlowLink, cell: Cell, delay: float) -> Iterator[int]:
    """roamgate-connect to the SSH door through the link; yields its local IMAP port.

    Records the tunnel's setup (all the link carried until the connector said "link up")
    in `cell`: that is the SSH handshake and the keyboard-interactive login.
    """
    assert env.askpass is not None
    local = free_port()
    cmd = [
        sys.executable, "-m", "roamgate_connect", "--gateway", f"127.0.0.1:{link.port}",
        "--user", USER, "--host-key", env.gw_host_key, "--askpass", str(env.askpass / "askpass"),
        "--imap-port", str(local), "--submission-port", str(free_port()),
        "--device-key", str(env.work / "connect-device.key"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        lines: list[str] = []
        up_at = _wait_for_line(proc, "roamgate-connect: link up", time.monotonic() + 180, lines)
        cell.setup_seconds = up_at - link.last_accept
        time.sleep(0.05 + 2 * delay)  # the login's last bytes reach the counters
        cell.setup_up, cell.setup_down = link.bytes_up, link.bytes_down
        cell.setup_turns = link.turns
        yield local
    finally:
        _stop(proc)


MAX_RESTARTS = 5  # an OpenSSH path's workflow started over this often gives up


@contextlib.contextmanager
def _cutting(link: SlowLink, cut: tuple[float, float] | None) -> Iterator[None]:
    """Drop the line `first` seconds from now, then every `every` seconds, until the block ends."""
    if cut is None:
        yield
        return
    first, every = cut
    stop = threading.Event()

    def run() -> None:
        wait = first
        while not stop.wait(wait):
            link.cut()
            wait = every

    thread = threading.Thread(target=run, name="line-cutter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _ssh_reconnecting(
    env: Env, link: SlowLink, path: str, workflow: str, cut: tuple[float, float], cell: Cell
) -> Seeing:
    """An OpenSSH tunnel and a client that, after each drop, reconnect, log in and start over."""
    tunnel = _ssh_tunnel(env, link, path == "ssh-C")
    local = tunnel.__enter__()
    up0, down0, turns0 = link.bytes_up, link.bytes_down, link.turns
    started = time.perf_counter()
    try:
        with _cutting(link, cut):
            while True:
                client = PlainClient("127.0.0.1", local, timeout=TIMEOUT)
                try:
                    cell.compressed = _login_compress(client, USER, PASSWORD, False)
                    seeing = WORKFLOW_FUNCS[workflow](client)
                    client.logout()
                    break
                except (imaplib.IMAP4.error, OSError, EOFError, LoginRefused):
                    with contextlib.suppress(OSError):
                        client.shutdown()
                    cell.restarts += 1
                    if cell.restarts > MAX_RESTARTS:
                        raise
                    tunnel.__exit__(None, None, None)
                    tunnel = _ssh_tunnel(env, link, path == "ssh-C")
                    local = tunnel.__enter__()
        cell.seconds = time.perf_counter() - started
        cell.client_trips = 1 + client.commands
    finally:
        tunnel.__exit__(None, None, None)
    time.sleep(0.05 + 2 * link.down.delay_s)
    cell.up, cell.down = link.bytes_up - up0, link.bytes_down - down0
    cell.turns = link.turns - turns0
    return seeing


def _run_once(
    env: Env,
    link_name: str,
    path: str,
    workflow: str,
    spec: LinkSpec | None,
    cut: tuple[float, float] | None = None,
) -> Cell:
    """One workflow on one path through a fresh link (shaped by `spec`, or not at all), the
    line dropped as `cut` says (first, every) on the connect and ssh paths."""
    cell = Cell("", path, workflow)
    rate, delay = (spec.rate_bps, spec.delay_s) if spec else (0, 0.0)
    target = {
        "direct": env.dovecot.imaps_port,
        "ssh": env.sshd_port,
        "ssh-C": env.sshd_port,
        "connect": env.gw_ssh_port,
    }
    link = SlowLink("127.0.0.1", target.get(path, env.gw_port), rate_bps=rate, delay_s=delay)
    with running_in_thread(link), contextlib.ExitStack() as stack:
        client: _Deflating
        if path in ("ssh", "ssh-C") and cut is not None:
            seeing = _ssh_reconnecting(env, link, path, workflow, cut, cell)
            cell.cuts = link.cuts
            return _seen(cell, seeing, env)
        if path in ("ssh", "ssh-C"):
            local = stack.enter_context(_ssh_tunnel(env, link, path == "ssh-C"))
            up0, down0, turns0 = link.bytes_up, link.bytes_down, link.turns
            started = time.perf_counter()
            client = PlainClient("127.0.0.1", local, timeout=TIMEOUT)
            cell.compressed = _login_compress(client, USER, PASSWORD, False)
        elif path == "connect":
            local = stack.enter_context(_connector(env, link, cell, delay))
            up0, down0, turns0 = link.bytes_up, link.bytes_down, link.turns
            started = time.perf_counter()
            client = PlainClient("127.0.0.1", local, timeout=TIMEOUT)
            cell.profile = link_name if link_name in PROFILES else "phs"
            # The password alone: the tunnel's login took the code.
            cell.compressed = _login_compress(client, f"{USER}#{cell.profile}", PASSWORD, True)
        elif path == "direct":
            up0 = down0 = turns0 = 0
            started = time.perf_counter()
            ctx = env.dovecot.client_context()
            client = TLSClient("127.0.0.1", link.port, ssl_context=ctx, timeout=TIMEOUT)
            cell.compressed = _login_compress(client, USER, PASSWORD, env.direct_compress)
        else:
            up0 = down0 = turns0 = 0
            started = time.perf_counter()
            client = TLSClient("127.0.0.1", link.port, ssl_context=env.gw_ctx, timeout=TIMEOUT)
            user, cell.profile = f"{USER}#{path}", path
            if path == "lan" and "lan" in env.refused:
                user = USER  # the control falls back to a plain login: see _report
                cell.note = "logged in as plain `bench`"
            cell.compressed = _login_compress(client, user, PASSWORD + env.code(), True)
        try:
            with _cutting(link, cut if path == "connect" else None):
                seeing = WORKFLOW_FUNCS[workflow](client)
                client.logout()
        except BaseException:
            with contextlib.suppress(OSError):
                client.shutdown()
            raise
        cell.seconds = time.perf_counter() - started
        cell.cuts = link.cuts
        cell.client_trips = 1 + client.commands  # the greeting, then each command
        time.sleep(0.05 + 2 * delay)  # the LOGOUT's last bytes reach the counters
        cell.up, cell.down = link.bytes_up - up0, link.bytes_down - down0
        cell.turns = link.turns - turns0
    return _seen(cell, seeing, env)


def _seen(cell: Cell, seeing: Seeing, env: Env) -> Cell:
    """What the user saw, for the limit column and the as-stored check."""
    seen = b"".join(seeing.seen)
    cell.seen, cell.seen_deflated = len(seen), len(zlib.compress(seen, 9))
    if seeing.missing:
        cell.note = f"server left out {seeing.missing} FETCH answers"
    whole = {seq: data for seq, data in seeing.whole.items() if data}
    if whole:
        cell.as_stored = all(env.corpus[seq - 1] == data for seq, data in whole.items())
    return cell


def _cut_note(cell: Cell, every: float) -> str:
    note = f"line cut {cell.cuts}x (every {every:.0f} s)"
    if cell.path == "connect":
        return note + ", stream resumed"
    return note + f", reconnected and started over {cell.restarts}x"


def estimate(cell: Cell, spec: LinkSpec) -> float:
    """Seconds on the link: every byte at the link rate plus a round trip per turn."""
    return cell.total * 8 / spec.rate_bps + cell.turns * spec.rtt_s


def measure(env: Env, link: str, path: str, workflow: str, args: argparse.Namespace) -> Cell:
    spec = LINKS[link]
    try:
        cell = _run_once(env, link, path, workflow, None)
    except LoginRefused as exc:
        if path in PROFILES:
            env.refused[path] = str(exc)
            if path == "lan":  # the control: measure a plain login instead
                return measure(env, link, path, workflow, args)
        return Cell(link, path, workflow, note=f"login refused: {exc}")
    cell.link = link
    predicted = estimate(cell, spec)
    left = args.budget_minutes * 60 - args.spent
    cut = (args.cut_first, args.cut_every) if args.cut_every > 0 else None
    if cut is not None and path in ("ssh", "ssh-C") and predicted > args.cut_every:
        # Started over after every drop, it would never get to the end: not worth the wait.
        cell.loopback_seconds = cell.seconds
        cell.seconds, cell.estimated = float("inf"), True
        cell.note = (
            f"never finishes: it needs est. {_fmt_time(predicted)} without a drop and the line"
            f" drops every {args.cut_every:.0f} s (a client that reconnects starts over)"
        )
        return cell
    if cut is not None and path in ("connect", "ssh", "ssh-C"):
        # A run with drops is measured, never estimated, and only on this link's paths.
        shaped = _run_once(env, link, path, workflow, spec, cut)
        shaped.link, shaped.loopback_seconds = link, cell.seconds
        shaped.note = (cell.note + " " if cell.note else "") + _cut_note(shaped, args.cut_every)
        args.spent += shaped.seconds
        return shaped
    if predicted <= min(args.max_seconds, left):
        shaped = _run_once(env, link, path, workflow, spec)
        shaped.link, shaped.note = link, cell.note
        shaped.loopback_seconds = cell.seconds
        args.spent += shaped.seconds
        return shaped
    cell.loopback_seconds = cell.seconds
    cell.seconds, cell.estimated = predicted, True
    return cell


# -- setup ----------------------------------------------------------------------------------


def _cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "roamgate", *args],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return out.stdout


@contextlib.contextmanager
def _roamgate(env: Env) -> Iterator[None]:
    """`roamgate init`, a user with a HOTP token, `roamgate serve`; stopped on the way out."""
    gw = env.work / "gw"
    env.gw_port, env.gw_ssh_port = free_port(), free_port()
    _cli(
        "init", "--dir", str(gw), "--upstream-imap", f"127.0.0.1:{env.dovecot.imaps_port}",
        "--upstream-tls", "implicit", "--upstream-ca", str(env.dovecot.ca_file),
        "--imaps-port", str(env.gw_port), "--imap-port", str(free_port()),
        "--ssh-port", str(env.gw_ssh_port), "--web-port", str(free_port()),
    )  # fmt: skip
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(gw / "ssh_host_ed25519_key.pub")],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout.split()[1]  # fmt: skip
    assert fingerprint.startswith("SHA256:"), fingerprint
    env.gw_host_key = fingerprint
    config = gw / "roamgate.yaml"
    text = config.read_text()
    for old, new in (
        ("travel_window_seconds: 43200", "travel_window_seconds: 0"),
        # A refused `bench#PROFILE` (before profiles land) must not lock the control out.
        ("user_threshold: 10 ", "user_threshold: 50 "),
        ("ip_threshold: 20", "ip_threshold: 90"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    _cli("user", "add", USER, "-c", str(config))
    token = json.loads(_cli("token", "enroll", USER, "--type", "hotp", "--json", "-c", str(config)))
    env.askpass = env.work / "askpass"
    env.askpass.mkdir(mode=0o700)
    for name, text in (("secret", token["secret"]), ("counter", "0\n"), ("password", PASSWORD)):
        (env.askpass / name).write_text(text)
    (env.askpass / "askpass").write_text(ASKPASS)
    (env.askpass / "askpass").chmod(0o700)
    env.gw_ctx = ssl.create_default_context(cafile=str(gw / "tls" / "ca.pem"))
    log = (env.work / "roamgate.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "roamgate", "serve", "-c", str(config)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                for port in (env.gw_port, env.gw_ssh_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or serve.poll() is not None:
                    tail = (env.work / "roamgate.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"roamgate serve did not start:\n{tail}") from None
                time.sleep(0.1)
        yield
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()


@contextlib.contextmanager
def _sshd(env: Env) -> Iterator[None]:
    proc, env.sshd_port, env.ssh_key, _ = _start_sshd(env.work / "sshd")
    host = (env.work / "sshd" / "host.pub").read_text().split()
    env.ssh_known = env.work / "sshd" / "known_hosts_alias"
    env.ssh_known.write_text(f"bench-sshd {host[0]} {host[1]}\n")
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- report ---------------------------------------------------------------------------------


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _fmt_time(seconds: float) -> str:
    if seconds == float("inf"):
        return "never"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _row(cell: Cell, spec: LinkSpec) -> str:
    if not cell.seen and cell.note.startswith("login refused"):
        return f"  {cell.path:7} {cell.workflow:9}  {cell.note}"
    limit = cell.seen_deflated * 8 / spec.rate_bps
    time_text = ("est. " if cell.estimated else "") + _fmt_time(cell.seconds)
    notes = []
    if cell.path == "connect":
        notes.append(f"as {USER}#{cell.profile}")
    if cell.compressed:
        notes.append("COMPRESS")
    if cell.profile in ("isdn", "phs", "pda") and cell.as_stored:
        notes.append("whole messages as stored (lan behaviour)")
    elif cell.as_stored is False:
        notes.append("whole messages reshaped")
    if cell.note:
        notes.append(cell.note)
    return (
        f"  {cell.path:7} {cell.workflow:9} {_fmt_bytes(cell.up):>10} {_fmt_bytes(cell.down):>10}"
        f" {cell.turns:5d} {time_text:>14} {_fmt_time(limit):>9} {_fmt_bytes(cell.seen):>10}"
        f"  {', '.join(notes)}"
    )


def _ratios(cells: list[Cell], links: list[str]) -> None:
    def get(link: str, path: str, workflow: str) -> Cell | None:
        for c in cells:
            if (c.link, c.path, c.workflow) == (link, path, workflow) and c.seen:
                return c
        return None

    print("\nratios the issue targets (bytes on the link, both ways):")
    for link in links:
        ssh = get(link, "ssh-C", "triage")
        for rg in (get(link, link if link in PROFILES else "phs", "triage"),
                   get(link, "connect", "triage")):  # fmt: skip
            if rg and ssh:
                name = "roamgate-connect" if rg.path == "connect" else "roamgate"
                print(
                    f"  triage on {link}: {name}({rg.profile}) {_fmt_bytes(rg.total)} vs OpenSSH -C"
                    f" {_fmt_bytes(ssh.total)} = {rg.total / ssh.total:.3f}x (target <= 0.020x)"
                )
    for link in links[:1]:  # lan behaviour moves the same bytes on any link
        rg, direct = get(link, "lan", "full"), get(link, "direct", "full")
        if rg and direct:
            print(
                f"  full sync, roamgate(lan) vs direct: {_fmt_bytes(rg.total)} vs"
                f" {_fmt_bytes(direct.total)} = {100 * (rg.total / direct.total - 1):+.2f} %"
                " (target <= +2 %)"
            )
    for link in links:
        direct = get(link, "direct", "selective")
        for profile in PROFILES:
            rg = get(link, profile, "selective")
            if rg and direct:
                verdict = "ok" if rg.total <= direct.total else "WORSE"
                print(
                    f"  selective on {link}: roamgate({profile}) {_fmt_bytes(rg.total)} vs direct"
                    f" {_fmt_bytes(direct.total)} = {rg.total / direct.total:.2f}x"
                    f" (target <= 1.00x: {verdict})"
                )


def _time_target(cells: list[Cell]) -> None:
    """The issue's time target: triage on phs through roamgate-connect."""
    for cell in cells:
        if (cell.link, cell.path, cell.workflow) != ("phs", "connect", "triage") or not cell.seen:
            continue
        spec = LINKS["phs"]
        limit = cell.seen_deflated * 8 / spec.rate_bps
        trips = cell.client_trips * spec.rtt_s
        bound = 2 * limit + trips
        verdict = "holds" if cell.seconds <= bound else "MISSED"
        print(
            f"  triage on phs through roamgate-connect({cell.profile}):"
            f" {'est. ' if cell.estimated else ''}{cell.seconds:.1f} s;"
            f" physical limit {limit:.1f} s; the client's own round trips {cell.client_trips}"
            f" x {spec.rtt_s * 1000:.0f} ms = {trips:.1f} s;"
            f" target <= 2 x {limit:.1f} + {trips:.1f} = {bound:.1f} s: {verdict}"
            f" (the same run unshaped took {cell.loopback_seconds:.1f} s)"
        )


def _setups(cells: list[Cell], links: list[str]) -> None:
    """The connector's tunnel setup, once per link: left out of the table, shown here."""
    for link in links:
        spec = LINKS[link]
        connect = [c for c in cells if c.link == link and c.path == "connect" and c.setup_down]
        if not connect:
            continue
        measured = [c for c in connect if not c.estimated]
        cell = (measured or connect)[0]
        if measured:
            time_text = f"{cell.setup_seconds:.1f} s measured"
        else:
            guess = (cell.setup_up + cell.setup_down) * 8 / spec.rate_bps
            guess += cell.setup_turns * spec.rtt_s
            time_text = f"est. {guess:.1f} s (bytes / rate + {cell.setup_turns} turns x RTT)"
        print(
            f"connect tunnel setup on {link} (TCP + SSH handshake + password and HOTP login;"
            f" not in the table): {_fmt_bytes(cell.setup_up)} up, {_fmt_bytes(cell.setup_down)}"
            f" down, {cell.setup_turns} turns, {time_text}"
        )


def _report(cells: list[Cell], links: list[str], env: Env, args: argparse.Namespace) -> None:
    for link in links:
        spec = LINKS[link]
        print(
            f"\nlink {link}: {spec.rate_bps / 1000:.1f} kbit/s, {spec.delay_s * 1000:.0f} ms one way"
        )
        print(
            f"  {'path':7} {'workflow':9} {'up':>10} {'down':>10} {'turns':>5} {'time':>14}"
            f" {'limit':>9} {'seen':>10}  notes"
        )
        for cell in cells:
            if cell.link == link:
                print(_row(cell, spec))
    _ratios(cells, links)
    _time_target(cells)
    _setups(cells, links)
    for profile, why in env.refused.items():
        print(
            f"note: roamgate refused `{USER}#{profile}` ({why}); USER#PROFILE logins are not"
            " available in this roamgate yet"
            + (", the lan control logged in as plain `bench`" if profile == "lan" else "")
        )
    print(
        "up/down: bytes on the slow link; turns: client-after-server turns (~round trips);"
        " limit: zlib -9 size of what the user saw / link rate; est.: bytes / rate + turns x RTT"
        f" from an unshaped run (not measured: over {args.max_seconds:.0f} s or budget spent)"
    )


# -- main -----------------------------------------------------------------------------------


def _choices(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--links", default="phs,isdn")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--workflows", default=",".join(WORKFLOWS))
    parser.add_argument("--corpus-scale", type=float, default=1.0, help="attachment size factor")
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="longest shaped run; longer: est."
    )
    parser.add_argument(
        "--budget-minutes", type=float, default=20.0, help="shaped time in all; then est."
    )
    parser.add_argument(
        "--direct-compress", action="store_true", help="COMPRESS=DEFLATE on the direct path too"
    )
    parser.add_argument(
        "--cut-every",
        type=float,
        default=0.0,
        help="drop the line every N seconds during connect and ssh runs (0: never)",
    )
    parser.add_argument(
        "--cut-first", type=float, default=2.0, help="the first drop, seconds into the workflow"
    )
    args = parser.parse_args(argv)
    links = _choices(args.links, list(LINKS), "link")
    paths = _choices(args.paths, PATHS, "path")
    workflows = _choices(args.workflows, WORKFLOWS, "workflow")
    args.spent = 0.0
    began = time.monotonic()
    if {"ssh", "ssh-C"} & set(paths) and os.geteuid() != 0:
        print("ssh paths skipped: the private sshd needs root", file=sys.stderr)
        paths = [p for p in paths if p not in ("ssh", "ssh-C")]
    corpus = [m.data for m in build_corpus(args.corpus_scale)]
    print(
        f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, loopback;"
        f" corpus: {len(corpus)} messages, {sum(map(len, corpus)) / 1e6:.1f} MB"
        f" (scale {args.corpus_scale})",
        flush=True,
    )
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="roamgate-bench-slow-") as tmp:
        work = Path(tmp)
        with PrivateDovecot(work / "dovecot") as dovecot, contextlib.ExitStack() as stack:
            dovecot.add_user(USER, PASSWORD)
            dovecot.populate(USER, PASSWORD, {"INBOX": corpus})
            with dovecot.imap(USER, PASSWORD) as session:  # an old mailbox: all of it read
                session.select("INBOX")
                session.store("1:*", "+FLAGS.SILENT", "(\\Seen)")
            env = Env(work, dovecot, corpus, direct_compress=args.direct_compress)
            if set(paths) & set(ROAMGATE_PATHS):
                stack.enter_context(_roamgate(env))
            if {"ssh", "ssh-C"} & set(paths):
                stack.enter_context(_sshd(env))
            for link in links:
                for path in paths:
                    for workflow in workflows:
                        if path in env.refused and path != "lan":
                            cell = Cell(link, path, workflow, note="login refused (see below)")
                        else:
                            cell = measure(env, link, path, workflow, args)
                        cells.append(cell)
                        print(f"# {link} {path} {workflow}: done", file=sys.stderr, flush=True)
            _report(cells, links, env, args)
    print(
        f"wall time {_fmt_time(time.monotonic() - began)}, of which shaped workflows"
        f" {_fmt_time(args.spent)} (budget {args.budget_minutes:.0f} min; unshaped runs,"
        " tunnel setups and the mailbox's upload are outside it)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
