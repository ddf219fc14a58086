"""Splitting "password followed by code" from one password field (IMAP LOGIN, SASL PLAIN).

Mail clients have one password field, so the code rides at its end. A password may itself end in
digits, so the split is a list of candidates for the caller to rank (by which suffix is a code the
user actually has), not a single guess.
"""

from __future__ import annotations

from collections.abc import Iterable


def split_candidates(combined: str, code_lengths: Iterable[int]) -> list[tuple[str, str]]:
    """(password, code) pairs whose code is an all-digit suffix of one of the lengths, longest first.

    The password part must not be empty: a field of digits only is not a password and a code.
    """
    out: list[tuple[str, str]] = []
    for n in sorted(set(code_lengths), reverse=True):
        if n <= 0 or len(combined) <= n:
            continue
        suffix = combined[-n:]
        if suffix.isascii() and suffix.isdigit():
            out.append((combined[:-n], suffix))
    return out
