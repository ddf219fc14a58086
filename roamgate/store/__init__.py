"""Persistent state behind one async Store interface: a SQLite file or a PostgreSQL database."""

from __future__ import annotations

from pathlib import Path

from roamgate.store.base import DuplicateError, Store, StoreError
from roamgate.store.urls import is_postgres, url_problem

__all__ = ["DuplicateError", "Store", "StoreError", "open_store"]


async def open_store(
    url: str,
    *,
    create: bool = False,
    migrate: bool = True,
    password: str | None = None,
    pool_size: int = 10,
) -> Store:
    """Open the store a config names: a SQLite file path, or a postgresql:// URL.

    password is used for a PostgreSQL URL that carries none; create only concerns a SQLite
    file (a PostgreSQL database is made by its administrator).
    """
    problem = url_problem(url)
    if problem is not None:
        raise StoreError(f"store URL {problem}")
    store: Store
    if is_postgres(url):
        from roamgate.store.postgres import PostgresStore

        store = await PostgresStore.open(url, password=password, pool_size=pool_size)
    else:
        from roamgate.store.sqlite import SqliteStore

        store = await SqliteStore.open(Path(url), create=create)
    if migrate:
        try:
            await store.migrate()
        except BaseException:
            await store.close()
            raise
    return store
