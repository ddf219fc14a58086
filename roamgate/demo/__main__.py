"""`make demo`: a private Dovecot with a sample mailbox, a gateway in front of it, a demo user."""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from roamgate.demo.dovecot import DovecotError, PrivateDovecot, free_port
from roamgate.demo.mailbox import sample_mailbox
from roamgate.pki import ssh_fingerprint

DEMO_USER = "demo"
# A demo, not a secret: the user types it followed by the code from their authenticator.
DEMO_PASSWORD = "demo-password"  # noqa: S105
DEFAULT_PORTS = {"ssh": 2022, "imaps": 9993, "imap": 9143, "web": 9443}


class DemoError(Exception):
    pass


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _choose_ports(auto: bool) -> dict[str, int]:
    """The documented ports where free, otherwise (or with --auto-ports) any free ones."""
    chosen: dict[str, int] = {}
    for name, port in DEFAULT_PORTS.items():
        if auto or not _port_free(port):
            port = free_port()
            while port in chosen.values():
                port = free_port()
        chosen[name] = port
    return chosen


def _roamgate(*args: str, capture: bool = False) -> str:
    """Run the roamgate CLI as an operator would; its output goes to the terminal."""
    result = subprocess.run(
        [sys.executable, "-m", "roamgate", *args],
        capture_output=capture,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise DemoError(f"roamgate {args[0]} failed:\n{result.stderr or ''}")
    if capture:
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
    return result.stdout or ""


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError("roamgate serve exited during start-up (see its output above)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise DemoError(f"roamgate serve did not listen on 127.0.0.1:{port} within {timeout:g} s")


def _ssh_known_hosts(gw: Path, port: int) -> tuple[Path, str]:
    """A known_hosts file for the demo's SSH door, and its Ed25519 fingerprint."""
    pub = (gw / "ssh_host_ed25519_key.pub").read_text().split()
    known = gw / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    return known, ssh_fingerprint(gw / "ssh_host_ed25519_key")


def _how_to_connect(gw: Path, ports: dict[str, int], secret: str) -> str:
    ca = gw / "tls" / "ca.pem"
    known, fingerprint = _ssh_known_hosts(gw, ports["ssh"])
    connect = Path(sys.executable).parent / "roamgate-connect"
    login = (
        "import imaplib, ssl; "
        f'c = imaplib.IMAP4_SSL("127.0.0.1", {ports["imaps"]}, '
        f'ssl_context=ssl.create_default_context(cafile="{ca}")); '
        f'print(c.login("{DEMO_USER}", "{DEMO_PASSWORD}" + input("one-time code: "))); '
        'print(c.select("INBOX")); print(c.logout())'
    )
    return f"""
==================================================================================
 roamgate demo is running.  Ctrl-C stops the gateway and the demo mail server.

 User {DEMO_USER!r}, password {DEMO_PASSWORD!r}. Log in with the password followed by the
 current code of the token above, e.g. {DEMO_PASSWORD}123456. (No authenticator app to
 hand? `oathtool --totp -b {secret}` prints the code.) After one good login, the same
 client address may use the password alone for 12 hours (the travel window).

 IMAPS (TLS from the first byte)  127.0.0.1:{ports["imaps"]}
 IMAP with STARTTLS                127.0.0.1:{ports["imap"]}
 The gateway's CA certificate:     {ca}
 SSH door (port forwarding only)   127.0.0.1:{ports["ssh"]}, host key {fingerprint}

 The laptop connector (asks for the password, then the code; reconnects when the line drops):
   {connect} --gateway 127.0.0.1:{ports["ssh"]} --user {DEMO_USER} --host-key {fingerprint}
   then point a mail client at IMAP 127.0.0.1:1143 with the password alone (no code: the
   SSH login took it), e.g. {sys.executable} -c 'import imaplib; c = imaplib.IMAP4("127.0.0.1", 1143); print(c.login("{DEMO_USER}", "{DEMO_PASSWORD}"))'
 Or plain OpenSSH (prompts "Password: " then "One-time code: "):
   ssh -N -p {ports["ssh"]} -o UserKnownHostsFile={known} -L 1143:imap:143 {DEMO_USER}@127.0.0.1

 Try it from another terminal:
   {sys.executable} -c '{login}'
   openssl s_client -quiet -connect 127.0.0.1:{ports["imaps"]} -CAfile {ca}
     then type:  a LOGIN {DEMO_USER} {DEMO_PASSWORD}<code>   /   b SELECT INBOX   /   c LOGOUT

 Web enrollment and admin (HTTPS with the CA above): https://localhost:{ports["web"]}/
   a one-time enrollment link: {sys.executable} -m roamgate invite {DEMO_USER} -c {gw / "roamgate.yaml"}
   admin pages: https://localhost:{ports["web"]}/admin/login as {DEMO_USER!r} (password and code)
 Admin commands (another terminal):
   {sys.executable} -m roamgate session list -c {gw / "roamgate.yaml"}
   {sys.executable} -m roamgate audit -c {gw / "roamgate.yaml"}
==================================================================================
"""


def run(workdir: Path, auto_ports: bool) -> int:
    workdir = workdir.resolve()
    if workdir.exists():
        # Each demo starts fresh: a new mailbox, a new token.
        print(f"removing the previous demo in {workdir}")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ports = _choose_ports(auto_ports)
    gw = workdir / "gateway"
    config = gw / "roamgate.yaml"
    stop = False

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    dovecot = PrivateDovecot(workdir / "dovecot")
    serve: subprocess.Popen[bytes] | None = None
    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting a private Dovecot on 127.0.0.1:{dovecot.imap_port} (the corporate server)")
        dovecot.start()
        dovecot.add_user(DEMO_USER, DEMO_PASSWORD)
        count = dovecot.populate(DEMO_USER, DEMO_PASSWORD, sample_mailbox())
        print(f"sample corporate mailbox for {DEMO_USER!r}: {count} messages")
        print()
        _roamgate(
            "init",
            "--dir",
            str(gw),
            "--upstream-imap",
            f"127.0.0.1:{dovecot.imap_port}",
            "--upstream-tls",
            "starttls",
            "--upstream-ca",
            str(dovecot.ca_file),
            "--ssh-port",
            str(ports["ssh"]),
            "--imaps-port",
            str(ports["imaps"]),
            "--imap-port",
            str(ports["imap"]),
            "--web-port",
            str(ports["web"]),
        )
        # The demo user is also the demo's administrator (the web door's admin pages).
        with config.open("a", encoding="utf-8") as f:
            f.write(f'\nweb:\n  admins: ["{DEMO_USER}"]\n')
        _roamgate("user", "add", DEMO_USER, "-c", str(config))
        enrolled = _roamgate(
            "token", "enroll", DEMO_USER, "--type", "totp", "-c", str(config), capture=True
        )
        found = re.search(r"secret: ([A-Z2-7]+)", enrolled)
        if found is None:
            raise DemoError("token enroll printed no secret")
        serve = subprocess.Popen(
            [sys.executable, "-m", "roamgate", "serve", "-c", str(config)],
            # Its own process group: the terminal's Ctrl-C reaches us, and we stop it in order.
            start_new_session=True,
        )
        _wait_for_port(ports["imaps"], serve)
        _wait_for_port(ports["imap"], serve)
        _wait_for_port(ports["ssh"], serve)
        print(_how_to_connect(gw, ports, found.group(1)), flush=True)
        while not stop and serve.poll() is None and dovecot.running:
            time.sleep(0.2)
        if serve.poll() is not None and not stop:
            print("roamgate serve stopped unexpectedly", file=sys.stderr)
            return 1
        return 0
    finally:
        print("\nstopping the demo ...", flush=True)
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        dovecot.stop()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        print("demo stopped; its files stay in", workdir, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roamgate.demo", description=__doc__)
    parser.add_argument("--dir", default="demo-run", help="working directory (default: demo-run)")
    parser.add_argument(
        "--auto-ports", action="store_true", help="use any free ports, not 2022/9993/9143/9443"
    )
    args = parser.parse_args(argv)
    try:
        return run(Path(args.dir), args.auto_ports)
    except (DemoError, DovecotError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
