"""Blocking LDAP operations with python-ldap; callers run them in Directory's worker threads.

Every connection is TLS (LDAPS or StartTLS) with the server certificate and host name
verified, and carries network and operation timeouts, so a dead directory costs a bounded
wait in a worker thread, never the event loop. One connection per operation: a login binds
as the user on it, and nothing is shared between threads.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import ldap
import ldap.dn
import ldap.filter
from ldap.controls import SimplePagedResultsControl

from roamgate.config import LdapSettings

log = logging.getLogger("roamgate.directory")

PAGE_SIZE = 500
MAX_PAGES = 1000  # 500,000 entries: a bound on every paged search
MAX_GROUPS = 5000  # groups visited while resolving nesting


class DirectoryError(Exception):
    """The directory could not answer: down, TLS refused, the service bind failed, a timeout."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause  # a short code word for audit: unreachable, tls, service_bind, ...


@dataclass(frozen=True)
class DirectoryEntry:
    """What the gateway reads about one person."""

    dn: str
    name: str
    disabled: bool
    groups: frozenset[str]  # normalized DNs of the groups the entry is in, nested ones too
    mail: str | None
    callback_number: str | None
    certificate: bytes | None  # DER


def normalize_dn(dn: str) -> str:
    """A DN in one spelling (case, spaces, escapes), so DNs from config and server compare."""
    try:
        parts = ldap.dn.str2dn(dn)
    except ldap.DECODING_ERROR:
        return dn.strip().lower()
    return cast(
        str,
        ldap.dn.dn2str([[(a.lower(), v.lower(), f) for a, v, f in rdn] for rdn in parts]),
    )


def _text(values: list[bytes] | None) -> str | None:
    if not values:
        return None
    try:
        return values[0].decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None


