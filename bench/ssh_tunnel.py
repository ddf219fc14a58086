"""roamgate's SSH door against OpenSSH's sshd, side by side on loopback, with one client (ssh -L).

    python -m bench.ssh_tunnel [--rounds 7] [--mib 20]

1. Connection + login until the first byte comes through the forward: `ssh -N -L` to roamgate
   (keyboard-interactive password + a new HOTP code each time, checked against the upstream
   IMAP password: the travel window is off) vs to a private sshd (public key, no second factor).
2. A bulk transfer through the forward (the target sends N MiB and closes): throughput.

Prints figures; asserts nothing about speed (this machine is shared and noisy). Needs root for
sshd (privilege separation) and Debian's openssh-server, which `make test` installs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp

from roamgate.demo.dovecot import PrivateDovecot, free_port

USER, PASSWORD = "bench", "bench-password"
ASKPASS = """#!/bin/sh
case "$1" in
  *assword*) cat "$BENCH_DIR/password" ;;
  *) cat "$BENCH_DIR/code" ;;
esac
"""


def _source(size: int) -> tuple[int, threading.Event]:
    """A TCP service that sends `size` bytes to each client, then closes."""
    port = free_port()
    server = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()
    block = b"x" * 65536

    def serve_one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # a login probe hangs up after one byte
            left = size
            while left > 0:
                chunk = block[: min(left, len(block))]
                conn.sendall(chunk)
                left -= len(chunk)

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()
        server.close()

    threading.Thread(target=accept, daemon=True).start()
    return port, stop


def _first_byte(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if s.recv(1):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the forward never carried a byte")
        time.sleep(0.005)


def _drain(port: int) -> int:
    total = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        while True:
            data = s.recv(1 << 20)
            if not data:
                return total
            total += len(data)


@contextlib.contextmanager
def _tunnel(cmd: list[str], env: dict[str, str], local: int) -> Iterator[float]:
    """Start `ssh -N -L`; yield the seconds until a first byte came through the forward."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["setsid", *cmd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        _first_byte(local, time.monotonic() + 30)
        yield time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ssh(port: int, local: int, target: str, known_hosts: Path, *extra: str) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-N", "-p", str(port), *extra,
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "ExitOnForwardFailure=yes", "-o", "ControlMaster=no",
        "-L", f"127.0.0.1:{local}:{target}",
    ]  # fmt: skip


