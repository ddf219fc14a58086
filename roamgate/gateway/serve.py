"""`roamgate serve`: open the store, start every configured front door, stop cleanly on a signal.

Signals:
- SIGTERM drains: the listeners close at once (new connections are refused), IMAP clients get
  `* BYE` between commands, transfers in flight may finish until `drain_seconds`, SSH
  connections are closed with a disconnect message once their forwards are done; then exit.
  A second SIGTERM (or a SIGINT) during the drain ends it at once.
- SIGINT stops at once (the operator at a terminal pressing Ctrl-C wants the prompt back):
  sessions are cancelled, each still told BYE where the protocol allows.
- SIGHUP reloads the TLS certificate and the config keys that are safe to change
  (roamgate.gateway.reload); a broken file is reported and the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from roamgate import __version__
from roamgate.alerts import AlertSender
from roamgate.config import LISTENER_NAMES, Config, ConfigError, Listener
from roamgate.gateway import tls_buffers
from roamgate.gateway.housekeeping import Housekeeping
from roamgate.gateway.reload import read_new_config
from roamgate.login.password_cache import PasswordCache
from roamgate.runtime import Runtime, SetupError, open_runtime
from roamgate.store.base import JsonValue

_BIND_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)

log = logging.getLogger("roamgate.serve")


class Door(Protocol):
    """A running front door. It may also offer `drain(deadline)` and `reload(rt)`."""

    name: str

    async def close(self) -> None: ...


DoorFactory = Callable[[Runtime, Listener], Awaitable[Door]]

# Filled in by the modules that implement each door; a configured door without a factory is
# reported and stays closed.
DOORS: dict[str, DoorFactory] = {}
DOOR_MODULES = (
    "roamgate.gateway.imap_door",
    "roamgate.gateway.ssh_door",
    "roamgate.web.app",
    "roamgate.gateway.submission_door",
)


def load_doors() -> None:
    """Import every door module; each registers itself in DOORS (this avoids an import cycle)."""
    for module in DOOR_MODULES:
        importlib.import_module(module)


class _Signals:
    """What the signals asked for; the handlers only set flags (they run in the loop)."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.hurry = asyncio.Event()  # end a drain now
        self.reload = asyncio.Event()
        self.how: str | None = None

    def term(self) -> None:
        if self.stop.is_set():
            self.hurry.set()
        else:
            self.how = "SIGTERM"
            self.stop.set()

    def interrupt(self) -> None:
        self.how = self.how or "SIGINT"
        self.hurry.set()
        self.stop.set()

    def hangup(self) -> None:
        self.reload.set()


async def serve(cfg: Config, *, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    tls_buffers.install()
    sigs = _Signals(stop)
    load_doors()
    loop = asyncio.get_running_loop()
    handlers = {
        signal.SIGTERM: sigs.term,
        signal.SIGINT: sigs.interrupt,
        signal.SIGHUP: sigs.hangup,
    }
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
    try:
        async with open_runtime(cfg) as rt:
            doors: list[Door] = []
            alerts: AlertSender | None = None
            if cfg.alerts is not None:
                alerts = AlertSender(cfg.alerts, cfg.hostname, rt.clock)
                alerts.start()
                rt.auditor.listeners.append(alerts.on_audit)
            housekeeping = Housekeeping(rt, alerts)
            reloader = loop.create_task(_reload_on_hup(rt, sigs, doors, alerts), name="reload")
            stop_detail: dict[str, JsonValue] = {}
            try:
                for name in LISTENER_NAMES:
                    listener: Listener | None = getattr(cfg.listeners, name)
                    if listener is None or not listener.enabled:
                        continue
                    factory = DOORS.get(name)
                    if factory is None:
                        log.warning(
                            "listeners.%s: this version has no %s door; not listening", name, name
                        )
                        continue
                    try:
                        door = await factory(rt, listener)
                    except OSError as exc:
                        # Port taken, address not on this host, a low port without the
                        # capability: say which listener, no traceback. (A certificate or
                        # file problem is no bind failure: it keeps its own message.)
                        if exc.errno not in _BIND_ERRNOS or isinstance(exc, ssl.SSLError):
                            raise
                        raise SetupError(
                            f"listeners.{name}: cannot listen on {listener.host}:{listener.port}:"
                            f" {exc.strerror or exc}"
                        ) from None
                    doors.append(door)
                    log.info("%s door listening on %s:%d", name, listener.host, listener.port)
                callback = cfg.callback
                if rt.callbacks is not None and callback is not None and callback.http is not None:
                    from roamgate.callback.http_listener import open_callback_http

                    doors.append(await open_callback_http(rt.callbacks, callback.http))
                    log.info(
                        "callback http listening on %s:%d", callback.http.host, callback.http.port
                    )
                await rt.auditor.record(
                    "serve_start",
                    "ok",
                    actor="serve",
                    detail={"version": __version__, "doors": ",".join(d.name for d in doors)},
                )
                housekeeping.start()
                print(
                    f"roamgate {__version__} serving {cfg.hostname}: {len(doors)} door(s) open",
                    flush=True,
                )
                await stop.wait()
                stop_detail["signal"] = sigs.how
                if sigs.how == "SIGTERM":
                    stop_detail.update(await _drain(rt, doors, sigs))
            finally:
                reloader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reloader
                await housekeeping.close()
                for door in reversed(doors):
                    await door.close()
                if alerts is not None:
                    await alerts.close()
                    stop_detail["alerts_sent"] = alerts.sent
                    stop_detail["alerts_dropped"] = alerts.dropped
                await rt.auditor.record("serve_stop", "ok", actor="serve", detail=stop_detail)
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)


