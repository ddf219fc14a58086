"""The directory seen from the event loop: blocking calls in a bounded pool, decisions, a cache.

python-ldap blocks, so every operation runs in a daemon thread of this object's own (at most
ldap.max_connections at work at a time, so a hung directory cannot take the default executor's
threads from scrypt or imaplib) and is abandoned after a bounded wait. Daemon threads, not a
ThreadPoolExecutor: a thread stuck in libldap must never keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from roamgate.config import LdapSettings
from roamgate.directory.client import (
    DirectoryConnection,
    DirectoryEntry,
    DirectoryError,
    normalize_dn,
)

log = logging.getLogger("roamgate.directory")

T = TypeVar("T")

CallbackPolicyName = str

# A sync's budget in timeout_seconds: one per page or group search, with room (10 s -> 10 min).
SYNC_STEPS = 60


@dataclass(frozen=True)
class LoginCheck:
    """The directory's word on one login: accepted, or the reason it was not."""

    accepted: bool
    reason: str | None  # bad_password, not_in_directory, disabled_in_directory, not_in_group


class Directory:
    """One configured directory; shared by the verifier, sync, the CLI and doctor."""

    def __init__(
        self, settings: LdapSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._password = settings.bind_password.text().rstrip("\r\n")
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        self._closed = False
        self._allowed = [normalize_dn(g) for g in settings.groups]
        self._profiles = [(normalize_dn(g), p) for g, p in settings.profiles.items()]
        self._policies = [(normalize_dn(g), p) for g, p in settings.callback_policies.items()]
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._clock = clock

    def close(self) -> None:
        # Threads blocked on a dead directory end at their own timeouts (or with the process).
        self._closed = True

    async def _run(self, fn: Callable[[DirectoryConnection], T], *, steps: int = 4) -> T:
        if self._closed:
            raise DirectoryError("closed", "the directory connection is closed")
        loop = asyncio.get_running_loop()
        # Connect, StartTLS, two binds and a few searches each have timeout_seconds; past
        # that the answer is abandoned (the thread ends at its own timeout). A sync reads
        # every page of the population and its groups: it gets more steps.
        limit = self.settings.timeout_seconds * steps
        done: asyncio.Future[T] = loop.create_future()

        def deliver(result: T | None, error: BaseException | None) -> None:
            if done.done():
                return  # abandoned: the login has failed closed already
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)  # type: ignore[arg-type]

        def report(result: T | None, error: BaseException | None) -> None:
            # RuntimeError: the loop has closed meanwhile; nobody waits for this answer.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, result, error)

        def work() -> None:
            if not self._slots.acquire(timeout=limit):
                report(None, DirectoryError("busy", "every directory connection is busy"))
                return
            try:
                with DirectoryConnection(self.settings, self._password) as conn:
                    result = fn(conn)
            except Exception as exc:  # noqa: BLE001 (handed to the waiting coroutine)
                report(None, exc)
                return
            finally:
                self._slots.release()
            report(result, None)

        threading.Thread(target=work, name="ldap", daemon=True).start()
        try:
            return await asyncio.wait_for(done, limit)
        except TimeoutError:
            raise DirectoryError("timeout", f"no answer within {limit} s") from None

    # -- decisions
    def allowed(self, entry: DirectoryEntry) -> bool:
        return any(g in entry.groups for g in self._allowed)

    def profile_for(self, entry: DirectoryEntry) -> str | None:
        return next((p for g, p in self._profiles if g in entry.groups), None)

    def callback_policy_for(self, entry: DirectoryEntry) -> CallbackPolicyName | None:
        return next((p for g, p in self._policies if g in entry.groups), None)

    # -- operations
    async def check_login(self, name: str, password: str) -> LoginCheck:
        """Find the user's entry, decide group and state, bind as the entry with the password.

        Raises DirectoryError when the directory cannot answer: the caller fails closed.
        """
        if not password:
            return LoginCheck(False, "bad_password")  # never an unauthenticated bind
        cached = self._cached_groups(name)

        def work(conn: DirectoryConnection) -> tuple[LoginCheck, frozenset[str] | None]:
            entry = conn.find_user(name, resolve_groups=cached is None)
            if entry is None:
                return LoginCheck(False, "not_in_directory"), None
            groups = cached if cached is not None else entry.groups
            # The password first: a wrong one is a bad password, whoever the entry is.
            if not conn.check_password(entry.dn, password):
                return LoginCheck(False, "bad_password"), groups
            if entry.disabled:
                return LoginCheck(False, "disabled_in_directory"), groups
            if not any(g in groups for g in self._allowed):
                return LoginCheck(False, "not_in_group"), groups
            return LoginCheck(True, None), groups

        result, groups = await self._run(work)
        if cached is None and groups is not None:
            self._remember(name, groups)
        return result

    def _cached_groups(self, name: str) -> frozenset[str] | None:
        ttl = self.settings.group_cache_seconds
        if ttl <= 0:
            return None
        hit = self._cache.get(name)
        if hit is None or hit[0] <= self._clock():
            self._cache.pop(name, None)
            return None
        return hit[1]

    def _remember(self, name: str, groups: frozenset[str]) -> None:
        ttl = self.settings.group_cache_seconds
        if ttl <= 0:
            return
        now = self._clock()
        if len(self._cache) >= 10000:  # bounded: drop what has run out, else everything
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= 10000:
                self._cache.clear()
        self._cache[name] = (now + ttl, groups)

    async def lookup(self, name: str) -> DirectoryEntry | None:
        return await self._run(lambda conn: conn.find_user(name))

    async def all_users(self) -> list[DirectoryEntry]:
        return await self._run(lambda conn: conn.all_users(), steps=SYNC_STEPS)

    async def probe(self) -> list[str]:
        """Connect (TLS verified), bind as the service account, read user_base; missing groups."""
        return await self._run(lambda conn: conn.probe())
