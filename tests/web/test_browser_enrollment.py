"""The enrollment and admin flows in a real headless Chromium (Playwright), against `roamgate serve`.

Invite link -> password -> QR code read back from a screenshot by zbarimg -> code from oathtool
-> backup codes shown once -> downloads parsed -> a device certificate that a real TLS client
presents, then revoked -> the user logs in through the IMAP door with password and code -> an
admin (password AND code) ends the session and revokes the token -> the next login fails.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import plistlib
import re
import socket
import ssl
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from roamgate.config import load_config
from roamgate.demo.dovecot import PrivateDovecot
from roamgate_connect.profile import build as build_profile
from tests.conftest import require_program
from tests.gateway.conftest import PASSWORDS, Gateway, read_line, running_gateway, wait_for_port

pytestmark = pytest.mark.peer

NEW_USER = "erin"
ADMIN = "carol"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def totp(secret: str, offset_steps: int = 0) -> str:
    return totp_at(secret, int(time.time()) + 30 * offset_steps)


def totp_at(secret: str, when: int) -> str:
    out = subprocess.run(
        [require_program("oathtool"), "--totp", "-b", f"--now=@{when}", secret],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return out.stdout.strip()


class Codes:
    """Successive TOTP codes of one token, each of a later step (a code works only once)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.last_step = -1

    def next(self) -> str:
        now_step = int(time.time()) // 30
        step = max(now_step, self.last_step + 1)
        if step > now_step + 1:
            # The gateway accepts one step ahead at most: wait for the clock to catch up.
            time.sleep(max(0.0, (step - 1) * 30 - time.time() + 0.5))
        self.last_step = step
        return totp_at(self.secret, step * 30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_program("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def web_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    require_program("oathtool")
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot-web")) as server:
        for user, password in PASSWORDS.items():
            server.add_user(user, password)
        yield server


@pytest.fixture(scope="module")
def web_gateway(
    web_dovecot: PrivateDovecot, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    replace = {
        "client_certificates: none": "client_certificates: optional",
        # Every login here needs the code, so a revoked token shows at the next login.
        "travel_window_seconds: 43200": "travel_window_seconds: 0",
        "logging:\n": f'web:\n  admins: ["{ADMIN}"]\n  failure_delay_ms: 100\nlogging:\n',
    }
    d = tmp_path_factory.mktemp("webgw") / "gw"
    with running_gateway(web_dovecot, d, users={ADMIN: PASSWORDS[ADMIN]}, replace=replace) as gw:
        web = load_config(gw.config).listeners.web
        assert web is not None
        wait_for_port(web.port, gw.process, gw.log_file)
        gw.counters.setdefault(ADMIN, 0)
        yield gw


def web_base(gw: Gateway) -> str:
    web = load_config(gw.config).listeners.web
    assert web is not None
    return f"https://localhost:{web.port}"


def new_context(browser: Browser) -> BrowserContext:
    # A phone-sized screen. The gateway's certificate comes from its private CA, which this
    # throw-away browser profile does not know; the TLS itself is checked with the CA below.
    return browser.new_context(
        ignore_https_errors=True, accept_downloads=True, viewport={"width": 390, "height": 844}
    )


def download(page: Page, selector: str) -> bytes:
    with page.expect_download() as info:
        page.click(selector)
    path = info.value.path()
    return Path(path).read_bytes()


def test_web_door_speaks_tls_with_the_gateway_certificate(web_gateway: Gateway) -> None:
    web = load_config(web_gateway.config).listeners.web
    assert web is not None
    with (
        socket.create_connection(("127.0.0.1", web.port), timeout=10) as raw,
        web_gateway.context().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        head = tls.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 200")
    assert "content-security-policy: default-src 'self'" in head.lower()


def test_enrollment_admin_and_revocation_in_a_real_browser(
    web_gateway: Gateway, browser: Browser, tmp_path: Path
) -> None:
    gw = web_gateway
    base = web_base(gw)
    zbarimg = require_program("zbarimg")
    assert gw.cli("user", "add", NEW_USER).returncode == 0
    r = gw.cli("invite", NEW_USER, "--expires-hours", "2", "--json")
    assert r.returncode == 0, r.stderr
    invite = json.loads(r.stdout)
    link = invite["link"]
    invite_token = link.rsplit("/", 1)[1]
    assert link.startswith(base + "/invite/")
    seen_secrets = [invite_token, PASSWORDS[NEW_USER], PASSWORDS[ADMIN]]

    ctx = new_context(browser)
    page = ctx.new_page()
    response = page.goto(link)
    assert response is not None and response.ok
    # The token left the address bar at once (kept in the session, not in history).
    assert urlsplit(page.url).path == "/enroll" and invite_token not in page.url
    assert page.text_content("#user") == NEW_USER
    page.fill("#password", PASSWORDS[NEW_USER])
    page.click("button[type=submit]")
    page.wait_for_selector("#qr svg")

    # The QR code, read back from pixels by an independent decoder.
    shot = tmp_path / "qr.png"
    page.locator("#qr").screenshot(path=str(shot))
    decoded = subprocess.run(
        [zbarimg, "--raw", "-q", str(shot)], capture_output=True, text=True, timeout=30
    )
    assert decoded.returncode == 0, decoded.stderr
    uri = decoded.stdout.strip()
    assert uri.startswith("otpauth://totp/")
    assert uri == page.text_content("#uri")
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    assert page.text_content("#secret").replace(" ", "") == secret  # type: ignore[union-attr]
    seen_secrets.append(secret)

    # A wrong code activates nothing.
    page.fill("#code", totp(secret, -120))
    page.click("button[type=submit]")
    assert "did not match" in (page.text_content("#error") or "")
    assert json.loads(gw.cli("token", "list", NEW_USER, "--json").stdout) == []

    codes_of = Codes(secret)
    page.fill("#code", codes_of.next())
    page.click("button[type=submit]")
    page.wait_for_selector("#backup-codes")
    codes = [c.strip() for c in page.locator("#backup-codes li").all_text_contents()]
    assert len(codes) == 10 and all(re.fullmatch(r"[0-9 -]+", c) for c in codes)
    seen_secrets += codes
    page.reload()
    assert "shown once already" in (page.text_content("#message") or "")
    assert not any(c in page.content() for c in codes)
    tokens = json.loads(gw.cli("token", "list", NEW_USER, "--json").stdout)
    assert len(tokens) == 1
    token_id = tokens[0]["token_id"] if "token_id" in tokens[0] else tokens[0]["id"]

    page.goto(base + "/enroll")
    # Downloads, each parsed.
    tb = ET.fromstring(download(page, "#dl-thunderbird"))  # noqa: S314 (our own server)
    incoming = tb.find("./emailProvider/incomingServer")
    assert incoming is not None
    assert incoming.findtext("hostname") == "localhost"
    assert incoming.findtext("port") == str(gw.imaps_port)
    assert incoming.findtext("socketType") == "SSL"
    assert incoming.findtext("username") == NEW_USER
    apple = plistlib.loads(download(page, "#dl-mobileconfig"))
    mail = next(p for p in apple["PayloadContent"] if p["PayloadType"] == "com.apple.mail.managed")
    assert mail["IncomingMailServerHostName"] == "localhost"
    assert mail["IncomingMailServerPortNumber"] == gw.imaps_port
    assert mail["IncomingMailServerUseSSL"] is True
    trust = next(
        p for p in apple["PayloadContent"] if p["PayloadType"] == "com.apple.security.root"
    )
    assert trust["PayloadContent"] == x509.load_pem_x509_certificate(
        gw.ca_file.read_bytes()
    ).public_bytes(serialization.Encoding.DER)
    ssh_cfg = tmp_path / "ssh_config"
    ssh_cfg.write_bytes(download(page, "#dl-ssh"))
    resolved = subprocess.run(
        ["ssh", "-G", "-F", str(ssh_cfg), "roamgate"], capture_output=True, text=True, timeout=10
    )
    assert resolved.returncode == 0, resolved.stderr
    assert f"port {gw.ssh_port or load_config(gw.config).listeners.ssh.port}" in resolved.stdout  # type: ignore[union-attr]
    keygen = subprocess.run(
        ["ssh-keygen", "-lf", str(gw.dir / "ssh_host_ed25519_key.pub")],
        capture_output=True,
        text=True,
        timeout=10,
    )
    fingerprint = keygen.stdout.split()[1]
    assert fingerprint in ssh_cfg.read_text()
    profile = build_profile(yaml.safe_load(download(page, "#dl-profile")), "download")
    assert profile.user == NEW_USER and profile.host_keys[0] == fingerprint
    ET.fromstring(download(page, "#dl-connect-thunderbird"))  # noqa: S314 (our own server)

    # A call-back number.
    page.select_option("#channel", "webhook")
    page.fill("#address", "+15551234567")
    page.click("form[action='/enroll/callback'] button")
    assert "webhook: +15551234567" in page.content()

    # A device certificate: PKCS#12 with a one-time passphrase.
    page.fill("#device-name", "phone")
    page.click("form[action='/enroll/device'] button")
    passphrase = page.text_content("#passphrase") or ""
    seen_secrets.append(passphrase)
    p12 = download(page, "#dl-p12")
    assert page.request.get(base + "/enroll/device.p12").status == 410
    key, cert, _chain = pkcs12.load_key_and_certificates(p12, passphrase.encode())
    assert key is not None and cert is not None
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(p12, b"wrong passphrase")
    seen_secrets += [c["value"] for c in ctx.cookies()]
    ctx.close()

    # The same invite link again: refused.
    other = new_context(browser)
    again = other.new_page().goto(link)
    assert again is not None and again.status == 410
    other.close()

    # The device certificate, presented by a real TLS client, then revoked.
    cert_file, key_file = tmp_path / "dev.pem", tmp_path / "dev.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    def with_cert() -> ssl.SSLContext:
        c = gw.context()
        c.load_cert_chain(str(cert_file), str(key_file))
        return c

    client = imaplib.IMAP4_SSL("127.0.0.1", gw.imaps_port, ssl_context=with_cert(), timeout=30)
    login_code = codes_of.next()
    assert client.login(NEW_USER, PASSWORDS[NEW_USER] + login_code)[0] == "OK"
    client.logout()
    devices = json.loads(gw.cli("device", "list", NEW_USER, "--json").stdout)
    assert len(devices) == 1
    assert devices[0]["serial"] == format(cert.serial_number, "x")
    r = gw.cli("device", "revoke", devices[0]["device_id"])
    assert r.returncode == 0, r.stderr
    with (
        socket.create_connection(("127.0.0.1", gw.imaps_port), timeout=15) as raw,
        with_cert().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert read_line(tls).startswith(b"* BYE")
    # The same after STARTTLS on the plain IMAP door.
    starttls = gw.imap_plain()
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        starttls.starttls(ssl_context=with_cert())
    with contextlib.suppress(OSError):
        starttls.shutdown()
    crl = x509.load_pem_x509_crl((gw.dir / "tls" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    ca = x509.load_pem_x509_certificate(gw.ca_file.read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]

    # The user logs in through the IMAP door (no certificate) with password + code; stays on.
    live = gw.imaps()
    assert live.login(NEW_USER, PASSWORDS[NEW_USER] + codes_of.next())[0] == "OK"
    assert live.select("INBOX")[0] == "OK"

    # The admin: password alone is refused; password + code gets in.
    admin_ctx = new_context(browser)
    page = admin_ctx.new_page()
    page.goto(base + "/admin/login")
    page.fill("#user", ADMIN)
    page.fill("#password", PASSWORDS[ADMIN])
    page.click("button[type=submit]")
    assert page.text_content("#error") == "Login failed."
    assert urlsplit(page.url).path == "/admin/login"
    admin_code = gw.code(ADMIN)
    page.fill("#user", ADMIN)
    page.fill("#password", PASSWORDS[ADMIN])
    page.fill("#code", admin_code)
    response_wait = page.expect_navigation()
    with response_wait:
        page.click("button[type=submit]")
    assert urlsplit(page.url).path == "/admin"
    assert NEW_USER in (page.text_content("#users") or "")
    published = x509.load_pem_x509_crl(page.request.get(base + "/crl.pem").body())
    assert published.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    # The same CRL in DER where the server certificate's CRL distribution point says.
    server_cert = x509.load_pem_x509_certificate((gw.dir / "tls" / "server.pem").read_bytes())
    points = server_cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    crl_uri = points[0].full_name[0].value
    assert crl_uri.endswith("/crl.der")
    der = x509.load_der_x509_crl(page.request.get(base + "/crl.der").body())
    assert der.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    headers = page.request.get(base + "/admin").headers
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    # A POST without the CSRF token is refused even with the admin's cookie.
    assert page.request.post(base + f"/admin/user/{NEW_USER}/disable", form={}).status == 403

    page.goto(base + "/admin/sessions")
    end_button = page.locator(f"#live tr:has-text('{NEW_USER}') button")
    end_button.click()
    deadline = time.monotonic() + 15
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        while time.monotonic() < deadline:
            live.noop()
            time.sleep(0.5)
    with contextlib.suppress(OSError):
        live.shutdown()

    page.goto(base + f"/admin/user/{NEW_USER}")
    page.click(f"#revoke-{token_id}")
    assert "revoked" in (page.text_content("#tokens") or "")
    refused = gw.imaps()
    with pytest.raises(imaplib.IMAP4.error):
        refused.login(NEW_USER, PASSWORDS[NEW_USER] + codes_of.next())
    refused.logout()

    page.goto(base + "/admin/audit?user=" + NEW_USER)
    trail = page.text_content("#audit") or ""
    for kind in ("invite_open", "enroll", "device_revoke", "session_revoke", "token_revoke"):
        assert kind in trail, kind
    assert f"web:{ADMIN}" in trail
    seen_secrets += [c["value"] for c in admin_ctx.cookies()] + [admin_code]
    admin_ctx.close()

    # No secret in the serve log or the audit trail.
    logs = gw.logs()
    trail_text = (gw.dir / "audit.jsonl").read_text()
    assert "/invite/[token]" in logs
    for value in seen_secrets:
        assert value and value not in logs, value[:4]
        assert value not in trail_text, value[:4]