class DirectoryConnection:
    """One TLS connection, bound as the service account."""

    def __init__(self, settings: LdapSettings, bind_password: str) -> None:
        self.s = settings
        self.conn: Any = None
        self._open(bind_password)

    # -- set up
    def _open(self, bind_password: str) -> None:
        s = self.s
        t = float(s.timeout_seconds)
        try:
            conn = ldap.initialize(s.url)
            conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
            conn.set_option(ldap.OPT_REFERRALS, 0)  # a referral would bind elsewhere
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, t)
            conn.set_option(ldap.OPT_TIMEOUT, t)
            conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
            conn.set_option(ldap.OPT_X_TLS_PROTOCOL_MIN, ldap.OPT_X_TLS_PROTOCOL_TLS1_2)
            if s.ca_file is not None:
                conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(s.ca_file))
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # last: makes the TLS context from the above
        except (ldap.LDAPError, ValueError) as exc:
            raise DirectoryError("config", f"cannot set up {s.url}: {_describe(exc)}") from None
        if urlsplit(s.url).scheme == "ldaps":
            try:
                _probe_ldaps(s)
            except DirectoryError:
                with contextlib.suppress(ldap.LDAPError):
                    conn.unbind_s()
                raise
        self.conn = conn
        try:
            if s.start_tls:
                conn.start_tls_s()
        except ldap.SERVER_DOWN as exc:
            self.close()
            raise _down(s, exc) from None
        except ldap.LDAPError as exc:
            self.close()
            raise DirectoryError("tls", f"{s.url}: StartTLS failed: {_describe(exc)}") from None
        if not bind_password:
            self.close()
            raise DirectoryError("service_bind", "the service account's password is empty")
        try:
            conn.simple_bind_s(s.bind_dn, bind_password)
        except ldap.INVALID_CREDENTIALS:
            self.close()
            raise DirectoryError(
                "service_bind", f"the directory refused the service account {s.bind_dn}"
            ) from None
        except ldap.SERVER_DOWN as exc:
            self.close()
            raise _down(s, exc) from None
        except ldap.LDAPError as exc:
            self.close()
            raise DirectoryError("service_bind", f"{s.url}: {_describe(exc)}") from None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(ldap.LDAPError):
                self.conn.unbind_s()
            self.conn = None

    def __enter__(self) -> DirectoryConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- searches
    def _search(
        self, base: str, scope: int, filterstr: str, attrs: list[str], *, limit: int = 0
    ) -> list[tuple[str, dict[str, list[bytes]]]]:
        try:
            found = self.conn.search_ext_s(
                base,
                scope,
                filterstr,
                attrs,
                timeout=self.s.timeout_seconds,
                sizelimit=limit,
            )
        except ldap.NO_SUCH_OBJECT:
            return []
        except ldap.SIZELIMIT_EXCEEDED:
            raise DirectoryError("ambiguous", "more entries than expected") from None
        except ldap.LDAPError as exc:
            raise _operation_error(self.s, exc) from None
        # Referrals come back with a None DN: they are skipped (OPT_REFERRALS is off).
        return [(dn, attrs_) for dn, attrs_ in found if dn is not None]

    def _paged(
        self, base: str, filterstr: str, attrs: list[str]
    ) -> Iterator[tuple[str, dict[str, list[bytes]]]]:
        """A subtree search in pages (Active Directory answers 1,000 entries at most)."""
        page = SimplePagedResultsControl(True, size=PAGE_SIZE, cookie="")
        for _ in range(MAX_PAGES):
            try:
                msgid = self.conn.search_ext(
                    base, ldap.SCOPE_SUBTREE, filterstr, attrs, serverctrls=[page]
                )
                _t, found, _m, controls = self.conn.result3(msgid, timeout=self.s.timeout_seconds)
            except ldap.NO_SUCH_OBJECT:
                return
            except ldap.LDAPError as exc:
                raise _operation_error(self.s, exc) from None
            for dn, entry_attrs in found:
                if dn is not None:
                    yield dn, entry_attrs
            cookie = b""
            for control in controls or ():
                if control.controlType == SimplePagedResultsControl.controlType:
                    cookie = control.cookie
            if not cookie:
                return
            page.cookie = cookie
        raise DirectoryError("too_large", f"more than {MAX_PAGES * PAGE_SIZE} entries")

    def _user_attrs(self) -> list[str]:
        s = self.s
        attrs = [s.user_attribute]
        if s.membership == "memberof":
            attrs.append("memberOf")
        for extra in (s.mail_attribute, s.callback_number_attribute, s.certificate_attribute):
            if extra:
                attrs.append(extra)
        return attrs

    def find_user(self, name: str, *, resolve_groups: bool = True) -> DirectoryEntry | None:
        """The entry of this user name; None if there is none or more than one.

        Without resolve_groups the entry's groups are left empty (the caller has them cached).
        """
        s = self.s
        # RFC 4515: the name is a value in the filter, never filter syntax.
        filterstr = (
            f"(&{s.user_filter}({s.user_attribute}={ldap.filter.escape_filter_chars(name)}))"
        )
        try:
            # Two are enough to know the name is not one person's: never read more.
            found = self._search(
                s.user_base, ldap.SCOPE_SUBTREE, filterstr, self._user_attrs(), limit=2
            )
        except DirectoryError as exc:
            if exc.cause == "ambiguous":
                log.warning("directory: more than one entry for the user name %r", name)
                return None
            raise
        if len(found) != 1:
            return None
        dn, attrs = found[0]
        # The name must be the entry's own (a matching rule may fold case or spaces).
        if _text(_get(attrs, s.user_attribute)) != name:
            return None
        groups: frozenset[str] = frozenset()
        if resolve_groups:
            groups = self.group_closure(self._direct_groups(dn, attrs))
        return self._entry(dn, name, attrs, groups, self._is_disabled(dn))

    def _entry(
        self,
        dn: str,
        name: str,
        attrs: dict[str, list[bytes]],
        groups: frozenset[str],
        disabled: bool,
    ) -> DirectoryEntry:
        s = self.s
        cert = _get(attrs, s.certificate_attribute) if s.certificate_attribute else None
        return DirectoryEntry(
            dn=dn,
            name=name,
            disabled=disabled,
            groups=groups,
            mail=_text(_get(attrs, s.mail_attribute)) if s.mail_attribute else None,
            callback_number=(
                _text(_get(attrs, s.callback_number_attribute))
                if s.callback_number_attribute
                else None
            ),
            certificate=cert[0] if cert else None,
        )

    def _is_disabled(self, dn: str) -> bool:
        if self.s.disabled_filter is None:
            return False
        return bool(self._search(dn, ldap.SCOPE_BASE, self.s.disabled_filter, ["1.1"]))

    def check_password(self, dn: str, password: str) -> bool:
        """Bind as the entry; the connection is the user's afterwards, so this comes last."""
        if not password:
            # An empty password is an unauthenticated bind (RFC 4513 5.1.2), which servers
            # answer with success: it must never reach the server.
            return False
        try:
            self.conn.simple_bind_s(dn, password)
        except (ldap.INVALID_CREDENTIALS, ldap.UNWILLING_TO_PERFORM, ldap.INAPPROPRIATE_AUTH):
            return False
        except ldap.LDAPError as exc:
            raise _operation_error(self.s, exc) from None
        return True

    # -- groups
    def _group_base(self) -> str:
        if self.s.group_base:
            return self.s.group_base
        parent = ldap.dn.str2dn(self.s.user_base)[1:]
        return cast(str, ldap.dn.dn2str(parent)) if parent else self.s.user_base

    def _direct_groups(self, dn: str, attrs: dict[str, list[bytes]]) -> set[str]:
        if self.s.membership == "memberof":
            return {normalize_dn(v.decode("utf-8", "replace")) for v in _get(attrs, "memberOf")}
        return self._groups_with_members([dn])

    def _groups_with_members(self, dns: Iterable[str]) -> set[str]:
        s = self.s
        dns = list(dns)
        if not dns:
            return set()
        attr = s.member_attribute
        ors = "".join(f"({attr}={ldap.filter.escape_filter_chars(d)})" for d in dns)
        filterstr = f"(&{s.group_filter}(|{ors}))"
        found = self._search(self._group_base(), ldap.SCOPE_SUBTREE, filterstr, ["1.1"])
        return {normalize_dn(dn) for dn, _a in found}

    def group_closure(self, direct: set[str]) -> frozenset[str]:
        """The direct groups and every group they are nested in, to max_nesting levels."""
        seen = set(direct)
        level = set(direct)
        for _ in range(self.s.max_nesting):
            if not level or len(seen) > MAX_GROUPS:
                break
            if self.s.membership == "memberof":
                parents: set[str] = set()
                for group in level:
                    for _dn, attrs in self._search(
                        group, ldap.SCOPE_BASE, "(objectClass=*)", ["memberOf"]
                    ):
                        parents |= {
                            normalize_dn(v.decode("utf-8", "replace"))
                            for v in _get(attrs, "memberOf")
                        }
            else:
                parents = self._groups_with_members(sorted(level))
            level = parents - seen
            seen |= level
        return frozenset(seen)

    # -- the whole population, for sync
    def all_users(self) -> list[DirectoryEntry]:
        """Every entry under user_base matching user_filter, with groups and disabled flag."""
        s = self.s
        disabled: set[str] = set()
        if s.disabled_filter is not None:
            filterstr = f"(&{s.user_filter}{s.disabled_filter})"
            disabled = {normalize_dn(dn) for dn, _a in self._paged(s.user_base, filterstr, ["1.1"])}
        members_of: dict[str, set[str]] | None = None
        if s.membership == "search":
            members_of = self._group_members()
        parents_cache: dict[frozenset[str], frozenset[str]] = {}
        entries: list[DirectoryEntry] = []
        for dn, attrs in self._paged(s.user_base, s.user_filter, self._user_attrs()):
            name = _text(_get(attrs, s.user_attribute))
            if name is None:
                continue
            key = normalize_dn(dn)
            if members_of is not None:
                direct = {g for g, members in members_of.items() if key in members}
            else:
                direct = self._direct_groups(dn, attrs)
            frozen = frozenset(direct)
            if frozen not in parents_cache:
                parents_cache[frozen] = self.group_closure(direct)
            entries.append(self._entry(dn, name, attrs, parents_cache[frozen], key in disabled))
        return entries

    def _group_members(self) -> dict[str, set[str]]:
        """Group -> normalized member DNs, for every group under the group base."""
        s = self.s
        out: dict[str, set[str]] = {}
        for dn, attrs in self._paged(self._group_base(), s.group_filter, [s.member_attribute]):
            out[normalize_dn(dn)] = {
                normalize_dn(v.decode("utf-8", "replace")) for v in _get(attrs, s.member_attribute)
            }
        return out

    def probe(self) -> list[str]:
        """Read user_base (the service account can search); the configured groups not found."""
        found = self._search(self.s.user_base, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])
        if not found:
            raise DirectoryError("base", f"user_base {self.s.user_base} not found or not visible")
        return [
            g
            for g in self.s.groups
            if not self._search(g, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])
        ]


