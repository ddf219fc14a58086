"""Printed backup codes: ten single-use numeric codes, a one-time-pad sheet, and their check format.

Codes are digits only so they can be typed on a phone keypad and appended to a password in an
IMAP login like a one-time code; ten digits (33 bits) keeps them apart from 6-8 digit OTPs and,
with the lockout's hard limit of fewer than 100 tries, out of reach of guessing.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from roamgate.auth.otp import normalize_code

CODE_COUNT = 10
CODE_DIGITS = 10


def generate() -> list[str]:
    """Ten fresh codes from the OS's CSPRNG, all different."""
    codes: set[str] = set()
    while len(codes) < CODE_COUNT:
        codes.add(f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}")
    return sorted(codes)


def display(code: str) -> str:
    """12345-67890: halves are easier to read aloud and to type."""
    half = CODE_DIGITS // 2
    return f"{code[:half]}-{code[half:]}"


def parse(text: str) -> str | None:
    """The canonical code from what a user typed (spaces and dashes ignored), or None."""
    cleaned = normalize_code(text)
    if cleaned is None or len(cleaned) != CODE_DIGITS:
        return None
    return cleaned


def sheet(user: str, codes: Sequence[str], issued: str, gateway: str) -> str:
    """A printable one-time-pad sheet: each code works once; strike it through when used."""
    lines = [
        f"roamgate backup codes for {user} at {gateway}",
        f"issued {issued}; these replace any earlier sheet",
        "",
        "Each code works once, in place of the one-time code from your token.",
        "Strike a code through when you have used it. Keep this sheet apart from your laptop.",
        "",
    ]
    for i, code in enumerate(codes, start=1):
        lines.append(f"  [ ] {i:2d}.  {display(code)}")
    lines.append("")
    return "\n".join(lines)
