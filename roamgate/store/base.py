"""The Store contract: records and the async interface every backend implements.

The contract suite in tests/store/ runs against each backend. Operations that decide security
(single use of a code, failure counting) are single SQL statements whose outcome the backend
reports, so they stay correct when several gateway nodes share one database.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

TokenKind = Literal["totp", "hotp"]
ThrottleScope = Literal["user", "source"]
JsonValue = str | int | float | bool | None


class StoreError(Exception):
    """The store cannot do what was asked; the message is fit for an operator."""


class DuplicateError(StoreError):
    """A record with this name or id exists already."""


@dataclass(frozen=True)
class UserRecord:
    id: int
    name: str
    email: str | None
    enabled: bool
    profile: str
    password_hash: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class TokenRecord:
    """An OTP token; the secret is sealed with the gateway key and bound to the token id."""

    id: str
    user_id: int
    kind: TokenKind
    sealed_secret: bytes = field(repr=False)
    digits: int
    period: int
    algorithm: str
    state: int | None
    label: str
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class ThrottleRecord:
    scope: ThrottleScope
    key: str
    failures: int
    last_failure_at: float | None
    locked_until: float | None
    hard_locked: bool


@dataclass(frozen=True)
class CallbackRecord:
    id: int
    user_id: int
    channel: str
    address: str
    created_at: float
    verified_at: float | None


CallbackPolicy = Literal["never", "always", "new_source"]


@dataclass(frozen=True)
class PendingCallback:
    """The one outstanding callback of a user (see Store.claim_pending_callback)."""

    id: str
    user_id: int
    channel: str
    node: str
    token_hash: bytes | None = field(repr=False)
    status: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class SshKeyRecord:
    """A public key that may stand in for the user's password at the SSH door (not the code)."""

    id: int
    user_id: int
    fingerprint: str
    public_key: str
    comment: str
    created_at: float


@dataclass(frozen=True)
class SessionRecord:
    id: str
    user_name: str
    door: str
    source: str
    device: str | None
    node: str
    started_at: float
    last_seen_at: float
    ended_at: float | None = None
    end_reason: str | None = None
    end_requested_at: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(frozen=True)
class TravelWindow:
    """A device that may log in with the password alone until expires_at."""

    id: str
    user_name: str
    device: str
    door: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class AuditRecord:
    """One audited event. detail holds extra facts; never a password, code or secret."""

    ts: float
    kind: str
    result: str
    user_name: str | None = None
    source: str | None = None
    door: str | None = None
    factor: str | None = None
    reason: str | None = None
    actor: str | None = None
    detail: Mapping[str, JsonValue] = field(default_factory=dict)
    id: int | None = None


@dataclass(frozen=True)
class InviteRecord:
    """A one-time enrollment invite; only the SHA-256 of its token is kept."""

    id: str
    user_name: str
    token_hash: bytes = field(repr=False)
    created_at: float
    expires_at: float
    created_by: str
    used_at: float | None = None
    cancelled_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.used_at is None and self.cancelled_at is None and now < self.expires_at


@dataclass(frozen=True)
class WebSessionRecord:
    """A browser session of the web app; the cookie's value is never stored, only its hash."""

    id_hash: bytes = field(repr=False)
    kind: str
    user_name: str
    csrf: str = field(repr=False)
    data: str
    created_at: float
    last_seen_at: float
    expires_at: float


@dataclass(frozen=True)
class DeviceRecord:
    """A client certificate issued from the private CA to one of a user's devices."""

    id: str
    user_name: str
    name: str
    serial: str
    fingerprint: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None


