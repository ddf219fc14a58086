"""`roamgate doctor` against real peers: Dovecot up and down, a STARTTLS SMTP server, an HTTP
server as clock reference, certificates near and past expiry, a missing database."""

from __future__ import annotations

import datetime as dt
import email.utils
import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from roamgate import pki
from roamgate.demo.dovecot import PrivateDovecot, free_port
from roamgate.doctor import redact
from tests.conftest import run_cli
from tests.gateway.conftest import init_gateway
from tests.ssh.conftest import Mailbox

pytestmark = pytest.mark.peer


class _ClockHandler(http.server.BaseHTTPRequestHandler):
    offset = 0.0  # seconds this server's clock is ahead

    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(time.time() + self.offset, usegmt=True)

    def do_HEAD(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class ClockServer:
    """A real HTTP server whose Date header runs `offset` seconds ahead."""

    def __init__(self) -> None:
        self.handler: type[_ClockHandler] = type("Handler", (_ClockHandler,), {})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def set_offset(self, seconds: float) -> None:
        self.handler.offset = seconds

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def clock() -> Iterator[ClockServer]:
    server = ClockServer()
    yield server
    server.close()


def smtp_server(dovecot: PrivateDovecot, ident: str = "ESMTP test server") -> Controller:
    """aiosmtpd with STARTTLS, using the Dovecot's certificate (SAN 127.0.0.1)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(dovecot.cert_file, dovecot.key_file)
    return Controller(
        Mailbox(), hostname="127.0.0.1", port=free_port(), tls_context=ctx, ident=ident
    )


@pytest.fixture(scope="module")
def smtp(dovecot: PrivateDovecot) -> Iterator[Controller]:
    controller = smtp_server(dovecot)
    controller.start()
    yield controller
    controller.stop()


def make_gateway(dovecot: PrivateDovecot, d: Path, smtp_port: int, clock_url: str | None) -> Path:
    config, _, _ = init_gateway(
        dovecot, d, extra_init=("--upstream-smtp", f"127.0.0.1:{smtp_port}")
    )
    if clock_url is not None:
        with config.open("a") as f:
            f.write(f"doctor:\n  clock_url: {clock_url}\n")
    # Any CLI command creates and migrates the database, as serve would.
    assert run_cli("user", "list", "-c", str(config)).returncode == 0
    return config


def doctor(config: Path) -> tuple[int, dict[str, tuple[str, str]]]:
    r = run_cli("doctor", "-c", str(config))
    assert "Traceback" not in r.stderr, r.stderr
    lines = {}
    for line in r.stdout.splitlines():
        status, _, rest = line.partition(" ")
        name, _, message = rest.strip().partition(": ")
        lines[name] = (status, message)
    return r.returncode, lines


def test_everything_reachable_is_ok(
    dovecot: PrivateDovecot, smtp: Controller, clock: ClockServer, tmp_path: Path
) -> None:
    clock.set_offset(0)
    config = make_gateway(dovecot, tmp_path / "gw", smtp.port, clock.url)
    code, lines = doctor(config)
    assert {status for status, _ in lines.values()} == {"OK"}, lines
    assert code == 0
    assert set(lines) == {
        "config",
        "secret key",
        "store",
        "upstream imap",
        "upstream smtp",
        "door certificate",
        "CA certificate",
        "clock",
        "audit disk",
    }
    assert "schema version" in lines["store"][1]
    assert "TLS verified" in lines["upstream imap"][1]
    assert "TLS verified" in lines["upstream smtp"][1]
    r = run_cli("doctor", "-c", str(config), "--json")
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["OK"] * 9


def test_dovecot_down_and_smtp_down_fail(
    smtp: Controller, clock: ClockServer, tmp_path: Path
) -> None:
    clock.set_offset(0)
    with PrivateDovecot(tmp_path / "dovecot") as own:
        config = make_gateway(own, tmp_path / "gw", free_port(), clock.url)
        code, lines = doctor(config)
        assert lines["upstream imap"][0] == "OK"
        assert lines["upstream smtp"][0] == "FAIL"  # nothing listens on that port
        assert "is the SMTP server up" in lines["upstream smtp"][1]
        assert code == 2
    code, lines = doctor(config)
    assert lines["upstream imap"][0] == "FAIL", lines
    assert "is the IMAP server up" in lines["upstream imap"][1]
    assert code == 2


def test_wrong_upstream_ca_fails_tls_verification(
    dovecot: PrivateDovecot, smtp: Controller, clock: ClockServer, tmp_path: Path
) -> None:
    clock.set_offset(0)
    config = make_gateway(dovecot, tmp_path / "gw", smtp.port, clock.url)
    # The gateway's own CA did not sign Dovecot's certificate.
    text = config.read_text().replace(str(dovecot.ca_file), str(tmp_path / "gw" / "tls" / "ca.pem"))
    config.write_text(text)
    code, lines = doctor(config)
    assert (
        lines["upstream imap"][0] == "FAIL"
        and "CERTIFICATE_VERIFY_FAILED" in lines["upstream imap"][1]
    )
    assert (
        lines["upstream smtp"][0] == "FAIL"
        and "CERTIFICATE_VERIFY_FAILED" in lines["upstream smtp"][1]
    )
    assert code == 2


def _reissue(gw: Path, days_left: float) -> None:
    """Replace the door certificate with one of the gateway's CA ending in days_left days."""
    ca_key, ca_cert = pki.load_ca(gw / "tls" / "ca.pem", gw / "tls" / "ca.key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=days_left))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki.write_private(gw / "tls" / "server.key", pki.key_pem(key))
    (gw / "tls" / "server.pem").write_bytes(pki.cert_pem(cert))


def test_certificate_expiry_warns_then_fails(
    dovecot: PrivateDovecot, smtp: Controller, clock: ClockServer, tmp_path: Path
) -> None:
    clock.set_offset(0)
    gw = tmp_path / "gw"
    config = make_gateway(dovecot, gw, smtp.port, clock.url)
    _reissue(gw, days_left=10.5)
    code, lines = doctor(config)
    status, message = lines["door certificate"]
    assert status == "WARN" and "in 10 days" in message and "renewed certificate" in message
    assert code == 1
    _reissue(gw, days_left=-1)
    code, lines = doctor(config)
    assert lines["door certificate"][0] == "FAIL" and "expired" in lines["door certificate"][1]
    assert lines["CA certificate"][0] == "OK"
    assert code == 2


def test_a_missing_database_fails(
    dovecot: PrivateDovecot, smtp: Controller, clock: ClockServer, tmp_path: Path
) -> None:
    clock.set_offset(0)
    gw = tmp_path / "gw"
    config = make_gateway(dovecot, gw, smtp.port, clock.url)
    for db in gw.glob("roamgate.db*"):
        db.unlink()
    code, lines = doctor(config)
    assert lines["store"][0] == "FAIL", lines
    assert "roamgate init" in lines["store"][1]
    assert code == 2
    assert not (gw / "roamgate.db").exists()  # doctor creates nothing


def test_clock_skew_against_the_http_date(
    dovecot: PrivateDovecot, smtp: Controller, clock: ClockServer, tmp_path: Path
) -> None:
    config = make_gateway(dovecot, tmp_path / "gw", smtp.port, clock.url)
    clock.set_offset(8)
    code, lines = doctor(config)
    assert lines["clock"][0] == "WARN" and "against http://127.0.0.1" in lines["clock"][1]
    assert code == 1
    clock.set_offset(-120)
    code, lines = doctor(config)
    assert lines["clock"][0] == "FAIL" and "synchronise" in lines["clock"][1]
    assert code == 2
    clock.set_offset(0)


def test_clock_from_the_smtp_greeting_or_a_warning(
    dovecot: PrivateDovecot, clock: ClockServer, tmp_path: Path
) -> None:
    ahead = email.utils.formatdate(time.time() + 300, localtime=False)
    dated = smtp_server(dovecot, ident=f"ESMTP Sendmail 8.15.2/8.15.2; {ahead}")
    dated.start()
    try:
        config = make_gateway(dovecot, tmp_path / "gw", dated.port, None)
        code, lines = doctor(config)
        assert lines["clock"][0] == "FAIL" and "greeting" in lines["clock"][1], lines
        assert code == 2
    finally:
        dated.stop()
    plain = smtp_server(dovecot)
    plain.start()
    try:
        config = make_gateway(dovecot, tmp_path / "gw2", plain.port, None)
        code, lines = doctor(config)
        assert lines["clock"][0] == "WARN" and "doctor.clock_url" in lines["clock"][1]
        assert code == 1
    finally:
        plain.stop()


def test_low_disk_and_config_errors(tmp_path: Path) -> None:
    config = tmp_path / "roamgate.yaml"
    config.write_text("hostname: [\n")
    r = run_cli("doctor", "-c", str(config))
    assert r.returncode == 2 and r.stdout.startswith("FAIL config: ")
    r = run_cli("doctor", "-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "file not found" in r.stdout


def test_redact_hides_a_url_password() -> None:
    text = "cannot connect to postgresql://gate:s3cr3t@db.example.com:5432/roamgate"
    assert redact(text) == "cannot connect to postgresql://gate:***@db.example.com:5432/roamgate"
    assert redact("roamgate.db") == "roamgate.db"
