"""Whether the doors' key files are usable: loaded as `serve` loads them, before it does.

`check-config` and `serve` run these so that a damaged key file is a config error naming its
key, not an internal error at start-up. The messages never quote the files' contents.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import asyncssh
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from roamgate.ssh import algorithms

__all__ = ["ssh_host_key_problem", "tls_pair_problems"]


def ssh_host_key_problem(path: Path) -> str | None:
    """What is wrong with one SSH host key file, or None."""
    try:
        keypairs = asyncssh.load_keypairs([str(path)])
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    except asyncssh.KeyImportError as exc:
        if "passphrase" in str(exc).lower():
            return "the SSH private key is encrypted; the gateway needs it without a passphrase"
        return "not a valid SSH private key"
    if not keypairs:
        return "not a valid SSH private key"
    allowed = {a.encode() for a in algorithms.SIGNATURE}
    for keypair in keypairs:
        if not allowed.intersection(keypair.host_key_algorithms):
            kind = keypair.algorithm.decode(errors="replace")
            return f"key type {kind} is not offered; use one of {', '.join(algorithms.SIGNATURE)}"
    return None


def tls_pair_problems(cert_file: Path, key_file: Path) -> list[tuple[str, str]]:
    """(key, message) for what is wrong with the TLS doors' certificate and key; empty if fine."""
    problems: list[tuple[str, str]] = []
    cert: x509.Certificate | None = None
    key: PrivateKeyTypes | None = None
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except OSError as exc:
        problems.append(("tls.cert_file", f"cannot read: {exc.strerror}"))
    except ValueError:
        problems.append(("tls.cert_file", "not a PEM certificate"))
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        problems.append(("tls.key_file", f"cannot read: {exc.strerror}"))
    except TypeError:
        problems.append(
            ("tls.key_file", "the private key is encrypted; the gateway needs it without one")
        )
    except (ValueError, UnsupportedAlgorithm):
        problems.append(("tls.key_file", "not a valid PEM private key"))
    if problems or cert is None or key is None:
        return problems
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return [("tls.key_file", "the certificate and key do not match")]
    # Last, the loader the doors use (it has its own limits, such as a key too small).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password, so OpenSSL never prompts on the terminal for one.
        ctx.load_cert_chain(str(cert_file), str(key_file), password=b"")
    except ssl.SSLError as exc:
        reason = exc.reason or "unknown reason"
        return [("tls.cert_file", f"TLS cannot use this certificate and key ({reason})")]
    return []
