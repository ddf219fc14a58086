"""Device certificates: issued from the private CA as PKCS#12, revoked onto a CRL at once."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from roamgate import pki
from roamgate.config import Config
from roamgate.store.base import DeviceRecord, Store

# Letters and digits that survive being read aloud or copied from a screen (no 0/O, 1/l/I).
_PASSPHRASE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # noqa: S105 (an alphabet)
CRL_DAYS = 7


class DeviceError(Exception):
    """A device certificate cannot be made; the message is fit for the user."""


@dataclass(frozen=True)
class IssuedDevice:
    """What is shown once: the PKCS#12 file and the passphrase that opens it."""

    record: DeviceRecord
    p12: bytes
    passphrase: str


def check_device_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 64 or not all(c.isalnum() or c in " ._-" for c in name):
        raise DeviceError("a device name is 1-64 letters, digits, spaces, '.', '_' or '-'")
    return name


def new_passphrase() -> str:
    """Five groups of five: about 122 bits, typed once into the phone or the key store."""
    chars = "".join(secrets.choice(_PASSPHRASE_ALPHABET) for _ in range(25))
    return "-".join(chars[i : i + 5] for i in range(0, 25, 5))


def crl_path(cfg: Config) -> Path:
    p = cfg.web.crl_file.expanduser()
    return p if p.is_absolute() else cfg.base_dir / p


async def issue_device(
    cfg: Config, store: Store, user_name: str, name: str, now: float
) -> IssuedDevice:
    """A client certificate for one of the user's devices, recorded in the store."""
    name = check_device_name(name)
    if cfg.tls.ca_key_file is None:
        raise DeviceError("tls.ca_key_file is not configured: no device certificates")
    ca_key, ca_cert = pki.load_ca(cfg.tls.ca_file, cfg.tls.ca_key_file)
    key, cert = pki.issue_client_cert(
        ca_key, ca_cert, f"{user_name} {name}", days=cfg.web.device_cert_days
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    record = DeviceRecord(
        id="dev_" + secrets.token_hex(6),
        user_name=user_name,
        name=name,
        serial=format(cert.serial_number, "x"),
        # The form the TLS doors name a device by (roamgate.gateway.tls).
        fingerprint=hashlib.sha256(der).hexdigest(),
        created_at=now,
        expires_at=cert.not_valid_after_utc.timestamp(),
    )
    await store.add_device(record)
    passphrase = new_passphrase()
    # PBES2 with AES-256 and an HMAC-SHA256 MAC: what current iOS, Android, macOS and
    # OpenSSL 3 open; the legacy RC2/3DES form is not offered.
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(200_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase.encode())
    )
    p12 = pkcs12.serialize_key_and_certificates(
        f"roamgate {user_name} {name}".encode(), key, cert, [ca_cert], encryption
    )
    return IssuedDevice(record, p12, passphrase)


async def build_crl(cfg: Config, store: Store, now: float) -> bytes:
    """The CRL (PEM) listing every revoked device certificate, signed by the private CA."""
    if cfg.tls.ca_key_file is None:
        raise DeviceError("tls.ca_key_file is not configured: cannot sign a CRL")
    ca_key, ca_cert = pki.load_ca(cfg.tls.ca_file, cfg.tls.ca_key_file)
    when = dt.datetime.fromtimestamp(int(now), dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(when)
        .next_update(when + dt.timedelta(days=CRL_DAYS))
    )
    for device in await store.list_devices(include_revoked=True):
        if device.revoked_at is None:
            continue
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(device.serial, 16))
            .revocation_date(dt.datetime.fromtimestamp(int(device.revoked_at), dt.UTC))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


async def publish_crl(cfg: Config, store: Store, now: float) -> Path | None:
    """Write the CRL file (atomically: a reader never sees half of it); None without a CA key."""
    if cfg.tls.ca_key_file is None:
        return None
    path = crl_path(cfg)
    data = await build_crl(cfg, store, now)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