def _get(attrs: dict[str, list[bytes]], name: str | None) -> list[bytes]:
    if not name:
        return []
    want = name.lower()
    for key, values in attrs.items():
        if key.lower() == want:
            return values
    return []


def _describe(exc: BaseException) -> str:
    """python-ldap's error as one line: its desc and info, never the request."""
    if exc.args and isinstance(exc.args[0], dict):
        info = exc.args[0]
        text = str(info.get("desc", type(exc).__name__))
        extra = info.get("info")
        return f"{text} ({extra})" if extra else text
    return str(exc) or type(exc).__name__


def _probe_ldaps(s: LdapSettings) -> None:
    """Connect and finish a verified TLS handshake with the LDAPS port, within the timeout.

    libldap 2.5 bounds the TCP connect (OPT_NETWORK_TIMEOUT) but not the TLS handshake after
    it: a port that accepts and never answers (a balancer whose directory is down) left the
    worker thread spinning for good. Python's ssl bounds both, so a silent server fails here
    in timeout_seconds, and a certificate it would refuse is named as a TLS failure. (StartTLS
    is bounded by libldap's operation timeout.)
    """
    parts = urlsplit(s.url)
    host, port = parts.hostname or "", parts.port or 636
    ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with (
            socket.create_connection((host, port), timeout=s.timeout_seconds) as raw,
            ctx.wrap_socket(raw, server_hostname=host),
        ):
            pass
    except ssl.SSLCertVerificationError as exc:
        raise DirectoryError(
            "tls", f"{s.url}: TLS failed: {exc.verify_message or 'certificate not trusted'}"
        ) from None
    except ssl.SSLError as exc:
        raise DirectoryError("tls", f"{s.url}: TLS handshake failed ({exc.reason})") from None
    except TimeoutError:
        raise DirectoryError(
            "unreachable", f"{s.url}: no TLS answer within {s.timeout_seconds} s"
        ) from None
    except OSError as exc:
        raise DirectoryError("unreachable", f"{s.url}: {exc.strerror or exc}") from None


