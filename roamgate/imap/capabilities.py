"""Which capabilities the proxy announces: its own before login, an allow-list after.

After login the client sees the upstream's capabilities, but only those the proxy can relay
faithfully. A capability that changes the byte stream (COMPRESS), the login (AUTH=, STARTTLS,
LOGINDISABLED) or lets the server talk out of turn in ways the relay does not follow (NOTIFY)
is withheld until the proxy implements it; anything unknown is withheld by default. The proxy
adds what it implements itself toward the client (COMPRESS=DEFLATE), whatever the upstream has.
"""

from __future__ import annotations

# Exact names, upper case.
_RELAYABLE = frozenset(
    {
        "IMAP4REV1",
        "IMAP4REV2",
        "LITERAL+",
        "LITERAL-",
        "SASL-IR",
        "ID",
        "ENABLE",
        "IDLE",
        "NAMESPACE",
        "UIDPLUS",
        "UNSELECT",
        "CHILDREN",
        "LIST-EXTENDED",
        "LIST-STATUS",
        "SPECIAL-USE",
        "CREATE-SPECIAL-USE",
        "MOVE",
        "ESEARCH",
        "ESORT",
        "SEARCHRES",
        "SORT",
        "SORT=DISPLAY",
        "WITHIN",
        "CONDSTORE",
        "QRESYNC",
        "BINARY",
        "MULTIAPPEND",
        "CATENATE",
        "I18NLEVEL=1",
        "STATUS=SIZE",
        "SAVEDATE",
        "OBJECTID",
        "PREVIEW",
        "SNIPPET=FUZZY",
        "QUOTA",
        "QUOTA=RES-STORAGE",
        "QUOTA=RES-MESSAGE",
        "ACL",
        "RIGHTS=TEKX",
        "METADATA",
        "METADATA-SERVER",
        "APPENDLIMIT",
        "UTF8=ACCEPT",
        "LOGIN-REFERRALS",
        "MAILBOX-REFERRALS",
        "FUZZY",
        "CONTEXT=SEARCH",
        "CONTEXT=SORT",
    }
)
# Families with a parameter after "=" (APPENDLIMIT=35651584, THREAD=REFERENCES, SORT=...).
_RELAYABLE_PREFIXES = ("THREAD=", "APPENDLIMIT=", "I18NLEVEL=", "CONTEXT=", "RIGHTS=")


def relayable(capability: str) -> bool:
    name = capability.upper()
    return name in _RELAYABLE or name.startswith(_RELAYABLE_PREFIXES)


def filter_upstream(capabilities: list[str]) -> list[str]:
    """The upstream's post-login capabilities the proxy may pass on, in the upstream's order."""
    return [c for c in capabilities if relayable(c)]


# Extensions the proxy itself implements toward the client after login (never the upstream's).
PROXY_POSTLOGIN = ("COMPRESS=DEFLATE",)


def postlogin(upstream: list[str], *, compress: bool = True) -> list[str]:
    """What a logged-in client is told: the relayable upstream capabilities, then the proxy's.

    compress=False: the link compresses already (an SSH tunnel with zlib), so COMPRESS=DEFLATE
    would only cost a round trip and deflate deflated bytes.
    """
    own = [c for c in PROXY_POSTLOGIN if compress or not c.startswith("COMPRESS=")]
    return filter_upstream(upstream) + own


def prelogin(*, tls_active: bool) -> list[str]:
    """The proxy's own capabilities before login (RFC 3501 7.2.1, RFC 4959, RFC 2971)."""
    caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
    if tls_active:
        caps.append("AUTH=PLAIN")
    else:
        # No login and no SASL mechanism before the connection is protected.
        caps += ["STARTTLS", "LOGINDISABLED"]
    return caps
