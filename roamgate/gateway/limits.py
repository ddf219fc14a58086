"""Caps on connections, per source and in total, so one client cannot take every slot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from roamgate.auth.lockout import source_key


class ConnectionLimiter:
    """Counts open connections; a connection over either cap is refused at accept time."""

    def __init__(self, total: int, per_source: int) -> None:
        self.total = total
        self.per_source = per_source
        self._open: Counter[str] = Counter()
        self._count = 0

    @property
    def open_connections(self) -> int:
        return self._count

    def admit(self, source: str) -> str | None:
        """None if the connection may proceed, else the reason (for the audit trail)."""
        if self._count >= self.total:
            return "total_connection_limit"
        if self._open[source_key(source)] >= self.per_source:
            return "source_connection_limit"
        return None

    @contextmanager
    def hold(self, source: str) -> Iterator[None]:
        key = source_key(source)
        self._open[key] += 1
        self._count += 1
        try:
            yield
        finally:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]
            self._count -= 1
