"""The private CA, the TLS server certificate, SSH host keys and their fingerprints."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

import asyncssh
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# ECDSA P-256: every TLS 1.2 client supports it, and it is quick to make and to use.
CA_DAYS = 3650
# 397 days: the longest server certificate lifetime Apple and browsers accept.
SERVER_DAYS = 397


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA that signs only the gateway's own certificates (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "roamgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"roamgate CA for {name}"[:64]),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hostname: str,
    extra_names: list[str],
    crl_url: str | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for the gateway's name, localhost and any listen addresses.

    crl_url names where the CA's CRL is published (the web door's /crl.der), so a client or
    scanner that checks revocation finds it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in [hostname, *extra_names, "localhost", "127.0.0.1"]:
        if name in seen or not name:
            continue
        seen.add(name)
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if crl_url is not None:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def issue_client_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str, days: int = 365
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A device certificate the TLS doors accept as the device's identity (clientAuth only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def load_ca(cert_file: Path, key_file: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The private CA made by init (its key is needed to issue device certificates)."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file}: not an EC private key")
    return key, cert


def cert_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as colon-separated hex, the form openssl and browsers show."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def write_private(path: Path, data: bytes) -> None:
    """Write a private file created 0600 (never briefly readable by others)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ssh_host_keys(folder: Path) -> list[tuple[Path, str]]:
    """Ed25519 and RSA-3072 host keys (ssh-audit passes both; no NIST curves).

    Returns each key file with its SHA256 fingerprint as `ssh-keygen -l` prints it.
    """
    made = []
    for algorithm, name, key_size in (
        ("ssh-ed25519", "ssh_host_ed25519_key", None),
        ("ssh-rsa", "ssh_host_rsa_key", 3072),
    ):
        if key_size is None:
            key = asyncssh.generate_private_key(algorithm)
        else:
            key = asyncssh.generate_private_key(algorithm, key_size=key_size)
        path = folder / name
        write_private(path, key.export_private_key("openssh"))
        pub = folder / f"{name}.pub"
        pub.unlink(missing_ok=True)
        pub.write_bytes(key.export_public_key("openssh"))
        made.append((path, str(key.get_fingerprint("sha256"))))
    return made


def ssh_fingerprint(path: Path) -> str:
    return str(asyncssh.read_private_key(str(path)).get_fingerprint("sha256"))
