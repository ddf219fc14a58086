"""Store URLs: which backend a URL names, what is wrong with it, and how to show it safely.

A postgresql:// URL may carry a password. Every message that names a URL goes through
redact(), so the password never reaches a log, an error line or the audit trail.
"""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres(url: str) -> bool:
    return url.startswith(tuple(f"{s}://" for s in POSTGRES_SCHEMES))


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError:
        return None
    return parts


def redact(url: str) -> str:
    """The URL with any password replaced by ***; a URL that cannot be read shows no userinfo."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    authority, sep, tail = rest.partition("/")
    if "@" not in authority:
        return url
    userinfo, _, hostport = authority.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    shown = f"{user}:***" if has_password else user
    return f"{scheme}://{shown}@{hostport}{sep}{tail}"


def url_problem(url: str) -> str | None:
    """Why a store URL cannot be used, or None. The text never repeats a password."""
    if "://" not in url:
        return None if url.strip() else "is empty; give a SQLite file path or a postgresql:// URL"
    scheme = url.split("://", 1)[0]
    if scheme not in POSTGRES_SCHEMES:
        return (
            f"unsupported scheme {scheme!r}: use a SQLite file path or a postgresql:// URL"
            f" ({redact(url)})"
        )
    parts = _split(url)
    if parts is None:
        return f"is not a valid PostgreSQL URL (the port must be a number): {redact(url)}"
    if not parts.path.strip("/") or "/" in parts.path.strip("/"):
        return (
            f"names no database: postgresql://USER@HOST:PORT/DATABASE expected, got {redact(url)}"
        )
    if not parts.hostname and "host=" not in parts.query:
        return f"names no host: postgresql://USER@HOST:PORT/DATABASE expected, got {redact(url)}"
    return None


def split_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password or None)."""
    if "://" not in url:
        return url, None
    scheme, rest = url.split("://", 1)
    authority, sep, tail = rest.partition("/")
    if "@" not in authority:
        return url, None
    userinfo, _, hostport = authority.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    if not has_password:
        return url, None
    return f"{scheme}://{user}@{hostport}{sep}{tail}", unquote(password)