def _down(s: LdapSettings, exc: BaseException) -> DirectoryError:
    """Tell a refused TLS handshake from a directory that is not there.

    libldap built with GnuTLS (Debian) reports an untrusted certificate as "Can't contact
    LDAP server (unknown error code)", like a closed port; a TCP connection that opens
    where the LDAP session could not is what gives the TLS failure away.
    """
    text = _describe(exc)
    if any(w in text.lower() for w in ("certificate", "tls", "ssl", "handshake", "verif")):
        return DirectoryError("tls", f"{s.url}: TLS failed: {text}")
    parts = urlsplit(s.url)
    port = parts.port or (636 if parts.scheme == "ldaps" else 389)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=s.timeout_seconds):
            pass
    except OSError:
        return DirectoryError("unreachable", f"{s.url}: {text}")
    return DirectoryError(
        "tls",
        f"{s.url}: TLS handshake failed (certificate not trusted by ldap.ca_file,"
        " another host name, or no TLS on this port)",
    )


def _operation_error(s: LdapSettings, exc: BaseException) -> DirectoryError:
    if isinstance(exc, ldap.SERVER_DOWN | ldap.CONNECT_ERROR):
        return DirectoryError("unreachable", f"{s.url}: {_describe(exc)}")  # it went away
    if isinstance(exc, ldap.TIMEOUT | ldap.TIMELIMIT_EXCEEDED):
        return DirectoryError("timeout", f"{s.url}: no answer within {s.timeout_seconds} s")
    return DirectoryError("error", f"{s.url}: {_describe(exc)}")
