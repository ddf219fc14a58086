"""The second factor: enrolling tokens and backup codes, and checking a code exactly once."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from roamgate.auth import backup_codes, otp
from roamgate.auth.otp import HotpParams, OtpCheck, TotpParams, Verdict
from roamgate.config import OtpSettings
from roamgate.secretbox import SecretBox
from roamgate.store.base import Store, TokenKind, TokenRecord, UserRecord

_BACKUP_PURPOSE = "backup-code"


@dataclass(frozen=True)
class FactorResult:
    """The outcome of one code check.

    reason: ok | wrong | replay | malformed | no_token | clock_skew. drift_steps says how far
    off a token's clock looks (TOTP steps) when the code matched outside the window.
    """

    ok: bool
    reason: str
    factor: str | None = None  # totp | hotp | backup
    token_id: str | None = None
    drift_steps: int | None = None


@dataclass(frozen=True)
class Enrollment:
    """What enrollment shows once: the secret and the otpauth URI carrying it."""

    token: TokenRecord
    secret: str
    uri: str


class SecondFactor:
    """Checks one-time and backup codes against the store with single-use guarantees."""

    def __init__(
        self,
        store: Store,
        box: SecretBox,
        settings: OtpSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.box = box
        self.settings = settings
        self.clock = clock

    # -- enrollment
    async def enroll(self, user: UserRecord, kind: TokenKind, label: str = "") -> Enrollment:
        """A new token, active at once (the CLI: the administrator hands it over)."""
        pending = self.prepare(user, kind, label)
        await self.store.add_token(pending.token)
        return pending

    def prepare(self, user: UserRecord, kind: TokenKind, label: str = "") -> Enrollment:
        """A new token not stored yet: it becomes usable only through activate()."""
        secret = otp.new_secret()
        token_id = "tok_" + secrets.token_hex(6)
        s = self.settings
        token = TokenRecord(
            id=token_id,
            user_id=user.id,
            kind=kind,
            sealed_secret=self.box.seal(secret.encode(), token_id),
            digits=s.digits,
            period=s.totp_period_seconds,
            algorithm="sha1",  # what every authenticator app and hardware token supports
            state=None if kind == "totp" else 0,
            label=label,
            created_at=self.clock(),
        )
        return self.describe(user, token, secret)

    def describe(self, user: UserRecord, token: TokenRecord, secret: str) -> Enrollment:
        """The otpauth URI of a token whose secret the caller holds."""
        s = self.settings
        account = user.name if not user.email else user.email
        if token.kind == "totp":
            uri = otp.totp_uri(_totp(token, secret), account, s.issuer)
        else:
            uri = otp.hotp_uri(_hotp(token, secret), account, s.issuer, 0)
        return Enrollment(token, secret, uri)

    async def activate(self, pending: TokenRecord, code: str) -> FactorResult:
        """Store a prepared token once the user proves it works with a code from it.

        The code is used up by the activation (the token's state starts past it), so the
        same code cannot log in afterwards.
        """
        check = self._check(pending, code)
        if check.verdict is not Verdict.OK or check.new_state is None:
            reason = "malformed" if check.verdict is Verdict.MALFORMED else "wrong"
            if check.drift_steps is not None:
                reason = "clock_skew"
            return FactorResult(False, reason, pending.kind, pending.id, check.drift_steps)
        await self.store.add_token(
            replace(pending, state=check.new_state, last_used_at=self.clock())
        )
        return FactorResult(True, "ok", pending.kind, pending.id, check.drift_steps)

    async def issue_backup_codes(self, user: UserRecord) -> list[str]:
        """Ten new codes replacing any earlier sheet; only their keyed hashes are stored."""
        codes = backup_codes.generate()
        hashes = [self._backup_hash(user, c) for c in codes]
        await self.store.replace_backup_codes(user.id, hashes, self.clock())
        return codes

    # -- checking
    async def tokens(self, user: UserRecord) -> list[TokenRecord]:
        """The user's active tokens, read once for the steps of one login (see _evaluate)."""
        return await self.store.list_tokens(user.id)

    async def code_lengths(
        self, user: UserRecord, tokens: list[TokenRecord] | None = None
    ) -> set[int]:
        """The code lengths this user can present: their tokens' digits, and backup codes."""
        if tokens is None:
            tokens = await self.store.list_tokens(user.id)
        lengths = {t.digits for t in tokens}
        if await self.store.count_backup_codes(user.id):
            lengths.add(backup_codes.CODE_DIGITS)
        return lengths

    async def peek(
        self, user: UserRecord, code: str, tokens: list[TokenRecord] | None = None
    ) -> FactorResult:
        """What verify would say, without using the code up."""
        return await self._evaluate(user, code, consume=False, tokens=tokens)

    async def verify(
        self, user: UserRecord, code: str, tokens: list[TokenRecord] | None = None
    ) -> FactorResult:
        """Check a code against the user's tokens, or as a backup code; consume it if good."""
        return await self._evaluate(user, code, consume=True, tokens=tokens)

    async def _evaluate(
        self,
        user: UserRecord,
        code: str,
        *,
        consume: bool,
        tokens: list[TokenRecord] | None = None,
    ) -> FactorResult:
        """tokens: as read earlier in the same login, to spare the store a read. Safe because
        a code is used up only by advance_token_state's compare-and-set, which sees the
        store's current state: a code another login used meanwhile, or a token revoked
        meanwhile, fails it (answered as a replay), exactly as without the earlier read."""
        backup = backup_codes.parse(code)
        if backup is not None:
            return await self._backup(user, backup, consume=consume)
        if tokens is None:
            tokens = await self.store.list_tokens(user.id)
        if not tokens:
            return FactorResult(False, "no_token")
        checks = [(t, self._check(t, code)) for t in tokens]
        for token, check in checks:
            if check.verdict is Verdict.OK and check.new_state is not None:
                if not consume or await self.store.advance_token_state(
                    token.id, check.new_state, self.clock()
                ):
                    return FactorResult(True, "ok", token.kind, token.id, check.drift_steps)
                # Another attempt won the compare-and-set with this very code.
                return FactorResult(False, "replay", token.kind, token.id)
        for token, check in checks:
            if check.verdict is Verdict.REPLAY:
                return FactorResult(False, "replay", token.kind, token.id, check.drift_steps)
        for token, check in checks:
            if check.drift_steps is not None:
                return FactorResult(False, "clock_skew", token.kind, token.id, check.drift_steps)
        if all(check.verdict is Verdict.MALFORMED for _t, check in checks):
            return FactorResult(False, "malformed")
        return FactorResult(False, "wrong")

    async def resync(self, user: UserRecord, first: str, second: str) -> FactorResult:
        """Bring a drifted HOTP token back in step with two consecutive codes."""
        for token in await self.store.list_tokens(user.id):
            if token.kind != "hotp":
                continue
            secret = self._secret(token)
            check = otp.resync_hotp(
                _hotp(token, secret),
                first,
                second,
                token.state or 0,
                search=self.settings.hotp_resync_window,
            )
            if check.verdict is Verdict.OK and check.new_state is not None:
                if await self.store.advance_token_state(token.id, check.new_state, self.clock()):
                    return FactorResult(True, "ok", "hotp", token.id, check.drift_steps)
                return FactorResult(False, "replay", "hotp", token.id)
        return FactorResult(False, "wrong", "hotp")

    def _check(self, token: TokenRecord, code: str) -> OtpCheck:
        secret = self._secret(token)
        s = self.settings
        if token.kind == "totp":
            return otp.check_totp(
                _totp(token, secret),
                code,
                self.clock(),
                token.state,
                window=s.totp_window_steps,
                drift_search=s.drift_report_steps,
            )
        return otp.check_hotp(
            _hotp(token, secret), code, token.state or 0, look_ahead=s.hotp_look_ahead
        )

    async def _backup(self, user: UserRecord, code: str, *, consume: bool) -> FactorResult:
        code_hash = self._backup_hash(user, code)
        if consume:
            if await self.store.consume_backup_code(user.id, code_hash, self.clock()):
                return FactorResult(True, "ok", "backup")
        elif await self.store.backup_code_status(user.id, code_hash) == "unused":
            return FactorResult(True, "ok", "backup")
        if await self.store.backup_code_status(user.id, code_hash) == "used":
            return FactorResult(False, "replay", "backup")
        return FactorResult(False, "wrong", "backup")

    def _backup_hash(self, user: UserRecord, code: str) -> bytes:
        # Bound to the user id, so one user's sheet never opens another's account.
        return self.box.keyed_hash(_BACKUP_PURPOSE, f"{user.id}:{code}")

    def _secret(self, token: TokenRecord) -> str:
        return self.box.open(token.sealed_secret, token.id).decode()


def _totp(token: TokenRecord, secret: str) -> TotpParams:
    return TotpParams(secret, token.digits, token.period, _algorithm(token.algorithm))


def _hotp(token: TokenRecord, secret: str) -> HotpParams:
    return HotpParams(secret, token.digits, _algorithm(token.algorithm))


def _algorithm(name: str) -> otp.Algorithm:
    if name == "sha256":
        return "sha256"
    if name == "sha512":
        return "sha512"
    return "sha1"