def _start_sshd(work: Path) -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    """A private sshd on loopback; returns it, its port, the client key and a known_hosts."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    work.mkdir()
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host")], check=True
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "client")], check=True
    )
    (work / "authorized_keys").write_text((work / "client.pub").read_text())
    port = free_port()
    config = work / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work / 'host'}\n"
        f"AuthorizedKeysFile {work / 'authorized_keys'}\nPidFile none\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nAllowTcpForwarding yes\nX11Forwarding no\n"
    )
    proc = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("sshd did not start") from None
            time.sleep(0.05)
    host = (work / "host.pub").read_text().split()
    known = work / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host[0]} {host[1]}\n")
    return proc, port, work / "client", known


def _cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "roamgate", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench.ssh_tunnel: sshd needs root (privilege separation)", file=sys.stderr)
        return 2
    size = args.mib * 1024 * 1024
    src_port, stop_source = _source(size)
    with tempfile.TemporaryDirectory(prefix="roamgate-bench-ssh-") as tmp:
        work = Path(tmp)
        sshd, sshd_port, client_key, sshd_known = _start_sshd(work / "sshd")
        try:
            with PrivateDovecot(work / "dovecot") as dovecot:
                dovecot.add_user(USER, PASSWORD)
                _run(args, work, dovecot, size, src_port, sshd_port, client_key, sshd_known)
        finally:
            sshd.send_signal(signal.SIGTERM)
            sshd.wait(timeout=10)
            stop_source.set()
    return 0


def _run(
    args: argparse.Namespace,
    work: Path,
    dovecot: PrivateDovecot,
    size: int,
    src_port: int,
    sshd_port: int,
    client_key: Path,
    sshd_known: Path,
) -> None:
    gw = work / "gw"
    ssh_port = free_port()
    _cli(
        "init", "--dir", str(gw), "--upstream-imap", f"127.0.0.1:{dovecot.imaps_port}",
        "--upstream-tls", "implicit", "--upstream-ca", str(dovecot.ca_file),
        "--ssh-port", str(ssh_port), "--imaps-port", str(free_port()),
        "--imap-port", str(free_port()), "--web-port", str(free_port()),
    )  # fmt: skip
    config = gw / "roamgate.yaml"
    text = config.read_text()
    for old, new in (
        ("travel_window_seconds: 43200", "travel_window_seconds: 0"),
        (
            "forwards: {}",
            f'forwards: {{bulk: {{target: "127.0.0.1:{src_port}", users: [{USER}]}}}}',
        ),
    ):
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    _cli("user", "add", USER, "-c", str(config))
    secret = json.loads(
        _cli("token", "enroll", USER, "--type", "hotp", "--json", "-c", str(config))
    )["secret"]
    hotp, counter = pyotp.HOTP(secret), [0]
    serve = subprocess.Popen(
        [sys.executable, "-m", "roamgate", "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", ssh_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        pub = (gw / "ssh_host_ed25519_key.pub").read_text().split()
        gw_known = work / "gw_known_hosts"
        gw_known.write_text(f"[127.0.0.1]:{ssh_port} {pub[0]} {pub[1]}\n")
        answers = work / "answers"
        answers.mkdir()
        (answers / "password").write_text(PASSWORD + "\n")
        askpass = work / "askpass"
        askpass.write_text(ASKPASS)
        askpass.chmod(0o755)
        env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force",
               "DISPLAY": ":0", "BENCH_DIR": str(answers)}  # fmt: skip

        def roamgate(local: int) -> tuple[list[str], dict[str, str]]:
            (answers / "code").write_text(hotp.at(counter[0]) + "\n")
            counter[0] += 1
            cmd = _ssh(ssh_port, local, "bulk:1", gw_known,
                       "-o", "PreferredAuthentications=keyboard-interactive", f"{USER}@127.0.0.1")  # fmt: skip
            return cmd, env

        def openssh(local: int) -> tuple[list[str], dict[str, str]]:
            cmd = _ssh(sshd_port, local, f"127.0.0.1:{src_port}", sshd_known,
                       "-i", str(client_key), "-o", "IdentitiesOnly=yes", "root@127.0.0.1")  # fmt: skip
            return cmd, dict(os.environ)

        print(
            f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, loopback, one ssh client"
        )
        results: dict[str, tuple[list[float], list[float]]] = {
            "openssh": ([], []),
            "roamgate": ([], []),
        }
        # Alternate the two so that the machine's noise falls on both alike.
        for round_ in range(args.rounds + 1):
            for name, make in (("openssh", openssh), ("roamgate", roamgate)):
                local = free_port()
                cmd, run_env = make(local)
                with _tunnel(cmd, run_env, local) as login_seconds:
                    started = time.perf_counter()
                    got = _drain(local) if round_ < 3 else 0
                    elapsed = time.perf_counter() - started
                if round_ == 0:
                    continue  # warm-up
                results[name][0].append(login_seconds)
                if got:
                    assert got == size, (name, got)
                    results[name][1].append(size / elapsed / (1024 * 1024))
        _report(results, args.mib)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=20)


def _report(results: dict[str, tuple[list[float], list[float]]], mib: int) -> None:
    o_login, o_rate = results["openssh"]
    r_login, r_rate = results["roamgate"]
    om, rm = statistics.median(o_login), statistics.median(r_login)
    print(
        f"connect + login + first byte, median of {len(o_login)}: OpenSSH sshd {om * 1000:.0f} ms"
        f" (public key), roamgate {rm * 1000:.0f} ms (password checked upstream + HOTP code)"
        f" -> ratio {rm / om:.2f}x"
    )
    ob, rb = max(o_rate), max(r_rate)
    print(
        f"{mib} MiB through the forward, best of {len(o_rate)}: OpenSSH sshd {ob:.0f} MiB/s,"
        f" roamgate {rb:.0f} MiB/s -> ratio {rb / ob:.2f}x of OpenSSH (target >= 0.5x)"
    )


if __name__ == "__main__":
    sys.exit(main())