class Store(abc.ABC):
    """Everything the gateway keeps. Methods are coroutines; times are epoch seconds."""

    # -- lifecycle
    @abc.abstractmethod
    async def migrate(self) -> int:
        """Bring the schema up to date; return the number of migrations applied."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- users
    @abc.abstractmethod
    async def add_user(
        self,
        name: str,
        now: float,
        *,
        email: str | None = None,
        profile: str = "lan",
        password_hash: str | None = None,
    ) -> UserRecord:
        """Create a user; raise DuplicateError if the name is taken."""

    @abc.abstractmethod
    async def get_user(self, name: str) -> UserRecord | None: ...

    @abc.abstractmethod
    async def get_user_by_id(self, user_id: int) -> UserRecord | None: ...

    @abc.abstractmethod
    async def list_users(self) -> list[UserRecord]: ...

    @abc.abstractmethod
    async def set_user_enabled(self, name: str, enabled: bool, now: float) -> bool:
        """Return False if there is no such user."""

    @abc.abstractmethod
    async def set_password_hash(self, name: str, password_hash: str | None, now: float) -> bool: ...

    @abc.abstractmethod
    async def set_user_profile(self, name: str, profile: str, now: float) -> bool:
        """Set the link profile a user's sessions get by default; False if there is no such user."""

    @abc.abstractmethod
    async def set_user_email(self, name: str, email: str | None, now: float) -> bool:
        """Set the user's address of record (sender policy); False if there is no such user."""

    @abc.abstractmethod
    async def set_device_profile(
        self, user_id: int, device: str, profile: str | None, now: float
    ) -> None:
        """The link profile of one of the user's devices (None: the device follows the user's)."""

    @abc.abstractmethod
    async def device_profiles(self, user_id: int) -> dict[str, str]:
        """Device -> profile, for the devices that have their own."""

    @abc.abstractmethod
    async def remove_user(self, name: str) -> bool:
        """Delete a user with their tokens, backup codes and callbacks; audit stays."""

    # -- tokens
    @abc.abstractmethod
    async def add_token(self, token: TokenRecord) -> None: ...

    @abc.abstractmethod
    async def get_token(self, token_id: str) -> TokenRecord | None: ...

    @abc.abstractmethod
    async def list_tokens(
        self, user_id: int | None = None, *, include_revoked: bool = False
    ) -> list[TokenRecord]: ...

    @abc.abstractmethod
    async def revoke_token(self, token_id: str, now: float) -> bool: ...

    @abc.abstractmethod
    async def advance_token_state(self, token_id: str, new_state: int, now: float) -> bool:
        """Compare-and-set: store new_state only if it is above the current state.

        Returns True for exactly one of any number of concurrent calls with the same
        new_state, and False for a revoked token: this is what makes a code single-use.
        """

    # -- backup codes
    @abc.abstractmethod
    async def replace_backup_codes(
        self, user_id: int, code_hashes: Sequence[bytes], now: float
    ) -> None: ...

    @abc.abstractmethod
    async def consume_backup_code(self, user_id: int, code_hash: bytes, now: float) -> bool:
        """Mark an unused code used; True for exactly one caller."""

    @abc.abstractmethod
    async def backup_code_status(self, user_id: int, code_hash: bytes) -> str | None:
        """'unused', 'used', or None if the user has no such code. Changes nothing."""

    @abc.abstractmethod
    async def count_backup_codes(self, user_id: int) -> int:
        """How many unused codes the user has left."""

    # -- throttling
    @abc.abstractmethod
    async def get_throttle(self, scope: ThrottleScope, key: str) -> ThrottleRecord | None: ...

    async def get_login_throttles(
        self, user: str | None, source: str | None
    ) -> tuple[ThrottleRecord | None, ThrottleRecord | None]:
        """The user's and the source's records at once (one round trip where the backend can)."""
        return (
            await self.get_throttle("user", user) if user is not None else None,
            await self.get_throttle("source", source) if source is not None else None,
        )

    @abc.abstractmethod
    async def record_failure(
        self, scope: ThrottleScope, key: str, now: float, *, forget_before: float | None = None
    ) -> ThrottleRecord:
        """Atomically count one failure and return the new state.

        If the last failure is older than forget_before the count restarts at 1.
        """

    @abc.abstractmethod
    async def set_lock(
        self, scope: ThrottleScope, key: str, locked_until: float | None, hard: bool
    ) -> None: ...

    @abc.abstractmethod
    async def clear_throttle(self, scope: ThrottleScope, key: str) -> bool:
        """Forget failures and locks; True if there was anything to forget."""

    @abc.abstractmethod
    async def list_throttles(self, scope: ThrottleScope | None = None) -> list[ThrottleRecord]: ...

    # -- callback registrations
    @abc.abstractmethod
    async def add_callback(
        self, user_id: int, channel: str, address: str, now: float
    ) -> CallbackRecord: ...

    @abc.abstractmethod
    async def list_callbacks(self, user_id: int) -> list[CallbackRecord]: ...

    @abc.abstractmethod
    async def mark_callback_verified(self, callback_id: int, now: float) -> bool: ...

    @abc.abstractmethod
    async def remove_callback(self, callback_id: int) -> bool: ...

    @abc.abstractmethod
    async def set_callback_key(self, callback_id: int, sealed_key: bytes) -> bool:
        """Store the sealed device key of a (dial-back) registration; False if unknown."""

    @abc.abstractmethod
    async def get_callback_key(self, callback_id: int) -> bytes | None: ...

    # -- callback policy, known sources and the outstanding callback
    @abc.abstractmethod
    async def set_callback_policy(
        self, user_id: int, policy: CallbackPolicy, now: float
    ) -> None: ...

    @abc.abstractmethod
    async def get_callback_policy(self, user_id: int) -> CallbackPolicy | None:
        """The user's policy, or None if none was set (the config's default applies)."""

    @abc.abstractmethod
    async def note_known_sources(self, user_id: int, keys: Sequence[str], now: float) -> None:
        """Remember sources (network, device) the user logged in from successfully."""

    @abc.abstractmethod
    async def unknown_sources(self, user_id: int, keys: Sequence[str]) -> list[str]:
        """The keys among these that the user never logged in from, in the order given."""

    @abc.abstractmethod
    async def claim_pending_callback(self, pending: PendingCallback) -> bool:
        """Compare-and-set: make this the user's outstanding callback.

        True for exactly one of concurrent claims, and only if the user has none, or theirs
        has expired (expires_at <= pending.created_at): one outstanding callback per user,
        across every node sharing the store.
        """

    @abc.abstractmethod
    async def get_pending_callback(self, pending_id: str) -> PendingCallback | None: ...

    @abc.abstractmethod
    async def update_pending_callback(
        self, pending_id: str, from_statuses: Sequence[str], status: str, now: float
    ) -> bool:
        """Compare-and-set the status; False if it was not in from_statuses or has expired."""

    @abc.abstractmethod
    async def answer_pending_callback(
        self, token_hash: bytes, status: str, now: float
    ) -> PendingCallback | None:
        """Approve or deny by the approve link's token: once, before expiry, else None."""

    @abc.abstractmethod
    async def finish_pending_callback(self, pending_id: str) -> bool:
        """Forget an outstanding callback (its login is decided)."""

    # -- SSH keys
    @abc.abstractmethod
    async def add_ssh_key(
        self, user_id: int, fingerprint: str, public_key: str, comment: str, now: float
    ) -> SshKeyRecord:
        """Register a key; raise DuplicateError if the user has it already."""

    @abc.abstractmethod
    async def list_ssh_keys(self, user_id: int) -> list[SshKeyRecord]: ...

    @abc.abstractmethod
    async def remove_ssh_key(self, user_id: int, fingerprint: str) -> bool: ...

    # -- sessions
    @abc.abstractmethod
    async def open_session(self, session: SessionRecord) -> None: ...

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    async def touch_session(
        self, session_id: str, now: float, bytes_in: int, bytes_out: int
    ) -> None: ...

    @abc.abstractmethod
    async def close_session(
        self, session_id: str, now: float, reason: str, bytes_in: int, bytes_out: int
    ) -> bool:
        """End an open session; False if it was already closed or unknown."""

    @abc.abstractmethod
    async def request_session_end(self, session_id: str, now: float) -> bool:
        """Ask the node that holds an open session to end it (it polls)."""

    @abc.abstractmethod
    async def list_sessions(self, *, open_only: bool = True) -> list[SessionRecord]: ...

    # -- travel windows
    @abc.abstractmethod
    async def open_travel_window(
        self, window_id: str, user_name: str, device: str, door: str, now: float, expires_at: float
    ) -> TravelWindow:
        """Open a window for (user, device), or restart the one it has (new id and expiry)."""

    @abc.abstractmethod
    async def find_travel_window(
        self, user_name: str, device: str, now: float
    ) -> TravelWindow | None:
        """The window in force for (user, device) at now: not revoked, not expired."""

    @abc.abstractmethod
    async def list_travel_windows(
        self, now: float, *, user_name: str | None = None, include_ended: bool = False
    ) -> list[TravelWindow]: ...

    @abc.abstractmethod
    async def revoke_travel_window(self, window_id: str, now: float) -> bool: ...

    @abc.abstractmethod
    async def revoke_user_travel_windows(self, user_name: str, now: float) -> int: ...

    # -- enrollment invites
    @abc.abstractmethod
    async def add_invite(self, invite: InviteRecord) -> None: ...

    @abc.abstractmethod
    async def find_invite(self, token_hash: bytes) -> InviteRecord | None: ...

    @abc.abstractmethod
    async def list_invites(
        self, now: float, *, user_name: str | None = None, include_ended: bool = False
    ) -> list[InviteRecord]:
        """Invites newest first; without include_ended only those still usable at now."""

    @abc.abstractmethod
    async def consume_invite(self, invite_id: str, now: float) -> bool:
        """Compare-and-set: mark a usable invite used; True for exactly one concurrent caller."""

    @abc.abstractmethod
    async def cancel_invite(self, invite_id: str, now: float) -> bool:
        """Cancel an invite not used yet; False if it was used, cancelled or is unknown."""

    # -- web sessions
    @abc.abstractmethod
    async def add_web_session(self, session: WebSessionRecord) -> None: ...

    @abc.abstractmethod
    async def get_web_session(self, id_hash: bytes, now: float) -> WebSessionRecord | None:
        """The session if it exists and has not expired at now."""

    @abc.abstractmethod
    async def update_web_session(
        self,
        id_hash: bytes,
        now: float,
        *,
        data: str | None = None,
        expect_data: str | None = None,
        expires_at: float | None = None,
    ) -> bool:
        """Touch a live session, optionally replacing its data and expiry.

        With expect_data the data is replaced only if it still equals expect_data
        (compare-and-set: something shown once is shown to one request only).
        """

    @abc.abstractmethod
    async def delete_web_session(self, id_hash: bytes) -> bool: ...

    @abc.abstractmethod
    async def delete_web_sessions(
        self, *, user_name: str | None = None, expired_before: float | None = None
    ) -> int:
        """End a user's sessions, or purge those expired before a time; how many went."""

    # -- device certificates
    @abc.abstractmethod
    async def add_device(self, device: DeviceRecord) -> None: ...

    @abc.abstractmethod
    async def get_device(self, device_id: str) -> DeviceRecord | None: ...

    @abc.abstractmethod
    async def find_device(self, fingerprint: str) -> DeviceRecord | None:
        """The device whose certificate has this SHA-256 fingerprint (hex), revoked or not."""

    @abc.abstractmethod
    async def list_devices(
        self, *, user_name: str | None = None, include_revoked: bool = False
    ) -> list[DeviceRecord]: ...

    @abc.abstractmethod
    async def revoke_device(self, device_id: str, now: float) -> bool: ...

    @abc.abstractmethod
    async def revoke_user_devices(self, user_name: str, now: float) -> int: ...

    # -- audit
    @abc.abstractmethod
    async def append_audit(self, record: AuditRecord) -> int: ...

    @abc.abstractmethod
    async def query_audit(
        self,
        *,
        user_name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        result: str | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        """Matching events, oldest first; at most the newest `limit` of them."""

    @abc.abstractmethod
    async def audit_page(
        self,
        *,
        after: tuple[float, int] | None = None,
        user_name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        """Matching events ordered by (ts, id), the first `limit` after the key `after`.

        Keyset paging for `audit export`: the caller passes the (ts, id) of the last event it
        got, so an export of any size walks the table in bounded pages.
        """

    @abc.abstractmethod
    async def delete_audit_before(self, ts: float) -> int: ...
