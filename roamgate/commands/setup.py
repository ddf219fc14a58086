"""`roamgate init` and `roamgate check-config`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from roamgate.commands.common import CliError
from roamgate.config import Config, load_config
from roamgate.store import open_store
from roamgate.store.sqlite import load_migrations
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
        for name in ("ssh", "imaps", "imap", "web")
        if (listener := getattr(cfg.listeners, name)) is not None and listener.enabled
    ]
    # The store is reached before anything is declared OK: serve would fail the same way.
    store_line = asyncio.run(_store_status(cfg))
    print(f"{args.config}: OK")
    print(f"  doors: {', '.join(doors) or 'none'}")
    up = cfg.upstream.imap
    print(f"  upstream IMAP: {up.host}:{up.port} ({up.tls})")
    print(f"  password verifier: {cfg.auth.password_verifier}")
    print(f"  store: {store_line}")
    return 0


async def _store_status(cfg: Config) -> str:
    """One line on the store: reachable, and how far its schema is migrated."""
    url = cfg.store_url()
    # migrate=False: checking changes nothing; serve applies pending migrations.
    store = await open_store(url, migrate=False, password=cfg.store_password(), pool_size=1)
    try:
        version = await store.schema_version()
    finally:
        await store.close()
    kind = "PostgreSQL" if is_postgres(url) else "SQLite"
    known = max((v for v, _n, _s in load_migrations("postgres" if is_postgres(url) else "sqlite")))
    if version > known:
        raise CliError(
            f"store {redact(url)} has schema version {version}, newer than this roamgate"
            f" ({known}): upgrade roamgate"
        )
    if version < known:
        return f"{redact(url)} ({kind}, schema {version}; serve will migrate it to {known})"
    return f"{redact(url)} ({kind}, schema {version})"
