"""`roamgate init` and `roamgate check-config`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from roamgate.commands.common import CliError
from roamgate.config import LISTENER_NAMES, load_config
from roamgate.store.urls import is_postgres, redact


def host_port(text: str) -> tuple[str, int]:
    """HOST:PORT, with [v6]:PORT for IPv6 literals."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def init(args: argparse.Namespace) -> int:
    # Imported here: key generation pulls in asyncssh, which no other command needs.
    from roamgate.init_dir import InitError, InitOptions, init_directory

    options = InitOptions(
        directory=Path(args.dir),
        upstream_imap=args.upstream_imap,
        upstream_smtp=args.upstream_smtp,
        upstream_tls=args.upstream_tls,
        upstream_ca=Path(args.upstream_ca).absolute() if args.upstream_ca else None,
        hostname=args.hostname,
        listen_host=args.listen_host,
        ssh_port=args.ssh_port,
        imaps_port=args.imaps_port,
        imap_port=args.imap_port,
        web_port=args.web_port,
        submission_port=args.submission_port,
        submission_starttls_port=args.submission_starttls_port,
        verifier=args.verifier,
        force=args.force,
        store=args.store,
    )
    if options.upstream_ca is not None and not options.upstream_ca.is_file():
        raise CliError(f"--upstream-ca: file not found: {options.upstream_ca}")
    try:
        report = asyncio.run(init_directory(options))
    except InitError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {report.config} and {len(report.created) - 1} more files in {options.directory}")
    print(f"CA certificate: {options.directory / 'tls' / 'ca.pem'}")
    print(f"CA fingerprint (SHA-256): {report.ca_fingerprint}")
    print("SSH host key fingerprints:")
    for path, fingerprint in report.ssh_fingerprints:
        print(f"  {fingerprint}  {path.name}")
    print("next:")
    print(f"  roamgate check-config -c {report.config}")
    print(f"  roamgate user add NAME -c {report.config}")
    print(f"  roamgate serve -c {report.config}")
    return 0


def check_config(args: argparse.Namespace) -> int:
    # ConfigError is reported by the CLI's error boundary.
    cfg = load_config(Path(args.config), check_key_files=True)
    doors = [
        f"{name} {listener.host}:{listener.port}"
        for name in LISTENER_NAMES
        if (listener := getattr(cfg.listeners, name)) is not None and listener.enabled
    ]
    print(f"{args.config}: OK")
    print(f"  doors: {', '.join(doors) or 'none'}")
    up = cfg.upstream.imap
    print(f"  upstream IMAP: {up.host}:{up.port} ({up.tls})")
    # check-config works offline (it checks the file, as on a build host); `roamgate doctor`
    # reaches the store, and serve and every other command stop with one line if they cannot.
    url = cfg.store_url()
    kind = "PostgreSQL" if is_postgres(url) else "SQLite"
    print(f"  password verifier: {cfg.auth.password_verifier}; store: {redact(url)} ({kind})")
    return 0
