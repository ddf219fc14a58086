"""Server-rendered HTML: string.Template files where every value is escaped unless it is Markup.

No template engine: the pages are small, and one rule (escape everything, mark the few
trusted fragments) is easy to check.
"""

from __future__ import annotations

import html
import string
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources


class Markup(str):
    """HTML that is already safe: made by fill()/page() or by a trusted renderer (the QR SVG)."""

    __slots__ = ()


def esc(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(html.escape(str(value), quote=True))


def fill(template: str, **values: object) -> Markup:
    """A fragment: $name replaced by the escaped value (Markup as it is)."""
    return Markup(string.Template(template).substitute({k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[Markup]) -> Markup:
    return Markup("".join(parts))


@cache
def _template(name: str) -> string.Template:
    text = (resources.files("roamgate.web") / "templates" / f"{name}.html").read_text("utf-8")
    return string.Template(text)


def page(name: str, values: Mapping[str, object]) -> Markup:
    """A template file from roamgate/web/templates, every value escaped."""
    return Markup(_template(name).substitute({k: esc(v) for k, v in values.items()}))
