"""First-factor verifiers: the corporate IMAP server itself (`upstream`) or local scrypt hashes."""

from __future__ import annotations

import asyncio
import enum
import imaplib
import logging
import ssl
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

from roamgate.auth.passwords import verify_password
from roamgate.config import Config, UpstreamServer
from roamgate.store.base import UserRecord

if TYPE_CHECKING:
    from roamgate.directory.service import Directory

log = logging.getLogger("roamgate.login")

# Why the last verify() in this task did not accept, for a verifier that knows more than
# REJECTED/UNAVAILABLE (the directory's not_in_group, directory_unreachable). The
# authenticator reads it into the audit event's reason; the peer never sees it.
refusal_reason: ContextVar[str | None] = ContextVar("refusal_reason", default=None)


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"  # the verifier could not decide: fail closed, count nothing


class PasswordVerifier(Protocol):
    """Checks a user's password (upstream IMAP, local hashes or the directory)."""

    name: str

    async def verify(self, user: UserRecord, password: str) -> Outcome: ...


class LocalVerifier:
    """scrypt hashes kept in the store (`roamgate user passwd`)."""

    name = "local"

    async def verify(self, user: UserRecord, password: str) -> Outcome:
        if not password or user.password_hash is None:
            return Outcome.REJECTED
        # scrypt takes tens of ms of CPU: keep it off the event loop.
        ok = await asyncio.to_thread(verify_password, password, user.password_hash)
        return Outcome.ACCEPTED if ok else Outcome.REJECTED


class UpstreamImapVerifier:
    """The user's corporate password, checked by logging in to the corporate IMAP server.

    The gateway stores no passwords this way. imaplib is the independent, well-kept client;
    it blocks, so each check runs in a worker thread with the configured timeout.
    """

    name = "upstream"

    def __init__(self, server: UpstreamServer) -> None:
        self.server = server

    async def verify(self, user: UserRecord, password: str) -> Outcome:
        if not password:
            return Outcome.REJECTED
        return await asyncio.to_thread(self._verify_blocking, user.name, password)

    def _verify_blocking(self, username: str, password: str) -> Outcome:
        srv = self.server
        client: imaplib.IMAP4 | None = None
        try:
            client = connect_upstream(srv)
            return _authenticate(client, username, password)
        except (OSError, imaplib.IMAP4.abort, ssl.SSLError, EOFError) as exc:
            log.warning(
                "upstream %s:%d unavailable for password check: %s", srv.host, srv.port, exc
            )
            return Outcome.UNAVAILABLE
        except imaplib.IMAP4.error as exc:
            log.warning(
                "upstream %s:%d protocol error in password check: %s", srv.host, srv.port, exc
            )
            return Outcome.UNAVAILABLE
        finally:
            if client is not None:
                _close_quietly(client)


def upstream_ssl_context(server: UpstreamServer) -> ssl.SSLContext:
    """Verifying TLS context for an upstream server (system CAs unless ca_file is set)."""
    ctx = ssl.create_default_context(cafile=str(server.ca_file) if server.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def connect_upstream(server: UpstreamServer) -> imaplib.IMAP4:
    """A connected imaplib client, TLS established and verified per the config."""
    timeout = server.timeout_seconds
    if server.tls == "implicit":
        return imaplib.IMAP4_SSL(
            server.host,
            server.port,
            ssl_context=upstream_ssl_context(server),
            timeout=timeout,
        )
    client = imaplib.IMAP4(server.host, server.port, timeout=timeout)
    if server.tls == "starttls":
        try:
            client.starttls(ssl_context=upstream_ssl_context(server))
        except BaseException:
            _close_quietly(client)
            raise
    return client


def _authenticate(client: imaplib.IMAP4, username: str, password: str) -> Outcome:
    # AUTHENTICATE PLAIN carries any UTF-8 password; imaplib's LOGIN is ASCII-only.
    plain = "AUTH=PLAIN" in client.capabilities
    try:
        if plain:
            blob = b"\0" + username.encode() + b"\0" + password.encode()
            client.authenticate("PLAIN", lambda _challenge: blob)
        else:
            client.login(username, password)
    except imaplib.IMAP4.error as exc:
        text = str(exc)
        if "[UNAVAILABLE]" in text or "[SERVERBUG]" in text:
            return Outcome.UNAVAILABLE
        return Outcome.REJECTED
    except UnicodeEncodeError:
        return Outcome.REJECTED  # a non-ASCII password on a server without AUTH=PLAIN
    return Outcome.ACCEPTED


def _close_quietly(client: imaplib.IMAP4) -> None:
    try:
        if client.state in ("AUTH", "SELECTED"):
            client.logout()
        else:
            client.shutdown()
    except (OSError, imaplib.IMAP4.error, EOFError):
        pass


def make_verifier(cfg: Config, directory: Directory | None = None) -> PasswordVerifier:
    if cfg.auth.password_verifier == "local":  # noqa: S105 (a verifier name)
        return LocalVerifier()
    if cfg.auth.password_verifier == "ldap":  # noqa: S105
        from roamgate.directory.verifier import LdapVerifier

        if directory is None:
            raise ValueError("the ldap verifier needs the directory")
        return LdapVerifier(directory)
    return UpstreamImapVerifier(cfg.upstream.imap)
