"""A real HAProxy in front of a real gateway: PROXY v1 and v2 carry the client's address.

HAProxy listens on 127.0.0.1 and connects to the gateway's doors from 127.0.0.1 (the only
trusted proxy); clients connect to HAProxy from other loopback addresses (127.0.0.3 ...), so
the audit trail, the session records and the travel windows must name those, not 127.0.0.1.
A client that connects straight to a door from 127.0.0.2 with a forged header is refused.
"""

from __future__ import annotations

import dataclasses
import imaplib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roamgate.demo.dovecot import PrivateDovecot, free_port
from roamgate.proxy_protocol import encode_v1, encode_v2
from tests.conftest import require_program
from tests.gateway.conftest import PASSWORDS, Gateway, running_gateway
from tests.ssh.conftest import ASKPASS, Mailbox, SshGateway

pytestmark = pytest.mark.peer

USERS = {name: PASSWORDS[name] for name in ("bob", "carol", "dave")}
FORGED_SOURCE = "203.0.113.66"


def haproxy_config(gw: Gateway, ports: dict[str, int]) -> str:
    # One frontend per (door, PROXY version); `source 127.0.0.1` makes the trusted address
    # explicit even if the machine had others.
    backends = {
        "imaps_v1": (gw.imaps_port, "send-proxy"),
        "imaps_v2": (gw.imaps_port, "send-proxy-v2"),
        "imap_v2": (gw.imap_port, "send-proxy-v2"),
        "ssh_v1": (gw.ssh_port, "send-proxy"),
        "ssh_v2": (gw.ssh_port, "send-proxy-v2"),
    }
    text = [
        "global",
        "    maxconn 200",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 120s",
        "    timeout server 120s",
    ]
    for name, (port, send) in backends.items():
        text += [
            f"frontend fe_{name}",
            f"    bind 127.0.0.1:{ports[name]}",
            f"    default_backend be_{name}",
            f"backend be_{name}",
            f"    server gw 127.0.0.1:{port} {send} source 127.0.0.1",
        ]
    return "\n".join(text) + "\n"


