"""`roamgate user sync` and `roamgate user directory USER`: the corporate directory (LDAP)."""

from __future__ import annotations

import argparse
import hashlib

from cryptography import x509

from roamgate.commands.common import CliError, fmt_time, print_json
from roamgate.directory.client import DirectoryEntry, DirectoryError
from roamgate.directory.service import Directory
from roamgate.directory.sync import sync_users
from roamgate.runtime import Runtime


def _directory(rt: Runtime) -> Directory:
    if rt.directory is None:
        raise CliError("no directory is configured (add an ldap: section to the config)")
    return rt.directory


async def sync(rt: Runtime, args: argparse.Namespace) -> int:
    try:
        report = await sync_users(rt, _directory(rt), force=args.force)
    except DirectoryError as exc:
        raise CliError(f"directory not reached, nothing was changed: {exc}") from None
    if args.json:
        print_json(
            {
                "members": report.members,
                "created": report.created,
                "enabled": report.enabled,
                "disabled": report.disabled,
                "updated": report.updated,
                "skipped": report.skipped,
                "warnings": report.warnings,
            }
        )
        return 0
    print(f"directory: {report.members} members of the gateway's groups")
    for name in report.created:
        print(f"created  {name}")
    for name in report.enabled:
        print(f"enabled  {name}")
    for name, reason in report.disabled.items():
        print(f"disabled {name} ({reason})")
    for name, what in report.updated.items():
        print(f"updated  {name} ({', '.join(what)})")
    for name, why in report.skipped.items():
        print(f"skipped  {name} ({why})")
    for text in report.warnings:
        print(f"warning: {text}")
    return 0


def certificate_summary(der: bytes | None) -> dict[str, object] | None:
    """Subject, issuer, validity and fingerprint of an S/MIME certificate, or None."""
    if der is None:
        return None
    fingerprint = "SHA256:" + hashlib.sha256(der).hexdigest()
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return {"fingerprint": fingerprint, "error": "not a DER certificate"}
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_after": fmt_time(cert.not_valid_after_utc.timestamp()),
        "fingerprint": fingerprint,
    }


def entry_summary(directory: Directory, entry: DirectoryEntry) -> dict[str, object]:
    return {
        "dn": entry.dn,
        "allowed": directory.allowed(entry) and not entry.disabled,
        "disabled": entry.disabled,
        "groups": sorted(entry.groups),
        "mail": entry.mail,
        "callback_number": entry.callback_number,
        "profile": directory.profile_for(entry),
        "callback_policy": directory.callback_policy_for(entry),
        "certificate": certificate_summary(entry.certificate),
    }


async def show(rt: Runtime, args: argparse.Namespace) -> int:
    directory = _directory(rt)
    try:
        entry = await directory.lookup(args.user)
    except DirectoryError as exc:
        raise CliError(f"directory not reached: {exc}") from None
    if entry is None:
        raise CliError(f"the directory has no entry for {args.user}")
    summary = entry_summary(directory, entry)
    if args.json:
        print_json({"user": args.user, **summary})
        return 0
    print(f"user {args.user}: {entry.dn}")
    state = "disabled in the directory" if entry.disabled else "enabled"
    access = "may use the gateway" if summary["allowed"] else "may NOT use the gateway"
    print(f"  {state}; {access}")
    print(f"  groups: {', '.join(sorted(entry.groups)) or '-'}")
    print(f"  mail: {entry.mail or '-'}   callback number: {entry.callback_number or '-'}")
    cert = summary["certificate"]
    if isinstance(cert, dict):
        if "error" in cert:
            print(f"  S/MIME certificate: {cert['error']} ({cert['fingerprint']})")
        else:
            print(f"  S/MIME certificate: {cert['subject']}, issued by {cert['issuer']},")
            print(f"    valid until {cert['not_after']}, {cert['fingerprint']}")
    else:
        print("  S/MIME certificate: -")
    return 0
