"""The client side of an IMAP session before login, as a sans-IO state machine.

It is fed assembled commands (and the raw line of an AUTHENTICATE exchange) and answers with
actions for the transport: bytes to send, TLS to start, a login to check, the connection to
close. The login itself is decided elsewhere (it needs the store and the upstream); the
transport reports the result back with login_result().

Rules:
1. Before login only CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN and AUTHENTICATE are
   understood; anything else gets BAD and changes nothing.
2. On a connection without TLS, LOGIN and AUTHENTICATE are refused (LOGINDISABLED).
3. STARTTLS: after the OK the transport must drop every byte already received (commands
   pipelined behind STARTTLS in plaintext are an injection, RFC 3501 6.2.1 / CVE-2011-0411).
4. At most one login is in flight (the transport handles one command at a time).
5. Every reply text is fixed; nothing from an exception or the peer's input is echoed except
   the peer's own tag.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from roamgate.imap import capabilities
from roamgate.imap.events import ProtocolError, RawLine
from roamgate.imap.serialize import error_reply, quote
from roamgate.imap.values import Command, ValueList, astring, nstring

# RFC 2971: at most 30 field-value pairs, fields of 30 octets, values of 1024.
ID_MAX_PAIRS = 30
ID_MAX_FIELD = 30
ID_MAX_VALUE = 1024


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class StartTls:
    """Upgrade the connection now; discard anything the parser still holds (rule 3)."""


@dataclass(frozen=True)
class CheckLogin:
    """Decide a login. secret is everything in the password field: password then code."""

    tag: bytes
    user: str
    secret: str = ""

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a log
        return f"CheckLogin(tag={self.tag!r}, user={self.user!r})"


@dataclass(frozen=True)
class ReadRawLine:
    """The next client line is a SASL response: read it verbatim."""


@dataclass(frozen=True)
class Close:
    reason: str


Action: TypeAlias = Send | StartTls | CheckLogin | ReadRawLine | Close


def _line(*parts: bytes) -> bytes:
    return b" ".join(parts) + b"\r\n"


class PreLoginSession:
    """Greeting, capabilities, STARTTLS, ID and the login exchange; see the module rules."""

    def __init__(
        self, *, tls_active: bool, server_name: str = "roamgate", max_failures: int = 3
    ) -> None:
        self.tls_active = tls_active
        self.server_name = server_name
        self.max_failures = max_failures
        self.failures = 0
        self.client_id: tuple[tuple[str, str | None], ...] = ()
        self._sasl_tag: bytes | None = None
        self._login_in_flight = False

    def capability_list(self) -> list[str]:
        return capabilities.prelogin(tls_active=self.tls_active)

    def greeting(self) -> bytes:
        caps = " ".join(self.capability_list()).encode()
        return b"* OK [CAPABILITY " + caps + b"] " + self.server_name.encode() + b" ready\r\n"

    @property
    def login_in_flight(self) -> bool:
        return self._login_in_flight

    def tls_started(self) -> None:
        self.tls_active = True

    def handle(self, item: Command | RawLine | ProtocolError) -> list[Action]:
        if isinstance(item, ProtocolError):
            out: list[Action] = [Send(error_reply(item))]
            if item.fatal:
                out.append(Close("protocol error"))
            self._sasl_tag = None
            return out
        if isinstance(item, RawLine):
            return self._sasl_response(item.data)
        verb = item.verb
        tag = item.tag
        if verb == "CAPABILITY" and not item.args:
            caps = " ".join(self.capability_list()).encode()
            return [
                Send(b"* CAPABILITY " + caps + b"\r\n" + _line(tag, b"OK Capability completed."))
            ]
        if verb == "NOOP" and not item.args:
            return [Send(_line(tag, b"OK NOOP completed."))]
        if verb == "LOGOUT" and not item.args:
            return [
                Send(b"* BYE Logging out\r\n" + _line(tag, b"OK Logout completed.")),
                Close("logout"),
            ]
        if verb == "ID":
            return self._id(item)
        if verb == "STARTTLS" and not item.args:
            if self.tls_active:
                return [Send(_line(tag, b"BAD TLS is already active."))]
            return [Send(_line(tag, b"OK Begin TLS negotiation now.")), StartTls()]
        if verb == "LOGIN":
            return self._login(item)
        if verb == "AUTHENTICATE":
            return self._authenticate(item)
        return [Send(_line(tag, b"BAD Command not allowed before login."))]

    def login_result(
        self, tag: bytes, *, ok: bool, temporary: bool, caps: Sequence[str] = ()
    ) -> list[Action]:
        """Answer the login the transport has decided."""
        self._login_in_flight = False
        if ok:
            text = b"OK [CAPABILITY " + " ".join(caps).encode() + b"] Logged in"
            return [Send(_line(tag, text))]
        if temporary:
            return [
                Send(
                    _line(
                        tag,
                        b"NO [UNAVAILABLE] Authentication service unavailable, try again later.",
                    )
                )
            ]
        self.failures += 1
        out: list[Action] = [Send(_line(tag, b"NO [AUTHENTICATIONFAILED] Authentication failed."))]
        if self.failures >= self.max_failures:
            out.append(Send(b"* BYE Too many failed logins.\r\n"))
            out.append(Close("too many failed logins"))
        return out

    # -- commands
    def _id(self, cmd: Command) -> list[Action]:
        tag = cmd.tag
        if len(cmd.args) != 1:
            return [Send(_line(tag, b"BAD ID takes one argument."))]
        arg = cmd.args[0]
        pairs: list[tuple[str, str | None]] = []
        if isinstance(arg, ValueList):
            items = arg.items
            if len(items) % 2 or len(items) > 2 * ID_MAX_PAIRS:
                return [Send(_line(tag, b"BAD Invalid ID parameters."))]
            for key_v, value_v in zip(items[::2], items[1::2], strict=True):
                ok_key, key = nstring(key_v)
                ok_value, value = nstring(value_v)
                if not (ok_key and ok_value) or key is None or len(key) > ID_MAX_FIELD:
                    return [Send(_line(tag, b"BAD Invalid ID parameters."))]
                if value is not None and len(value) > ID_MAX_VALUE:
                    return [Send(_line(tag, b"BAD Invalid ID parameters."))]
                pairs.append(
                    (
                        key.decode("utf-8", "replace"),
                        None if value is None else value.decode("utf-8", "replace"),
                    )
                )
        else:
            ok, value = nstring(arg)
            if not ok or value is not None:
                return [Send(_line(tag, b"BAD Invalid ID parameters."))]
        self.client_id = tuple(pairs)
        reply = b'* ID ("name" ' + quote(self.server_name.encode()) + b")\r\n"
        return [Send(reply + _line(tag, b"OK ID completed."))]

    def _refuse_plaintext(self, tag: bytes) -> list[Action] | None:
        if not self.tls_active:
            return [Send(_line(tag, b"NO [PRIVACYREQUIRED] Log in after STARTTLS."))]
        if self._login_in_flight:
            return [Send(_line(tag, b"NO A login is already in progress."))]
        return None

    def _login(self, cmd: Command) -> list[Action]:
        refused = self._refuse_plaintext(cmd.tag)
        if refused is not None:
            return refused
        if len(cmd.args) != 2:
            return [Send(_line(cmd.tag, b"BAD LOGIN takes a user name and a password."))]
        user, secret = astring(cmd.args[0]), astring(cmd.args[1])
        if user is None or secret is None:
            return [Send(_line(cmd.tag, b"BAD LOGIN takes a user name and a password."))]
        return self._check(cmd.tag, user, secret)

    def _authenticate(self, cmd: Command) -> list[Action]:
        refused = self._refuse_plaintext(cmd.tag)
        if refused is not None:
            return refused
        if not cmd.args or astring(cmd.args[0]) is None or len(cmd.args) > 2:
            return [Send(_line(cmd.tag, b"BAD AUTHENTICATE takes a mechanism."))]
        mechanism = (astring(cmd.args[0]) or b"").upper()
        if mechanism != b"PLAIN":
            return [Send(_line(cmd.tag, b"NO [CANNOT] Unsupported authentication mechanism."))]
        if len(cmd.args) == 2:
            initial = astring(cmd.args[1])
            if initial is None:
                return [Send(_line(cmd.tag, b"BAD Invalid initial response."))]
            return self._plain(cmd.tag, b"" if initial == b"=" else initial)
        self._sasl_tag = cmd.tag
        return [Send(b"+ \r\n"), ReadRawLine()]

    def _sasl_response(self, data: bytes) -> list[Action]:
        tag = self._sasl_tag
        self._sasl_tag = None
        if tag is None:
            return [Send(b"* BAD Unexpected line.\r\n")]
        if data.strip() == b"*":
            return [Send(_line(tag, b"BAD Authentication cancelled."))]
        return self._plain(tag, data.strip())

    def _plain(self, tag: bytes, encoded: bytes) -> list[Action]:
        try:
            message = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return [Send(_line(tag, b"BAD Invalid base64 data."))]
        parts = message.split(b"\0")
        if len(parts) != 3:
            return [Send(_line(tag, b"BAD Invalid PLAIN message."))]
        authzid, authcid, secret = parts
        if authzid and authzid != authcid:
            # No proxy authorisation: a user logs in as themselves only.
            return self.login_result(tag, ok=False, temporary=False)
        return self._check(tag, authcid, secret)

    def _check(self, tag: bytes, user: bytes, secret: bytes) -> list[Action]:
        try:
            user_text, secret_text = user.decode("utf-8"), secret.decode("utf-8")
        except UnicodeDecodeError:
            return self.login_result(tag, ok=False, temporary=False)
        if not user_text or not secret_text:
            return self.login_result(tag, ok=False, temporary=False)
        self._login_in_flight = True
        return [CheckLogin(tag, user_text, secret_text)]