class PrivateHaproxy:
    """`haproxy -db -f CONF` in the foreground, stopped with SIGTERM."""

    def __init__(self, config: Path, ports: dict[str, int]) -> None:
        self.config = config
        self.ports = ports
        self.log = config.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivateHaproxy:
        haproxy = require_program("haproxy")
        check = subprocess.run(
            [haproxy, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [haproxy, "-db", "-f", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        for port in self.ports.values():
            while True:
                assert self.process.poll() is None, self.log.read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "haproxy did not listen within 30 s"
                    time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _proxy_replacements() -> dict[str, str]:
    return {
        "listeners:\n  ssh:\n": "trusted_proxies: [127.0.0.1/32]\n"
        "listeners:\n  ssh:\n    proxy_protocol: true\n",
        "  imaps:            # IMAP with TLS from the first byte\n": "  imaps:\n"
        "    proxy_protocol: true\n",
        "  imap:             # IMAP with STARTTLS (no login before it)\n": "  imap:\n"
        "    proxy_protocol: true\n",
        "keepalive_seconds: 30": "keepalive_seconds: 30\n  failure_delay_ms: 100",
    }


@dataclasses.dataclass
class Balanced:
    gw: Gateway
    haproxy: PrivateHaproxy
    tmp: Path

    def port(self, name: str) -> int:
        return self.haproxy.ports[name]


@pytest.fixture(scope="module")
def balanced(
    dovecot: PrivateDovecot, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Balanced]:
    tmp = tmp_path_factory.mktemp("haproxy")
    with running_gateway(dovecot, tmp / "gw", users=USERS, replace=_proxy_replacements()) as gw:
        ports = {n: free_port() for n in ("imaps_v1", "imaps_v2", "imap_v2", "ssh_v1", "ssh_v2")}
        config = tmp / "haproxy.cfg"
        config.write_text(haproxy_config(gw, ports))
        with PrivateHaproxy(config, ports) as haproxy:
            yield Balanced(gw, haproxy, tmp)


class _FromImaps(imaplib.IMAP4_SSL):
    source = "127.0.0.1"

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )
        wrapped: socket.socket = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        return wrapped


class _FromImap(imaplib.IMAP4):
    source = "127.0.0.1"

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


def imaps_from(b: Balanced, frontend: str, source: str) -> imaplib.IMAP4_SSL:
    cls = type("FromImaps", (_FromImaps,), {"source": source})
    client: imaplib.IMAP4_SSL = cls(
        "127.0.0.1", b.port(frontend), ssl_context=b.gw.context(), timeout=30
    )
    return client


def _records(gw: Gateway, kind: str, user: str | None = None) -> list[dict[str, object]]:
    return [r for r in gw.audit() if r["kind"] == kind and (user is None or r["user"] == user)]


def _wait_for_record(gw: Gateway, kind: str, **match: object) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while True:
        for r in reversed(gw.audit()):
            if r["kind"] == kind and all(r.get(k) == v for k, v in match.items()):
                return r
        assert time.monotonic() < deadline, f"no {kind} record matching {match}"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("frontend", "client"), [("imaps_v1", "127.0.0.3"), ("imaps_v2", "127.0.0.4")]
)
def test_imaps_behind_haproxy_audits_the_client_address(
    balanced: Balanced, frontend: str, client: str
) -> None:
    gw = balanced.gw
    imap = imaps_from(balanced, frontend, client)
    imap.login("bob", USERS["bob"] + gw.code("bob"))
    typ, _ = imap.select("INBOX")
    assert typ == "OK"
    sessions = json.loads(gw.cli("session", "list", "--json").stdout)["sessions"]
    assert [s["source"] for s in sessions if s["user"] == "bob"] == [client]
    imap.logout()
    opened = _wait_for_record(gw, "session_open", user="bob", source=client)
    assert opened["door"] == "imaps"
    assert opened["detail"]["via"] == "127.0.0.1"  # type: ignore[index]
    assert _wait_for_record(gw, "auth", user="bob", source=client)["result"] == "ok"
    _wait_for_record(gw, "session_close", user="bob", source=client)
    # The balancer's own address never stands for a client.
    assert not [r for r in _records(gw, "session_open") if r["source"] == "127.0.0.1"]


def test_starttls_door_behind_haproxy(balanced: Balanced) -> None:
    gw = balanced.gw
    cls = type("FromImap", (_FromImap,), {"source": "127.0.0.5"})
    imap = cls("127.0.0.1", balanced.port("imap_v2"), timeout=30)
    imap.starttls(ssl_context=gw.context())
    imap.login("carol", USERS["carol"] + gw.code("carol"))
    imap.logout()
    opened = _wait_for_record(gw, "session_open", user="carol", source="127.0.0.5")
    assert opened["door"] == "imap"


def test_travel_window_and_failures_follow_the_client_not_the_balancer(balanced: Balanced) -> None:
    gw = balanced.gw
    imap = imaps_from(balanced, "imaps_v2", "127.0.0.6")
    imap.login("dave", USERS["dave"] + gw.code("dave"))
    imap.logout()
    # The window opened for addr:127.0.0.6: from there the password alone is enough ...
    imap = imaps_from(balanced, "imaps_v1", "127.0.0.6")
    imap.login("dave", USERS["dave"])
    imap.logout()
    # ... but not from another client behind the same balancer.
    imap = imaps_from(balanced, "imaps_v2", "127.0.0.8")
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("dave", USERS["dave"])
    imap.logout()
    failed = _wait_for_record(gw, "auth", user="dave", result="fail")
    assert failed["source"] == "127.0.0.8"


@pytest.mark.parametrize("frontend", ["ssh_v1", "ssh_v2"])
def test_ssh_behind_haproxy_audits_the_client_address(
    balanced: Balanced, frontend: str, tmp_path: Path
) -> None:
    require_program("ssh")
    gw = balanced.gw
    port = balanced.port(frontend)
    pub = (gw.dir / "ssh_host_ed25519_key.pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    (tmp_path / "askpass").write_text(ASKPASS)
    (tmp_path / "askpass").chmod(0o755)
    via = SshGateway(dataclasses.replace(gw, ssh_port=port), Mailbox(), 0, known_hosts, tmp_path)
    client = "127.0.0.9" if frontend == "ssh_v1" else "127.0.0.10"
    forward = f"127.0.0.1:{free_port()}:imap:143"
    with via.openssh_tunnel("bob", USERS["bob"], gw.code("bob"), forward, extra=("-b", client)) as (
        proc,
        answers,
    ):
        assert proc.poll() is None, (answers / "ssh.log").read_text()
        opened = _wait_for_record(gw, "session_open", user="bob", door="ssh", source=client)
        assert opened["detail"]["via"] == "127.0.0.1"  # type: ignore[index]


def _connect_from(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))


def _refused(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("door", "header"),
    [
        ("imaps", encode_v1((FORGED_SOURCE, 4444), ("127.0.0.1", 993))),
        ("imap", encode_v2((FORGED_SOURCE, 4444), ("127.0.0.1", 143))),
        ("ssh", encode_v2((FORGED_SOURCE, 4444), ("127.0.0.1", 22)) + b"SSH-2.0-forger\r\n"),
    ],
)
def test_a_forged_header_from_an_untrusted_address_is_refused(
    balanced: Balanced, door: str, header: bytes
) -> None:
    gw = balanced.gw
    port = {"imaps": gw.imaps_port, "imap": gw.imap_port, "ssh": gw.ssh_port}[door]
    sock = _connect_from("127.0.0.2", port)
    sock.sendall(header + b"a1 LOGIN bob x\r\n")
    assert _refused(sock)
    record = _wait_for_record(gw, "proxy_refused", door=door, source="127.0.0.2")
    assert record["reason"] == "untrusted_source"
    assert record["detail"] == {"forged_header": True}
    assert not [r for r in gw.audit() if r["source"] == FORGED_SOURCE]


def test_the_trusted_address_without_a_header_is_refused(balanced: Balanced) -> None:
    gw = balanced.gw
    sock = _connect_from("127.0.0.1", gw.imaps_port)
    ctx = gw.context()
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    sock.close()
    record = _wait_for_record(gw, "proxy_refused", door="imaps", reason="header_missing")
    assert record["source"] == "127.0.0.1"
