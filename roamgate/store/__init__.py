"""Persistent state behind one async Store interface (SQLite by default)."""

from __future__ import annotations

from pathlib import Path

from roamgate.store.base import DuplicateError, Store, StoreError

__all__ = ["DuplicateError", "Store", "StoreError", "open_store"]


async def open_store(url: str, *, create: bool = False, migrate: bool = True) -> Store:
    """Open the store a config names: a SQLite file path, or (later) a postgresql:// URL."""
    if url.startswith(("postgresql://", "postgres://")):
        raise StoreError("the PostgreSQL backend is not part of this version; use a SQLite path")
    if "://" in url:
        raise StoreError(f"unsupported store URL scheme in {url.split('://', 1)[0]!r}")
    from roamgate.store.sqlite import SqliteStore

    store = await SqliteStore.open(Path(url), create=create)
    if migrate:
        try:
            await store.migrate()
        except BaseException:
            await store.close()
            raise
    return store
