"""/healthz and /metrics of a real `roamgate serve` before a real Dovecot, read by http.client."""

from __future__ import annotations

import http.client
import imaplib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from roamgate.config import load_config
from roamgate.demo.dovecot import PrivateDovecot, free_port
from tests.conftest import require_program
from tests.gateway.conftest import PASSWORDS, Gateway, running_gateway, wait_for_port
from tests.gateway.test_proxy_protocol_haproxy import PrivateHaproxy

pytestmark = pytest.mark.peer

USER = "bob"


@pytest.fixture(scope="module")
def own_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    """A Dovecot of this module only: the last test stops it."""
    require_program("oathtool")
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot-health")) as server:
        server.add_user(USER, PASSWORDS[USER])
        yield server


@pytest.fixture(scope="module")
def gw(own_dovecot: PrivateDovecot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    replace = {"logging:\n": "web:\n  health_cache_seconds: 1\nlogging:\n"}
    d = tmp_path_factory.mktemp("healthgw") / "gw"
    with running_gateway(own_dovecot, d, users={USER: PASSWORDS[USER]}, replace=replace) as g:
        wait_for_port(web_port(g), g.process, g.log_file)
        yield g


@pytest.fixture(scope="module")
def balancer(gw: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real HAProxy whose server check is `option httpchk GET /healthz` over verified TLS."""
    tmp = tmp_path_factory.mktemp("haproxy-health")
    stats = tmp / "stats.sock"
    port = free_port()
    config = tmp / "haproxy.cfg"
    config.write_text(
        "\n".join(
            [
                "global",
                "    maxconn 100",
                f"    stats socket {stats} level user",
                "defaults",
                "    mode tcp",
                "    timeout connect 5s",
                "    timeout client 60s",
                "    timeout server 60s",
                "frontend fe_imaps",
                f"    bind 127.0.0.1:{port}",
                "    default_backend be_imaps",
                "backend be_imaps",
                "    option httpchk",
                "    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost",
                "    http-check expect status 200",
                f"    server gw 127.0.0.1:{gw.imaps_port} check port {web_port(gw)}"
                f" check-ssl verify required ca-file {gw.ca_file} check-sni localhost"
                " inter 500 fall 2 rise 1",
            ]
        )
        + "\n"
    )
    with PrivateHaproxy(config, {"fe_imaps": port}):
        yield stats


def server_status(stats: Path) -> str:
    """The gw server's status (UP, DOWN, ...) from HAProxy's stats socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        fields = line.split(",")
        if len(fields) > 17 and fields[0] == "be_imaps" and fields[1] == "gw":
            return fields[17]
    return "?"


def wait_for_status(stats: Path, prefix: str) -> str:
    deadline = time.monotonic() + 30
    status = server_status(stats)
    while not status.startswith(prefix) and time.monotonic() < deadline:
        time.sleep(0.3)
        status = server_status(stats)
    return status


def web_port(g: Gateway) -> int:
    web = load_config(g.config).listeners.web
    assert web is not None and web.enabled
    return web.port


def get(g: Gateway, path: str, source: str = "127.0.0.1") -> tuple[int, str, str]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", web_port(g), context=g.context(), timeout=30, source_address=(source, 0)
    )
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    finally:
        conn.close()


def scrape(g: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, ctype, text = get(g, "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, text[:200])
    # Label values never carry a user name or an address.
    assert USER not in text and "127.0.0.1" not in text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **want: str
) -> float:
    """The sum over every series of NAME whose labels include WANT."""
    return sum(
        v for (n, labels), v in found.items() if n == name and set(want.items()) <= set(labels)
    )


def wait_for_audit(g: Gateway, kind: str, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [e for e in g.audit() if e["kind"] == kind]
        if len(events) >= count:
            return events
        time.sleep(0.2)
    pytest.fail(f"no {count} {kind} event(s) in the audit trail within 30 s")


def test_healthz_is_ok_before_a_healthy_upstream(gw: Gateway) -> None:
    status, ctype, body = get(gw, "/healthz")
    assert status == 200, body
    assert ctype.startswith("application/json")
    assert json.loads(body) == {"status": "ok", "store": "ok", "upstream_imap": "ok"}


def test_metrics_count_logins_sessions_and_bytes(gw: Gateway) -> None:
    before = scrape(gw)
    client = gw.login(USER)
    bad = gw.imaps()
    with pytest.raises(imaplib.IMAP4.error):
        bad.login(USER, PASSWORDS[USER] + "000000x")
    bad.logout()
    client.select("INBOX")
    wait_for_audit(gw, "session_open", 1)
    during = scrape(gw)
    name = "roamgate_logins_total"
    assert total(during, name, door="imaps", result="ok") - total(before, name, result="ok") == 1
    assert (
        total(during, name, door="imaps", result="fail") - total(before, name, result="fail") == 1
    )
    ok_series = [dict(k[1]) for k in during if k[0] == name and ("result", "ok") in k[1]]
    assert ok_series and all(s["factor"].startswith("password+") for s in ok_series)
    assert total(during, "roamgate_active_sessions", door="imaps") == 1
    assert total(during, "roamgate_active_sessions") == 1

    client.logout()
    closed = wait_for_audit(gw, "session_close", 1)[-1]
    after = scrape(gw)
    assert total(after, "roamgate_active_sessions") == 0
    assert total(after, "roamgate_sessions_total", door="imaps") == 1
    detail = closed["detail"]
    assert isinstance(detail, dict)
    # The byte counters agree with what the session record says it relayed.
    assert detail["bytes_in"] > 0 and detail["bytes_out"] > 0
    relayed = "roamgate_relayed_bytes_total"
    assert total(after, relayed, door="imaps", direction="in") == detail["bytes_in"]
    assert total(after, relayed, door="imaps", direction="out") == detail["bytes_out"]


def test_metrics_refused_to_an_address_not_allowed(gw: Gateway) -> None:
    status, _, body = get(gw, "/metrics", source="127.0.0.2")
    assert status == 403
    assert "roamgate_" not in body
    # Health stays open to the balancer's address, wherever it is.
    assert get(gw, "/healthz", source="127.0.0.2")[0] == 200


def test_haproxy_httpchk_sees_a_healthy_node(balancer: Path) -> None:
    status = wait_for_status(balancer, "UP")
    assert status.startswith("UP"), status


def test_healthz_names_the_upstream_when_dovecot_stops(
    gw: Gateway, own_dovecot: PrivateDovecot, balancer: Path
) -> None:
    assert wait_for_status(balancer, "UP").startswith("UP")
    own_dovecot.stop()
    deadline = time.monotonic() + 30
    while True:
        status, _, body = get(gw, "/healthz")
        if status == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 503, body
    assert json.loads(body) == {"status": "fail", "store": "ok", "upstream_imap": "fail"}
    # The reason is in the operator's log, not in the answer.
    assert "health: upstream IMAP" in gw.logs()
    assert str(own_dovecot.imap_port) not in body
    # HAProxy's check takes the node out.
    state = wait_for_status(balancer, "DOWN")
    assert state.startswith("DOWN"), state
