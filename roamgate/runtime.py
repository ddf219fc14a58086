"""Wires one config into the running parts (store, key, auditor, login) for serve and the CLI."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from roamgate.audit import Auditor
from roamgate.callback.service import CallbackService
from roamgate.config import Config
from roamgate.directory.service import Directory
from roamgate.gateway.submission_spool import DiskBudget
from roamgate.login.authenticator import Authenticator
from roamgate.login.password_cache import PasswordCache, cache_passwords
from roamgate.login.second_factor import SecondFactor
from roamgate.login.throttle import Throttle
from roamgate.login.verifiers import PasswordVerifier, make_verifier
from roamgate.metrics import Metrics
from roamgate.secretbox import SecretBox, SecretBoxError
from roamgate.store import Store, open_store


class SetupError(Exception):
    """The config is valid but something it names cannot be used (key file, database)."""


@dataclass
class Runtime:
    config: Config
    store: Store
    box: SecretBox
    auditor: Auditor
    second_factor: SecondFactor
    throttle: Throttle
    verifier: PasswordVerifier
    authenticator: Authenticator
    clock: Callable[[], float]
    callbacks: CallbackService | None = None
    # This process's Prometheus metrics (a registry per runtime, so runtimes never collide).
    metrics: Metrics = field(default_factory=Metrics)
    directory: Directory | None = None  # the corporate directory, when ldap: is configured
    # Messages each user has begun (MAIL FROM accepted) on this node's submission doors and
    # not yet finished: the hourly limit counts them, so parallel connections cannot race it.
    submissions_in_flight: dict[str, int] = field(default_factory=dict)
    # The disk every submission spool of this node holds (submission.spool_max_bytes).
    spool_disk: DiskBudget = field(default_factory=DiskBudget)


def load_secret_box(cfg: Config) -> SecretBox:
    secret = cfg.secrets.key
    if secret.origin.startswith("file "):
        path = Path(secret.origin.removeprefix("file "))
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SetupError(
                f"secret key file {path} is readable by group or others (mode {mode:04o});"
                f" run: chmod 600 {path}"
            )
    try:
        return SecretBox.from_text(secret.value)
    except SecretBoxError as exc:
        raise SetupError(f"secrets.key ({secret.origin}): {exc}") from None


@asynccontextmanager
async def open_runtime(
    cfg: Config, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[Runtime]:
    box = load_secret_box(cfg)
    store = await open_store(
        cfg.store_url(), password=cfg.store_password(), pool_size=cfg.store.pool_size
    )
    directory = Directory(cfg.ldap) if cfg.ldap is not None else None
    try:
        auditor = Auditor(store, cfg.audit.file, clock)
        second = SecondFactor(store, box, cfg.auth.otp, clock)
        throttle = Throttle(store, auditor, cfg.auth.lockout, clock)
        verifier = cache_passwords(
            make_verifier(cfg, directory),
            seconds=cfg.auth.password_cache_seconds,
            size=cfg.auth.password_cache_size,
        )
        if isinstance(verifier, PasswordCache):
            throttle.user_failure_listeners.append(verifier.forget)
        authenticator = Authenticator(
            store,
            verifier,
            second,
            throttle,
            auditor,
            clock,
            travel_window_seconds=cfg.auth.travel_window_seconds,
        )
        callbacks = None
        if cfg.callback is not None:
            callbacks = CallbackService(
                cfg.callback,
                store,
                box,
                auditor,
                node=cfg.hostname,
                verifier=verifier,
                second=second,
                throttle=throttle,
                clock=clock,
            )
            authenticator.holds.append(callbacks.hold)
        metrics = Metrics()
        auditor.listeners.append(metrics.observe)
        yield Runtime(
            cfg,
            store,
            box,
            auditor,
            second,
            throttle,
            verifier,
            authenticator,
            clock,
            callbacks,
            metrics,
            directory,
        )
    finally:
        if directory is not None:
            directory.close()
        await store.close()