async def _drain(rt: Runtime, doors: list[Door], sigs: _Signals) -> dict[str, JsonValue]:
    """SIGTERM: every door drains at once; a second signal cuts it short."""
    seconds = rt.config.drain_seconds
    began = time.monotonic()
    deadline = began + seconds
    log.info("SIGTERM: draining for at most %d s", seconds)
    drains: list[asyncio.Future[Any]] = []
    for door in doors:
        drain = getattr(door, "drain", None)
        if drain is not None:
            drains.append(asyncio.ensure_future(drain(deadline)))
    hurry = asyncio.ensure_future(sigs.hurry.wait())
    try:
        # Each door keeps to the deadline itself; the margin only guards against a stuck one.
        give_up = deadline + 10
        pending = set(drains)
        while pending and not hurry.done() and time.monotonic() < give_up:
            done, _ = await asyncio.wait(
                {*pending, hurry},
                timeout=give_up - time.monotonic(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            pending -= done
    finally:
        hurry.cancel()
    totals: dict[str, int] = {}
    for door in doors:
        counts = getattr(door, "drain_counts", None)
        if counts is not None:
            for key, value in vars(counts).items():
                totals[key] = totals.get(key, 0) + int(value)
        for key in ("ssh_closed", "ssh_cut"):
            if hasattr(door, key):
                totals[key] = totals.get(key, 0) + int(getattr(door, key))
        inner = getattr(door, "imap", None)  # the SSH door's tunnelled IMAP sessions
        inner_counts = getattr(inner, "drain_counts", None)
        if inner_counts is not None:
            for key, value in vars(inner_counts).items():
                totals[key] = totals.get(key, 0) + int(value)
    for d in drains:
        d.cancel()
    detail: dict[str, JsonValue] = {
        "drain": True,
        "drain_seconds": round(time.monotonic() - began, 3),
        "drain_cut_short": sigs.hurry.is_set(),
    }
    detail.update(totals)
    log.info("drain finished: %s", ", ".join(f"{k}={v}" for k, v in detail.items()))
    return detail


async def _reload_on_hup(
    rt: Runtime, sigs: _Signals, doors: list[Door], alerts: AlertSender | None
) -> None:
    while True:
        await sigs.reload.wait()
        sigs.reload.clear()
        try:
            await reload_config(rt, doors, alerts)
        except Exception:  # a failed reload must not stop the gateway
            log.exception("reload failed; the running config stays")


async def reload_config(rt: Runtime, doors: list[Door], alerts: AlertSender | None) -> bool:
    """Apply a SIGHUP; False (and the running config untouched) when the file is broken."""
    old = rt.config
    try:
        reloaded = await asyncio.to_thread(read_new_config, old)
    except ConfigError as exc:
        for line in exc.lines():
            log.error("SIGHUP: config not reloaded: %s", line)
        await rt.auditor.record(
            "config_reload",
            "fail",
            actor="serve",
            reason=exc.lines()[0][:300] if exc.lines() else "invalid config",
            detail={"problems": len(exc.issues), "file": str(old.path)},
        )
        return False
    cfg = reloaded.config
    rt.config = cfg
    _apply_logging(cfg.logging.level)
    rt.throttle.apply(cfg.auth.lockout)
    rt.second_factor.settings = cfg.auth.otp
    rt.authenticator.travel_window_seconds = cfg.auth.travel_window_seconds
    if isinstance(rt.verifier, PasswordCache):
        rt.verifier.apply(cfg.auth.password_cache_seconds, cfg.auth.password_cache_size)
    if alerts is not None and cfg.alerts is not None:
        alerts.settings = cfg.alerts
    for door in doors:
        reload_door = getattr(door, "reload", None)
        if reload_door is not None:
            reload_door(rt)
    for key in reloaded.restart_needed:
        log.warning("SIGHUP: %s changed; it takes effect at the next restart", key)
    log.info("SIGHUP: config reloaded from %s", old.path)
    await rt.auditor.record(
        "config_reload",
        "ok",
        actor="serve",
        detail={
            "file": str(old.path),
            "restart_needed": ",".join(reloaded.restart_needed) or None,
        },
    )
    return True


def _apply_logging(level: str) -> None:
    logging.getLogger("roamgate").setLevel(level.upper())
    logging.getLogger("asyncssh").setLevel("DEBUG" if level == "debug" else "WARNING")
