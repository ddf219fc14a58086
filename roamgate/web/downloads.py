"""Ready-made client settings for an enrolled user, rendered for this gateway's config.

The connector's renderers (roamgate_connect.client_configs) make the SSH and connector files;
this module only adds what talks to the TLS door directly (Thunderbird, Apple Mail).
"""

from __future__ import annotations

import plistlib
import uuid
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from roamgate import pki
from roamgate.config import Config
from roamgate_connect.client_configs import (
    openssh_config,
    profile_yaml,
    thunderbird_autoconfig,
    thunderbird_xml,
)
from roamgate_connect.profile import Profile, default_device_key

# Outgoing mail goes to the gateway's submission door (STARTTLS on 587).
SUBMISSION_PORT = 587


@cache
def _ssh_fingerprints(files: tuple[Path, ...]) -> tuple[str, ...]:
    # Ed25519 first: it is what OpenSSH and the connector prefer.
    ordered = sorted(files, key=lambda p: "ed25519" not in p.name)
    return tuple(pki.ssh_fingerprint(p) for p in ordered)


def connector_profile(cfg: Config, user: str) -> Profile | None:
    """The user's roamgate-connect profile, or None if this gateway has no SSH door."""
    ssh = cfg.listeners.ssh
    if ssh is None or not ssh.enabled or cfg.ssh is None:
        return None
    keys = _ssh_fingerprints(tuple(cfg.ssh.host_key_files))
    return Profile(
        cfg.hostname, ssh.port, user, keys, 1143, 1587, default_device_key(user, cfg.hostname)
    )


def imaps_port(cfg: Config) -> int | None:
    imaps = cfg.listeners.imaps
    return imaps.port if imaps is not None and imaps.enabled else None


def thunderbird_direct(cfg: Config, user: str) -> str | None:
    port = imaps_port(cfg)
    if port is None:
        return None
    return thunderbird_xml(
        user,
        (cfg.hostname, port, "SSL"),
        (cfg.hostname, SUBMISSION_PORT, "STARTTLS"),
        "Thunderbird to the roamgate TLS door: the password is your password followed by"
        " the code from your app.",
    )


def apple_mobileconfig(cfg: Config, user: str, email: str | None) -> bytes | None:
    """An unsigned configuration profile: the gateway's CA and an IMAP account (Apple Mail).

    Unsigned: iOS and macOS show it as "Unverified" before it is installed. The CA payload
    makes the device trust the gateway's private CA (the user confirms it in Settings).
    """
    port = imaps_port(cfg)
    if port is None:
        return None
    ca = x509.load_pem_x509_certificate(cfg.tls.ca_file.read_bytes())
    ident = "net.roamgate." + cfg.hostname
    # Stable identifiers per gateway and user: installing it again replaces the old one.
    base = uuid.uuid5(uuid.NAMESPACE_DNS, f"{cfg.hostname}/{user}")
    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.mail.{user}",
        "PayloadUUID": str(uuid.uuid5(base, "mail")).upper(),
        "PayloadDisplayName": f"Mail for {user}",
        "EmailAccountDescription": f"Corporate mail ({cfg.hostname})",
        "EmailAccountName": user,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": email or user,
        "IncomingMailServerHostName": cfg.hostname,
        "IncomingMailServerPortNumber": port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": user,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": cfg.hostname,
        "OutgoingMailServerPortNumber": SUBMISSION_PORT,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": user,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
    }
    trust = {
        "PayloadType": "com.apple.security.root",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.ca",
        "PayloadUUID": str(uuid.uuid5(base, "ca")).upper(),
        "PayloadDisplayName": "roamgate CA",
        "PayloadCertificateFileName": "roamgate-ca.cer",
        "PayloadContent": ca.public_bytes(serialization.Encoding.DER),
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": ident,
        "PayloadUUID": str(base).upper(),
        "PayloadDisplayName": f"roamgate mail ({cfg.hostname})",
        "PayloadDescription": "The gateway's CA and an IMAP account through its TLS door.",
        "PayloadContent": [trust, mail],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def render(cfg: Config, name: str, user: str, email: str | None) -> tuple[bytes, str] | None:
    """(body, content type) of a download by its file name, or None if there is none."""
    if name == "thunderbird.xml":
        text = thunderbird_direct(cfg, user)
        return (text.encode(), "application/xml") if text is not None else None
    if name == "roamgate.mobileconfig":
        data = apple_mobileconfig(cfg, user, email)
        return (data, "application/x-apple-aspen-config") if data is not None else None
    profile = connector_profile(cfg, user)
    if profile is None:
        return None
    renderers = {
        "ssh-config.txt": openssh_config,
        "roamgate-connect.yaml": profile_yaml,
        "thunderbird-connect.xml": thunderbird_autoconfig,
    }
    renderer = renderers.get(name)
    if renderer is None:
        return None
    kind = "application/xml" if name.endswith(".xml") else "text/plain"
    return renderer(profile).encode(), kind
