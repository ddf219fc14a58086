"""`roamgate serve`: open the store, start every configured front door, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol

from roamgate import __version__
from roamgate.config import Config, Listener
from roamgate.runtime import Runtime, open_runtime

log = logging.getLogger("roamgate.serve")


class Door(Protocol):
    """A running front door."""

    name: str

    async def close(self) -> None: ...


DoorFactory = Callable[[Runtime, Listener], Awaitable[Door]]

# Filled in by the modules that implement each door; a configured door without a factory is
# reported and stays closed.
DOORS: dict[str, DoorFactory] = {}
DOOR_MODULES = ("roamgate.gateway.imap_door", "roamgate.gateway.ssh_door", "roamgate.web.app")


def load_doors() -> None:
    """Import every door module; each registers itself in DOORS (this avoids an import cycle)."""
    for module in DOOR_MODULES:
        importlib.import_module(module)


async def serve(cfg: Config, *, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    load_doors()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with open_runtime(cfg) as rt:
            doors: list[Door] = []
            try:
                for name in ("ssh", "imaps", "imap", "web"):
                    listener: Listener | None = getattr(cfg.listeners, name)
                    if listener is None or not listener.enabled:
                        continue
                    factory = DOORS.get(name)
                    if factory is None:
                        log.warning(
                            "listeners.%s: this version has no %s door; not listening", name, name
                        )
                        continue
                    door = await factory(rt, listener)
                    doors.append(door)
                    log.info("%s door listening on %s:%d", name, listener.host, listener.port)
                await rt.auditor.record(
                    "serve_start",
                    "ok",
                    actor="serve",
                    detail={"version": __version__, "doors": ",".join(d.name for d in doors)},
                )
                print(
                    f"roamgate {__version__} serving {cfg.hostname}: {len(doors)} door(s) open",
                    flush=True,
                )
                await stop.wait()
            finally:
                for door in reversed(doors):
                    await door.close()
                await rt.auditor.record("serve_stop", "ok", actor="serve")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
