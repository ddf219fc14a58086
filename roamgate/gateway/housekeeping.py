"""What `serve` does in the background: audit retention, watching the upstream, directory sync."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from roamgate.alerts import AlertSender
from roamgate.audit import rotate_and_prune
from roamgate.directory.client import DirectoryError
from roamgate.gateway.upstream import UpstreamError, UpstreamImap
from roamgate.runtime import Runtime
from roamgate.store.base import StoreError

log = logging.getLogger("roamgate.housekeeping")

DAY = 86400


class Housekeeping:
    """Periodic tasks of one serve process; settings are read from rt.config at each round,
    so a reload (SIGHUP) applies from the next one."""

    def __init__(self, rt: Runtime, alerts: AlertSender | None) -> None:
        self.rt = rt
        self.alerts = alerts
        self._tasks: list[asyncio.Task[None]] = []
        self.upstream_up: bool | None = None  # unknown until the first probe
        self.directory_error: str | None = None  # the last sync round's failure, if any

    def start(self) -> None:
        self._spawn(self._retention(), "audit-retention")
        if self.alerts is not None:
            self._spawn(self._watch_upstream(), "upstream-watch")
        if self.rt.directory is not None:
            self._spawn(self._directory_sync(), "directory-sync")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # -- retention
    async def _retention(self) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception:  # one bad round must not end retention for good
                log.exception("audit retention round failed")
            await asyncio.sleep(self.rt.config.audit.prune_interval_seconds)

    async def prune_once(self) -> int:
        """Drop store records and whole file segments older than retention; audit the counts."""
        cfg = self.rt.config.audit
        now = self.rt.clock()
        cutoff = now - cfg.retention_days * DAY
        try:
            removed = await self.rt.store.delete_audit_before(cutoff)
        except StoreError as exc:
            log.error("audit retention: store not pruned: %s", exc)
            removed = 0
        rotated = None
        deleted: tuple[str, ...] = ()
        file = self.rt.auditor.file
        if file is not None:
            done = await asyncio.to_thread(rotate_and_prune, file, cutoff, now)
            rotated = done.rotated.name if done.rotated is not None else None
            deleted = tuple(p.name for p in done.deleted)
        if removed or rotated or deleted:
            await self.rt.auditor.record(
                "audit_pruned",
                "ok",
                actor="serve",
                detail={
                    "records": removed,
                    "retention_days": cfg.retention_days,
                    "files_deleted": len(deleted),
                    "rotated_to": rotated,
                },
            )
        return removed

    # -- upstream watch
    async def _watch_upstream(self) -> None:
        while True:
            await self.probe_upstream()
            settings = self.rt.config.alerts
            await asyncio.sleep(settings.upstream_check_seconds if settings is not None else 30)

    async def probe_upstream(self) -> None:
        server = self.rt.config.upstream.imap
        problem: str | None = None
        try:
            conn = await UpstreamImap.connect(server)
        except UpstreamError as exc:
            problem = str(exc)
        else:
            await conn.close()
        up = problem is None
        if up == self.upstream_up:
            return
        was, self.upstream_up = self.upstream_up, up
        if was is None and up:
            return  # reachable at start: nothing to report
        target = f"{server.host}:{server.port}"
        if up:
            log.warning("upstream IMAP %s reachable again", target)
            await self.rt.auditor.record(
                "upstream_reachable", "ok", actor="serve", detail={"upstream": target}
            )
        else:
            log.error("upstream IMAP %s unreachable: %s", target, problem)
            await self.rt.auditor.record(
                "upstream_unreachable",
                "error",
                actor="serve",
                reason=(problem or "")[:200],
                detail={"upstream": target},
            )
        if self.alerts is not None:
            self.alerts.notify(
                "upstream_up" if up else "upstream_down",
                upstream=target,
                reason=None if up else (problem or "")[:200],
            )

    # -- directory sync
    async def _directory_sync(self) -> None:
        # Imported here: the directory's modules are only needed when ldap: is configured.
        from roamgate.directory.sync import sync_users

        assert self.rt.directory is not None
        directory = self.rt.directory
        while True:
            try:
                report = await sync_users(self.rt, directory, audit_unchanged=False)
            except DirectoryError as exc:
                await self._directory_failed(exc.cause, str(exc))
            except Exception as exc:  # one bad round must not end the sync for good
                log.exception("directory sync round failed")
                await self._directory_failed("error", type(exc).__name__)
            else:
                if self.directory_error is not None:
                    log.warning("directory sync works again")
                    self.directory_error = None
                for text in report.warnings:
                    log.warning("directory sync: %s", text)
                for name, reason in report.disabled.items():
                    log.warning("directory sync: %s disabled (%s)", name, reason)
            await asyncio.sleep(directory.settings.sync_interval_seconds)

    async def _directory_failed(self, cause: str, message: str) -> None:
        log.error("directory sync: nothing changed: %s", message)
        if self.directory_error == cause:
            return  # audited once per outage, not every round
        self.directory_error = cause
        await self.rt.auditor.record(
            "directory_sync", "error", actor="serve", reason=f"directory_{cause}"
        )
