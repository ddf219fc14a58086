"""THREAT_MODEL.md names tests that exist: every `file::test` in a table's test column is real.

A threat is only as covered as the test it names; a renamed or deleted test must not leave the
threat model pointing at nothing. Forms understood in the test column: `tests/x/test_y.py::name`,
`test_y.py::name` (a file name unique under tests/), `::name` (the last file named in the same
cell), `name[param]`, and a bare file or directory path, which must exist.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "THREAT_MODEL.md"
_TOKEN = re.compile(r"`([^`]+)`")


@cache
def _test_files() -> dict[str, list[Path]]:
    by_name: dict[str, list[Path]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        by_name.setdefault(path.name, []).append(path)
    return by_name


def _resolve(file: str) -> Path | None:
    if "/" in file:
        path = ROOT / file
        return path if path.exists() else None
    found = _test_files().get(file, [])
    return found[0] if len(found) == 1 else None


def _defines(path: Path, name: str) -> bool:
    text = path.read_text(encoding="utf-8")
    return re.search(rf"^(async )?def {re.escape(name)}\(", text, re.M) is not None


def references() -> list[tuple[int, str]]:
    """(line number, token) for every test reference in the test column of a STRIDE table."""
    out = []
    for number, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 4 or set(cells[-1]) <= {"-", " "}:
            continue
        if cells[-1] == "test":
            continue
        out += [(number, token) for token in _TOKEN.findall(cells[-1])]
    return out


def check(refs: list[tuple[int, str]]) -> list[str]:
    problems = []
    last: dict[int, Path] = {}
    for number, token in refs:
        if "::" in token:
            file, name = token.split("::", 1)
            name = name.split("[", 1)[0]
            path = _resolve(file) if file else last.get(number)
            if path is None:
                problems.append(f"line {number}: no such test file for `{token}`")
                continue
            last[number] = path
            if not _defines(path, name):
                problems.append(f"line {number}: {path.relative_to(ROOT)} has no {name}")
        elif token.endswith(".py") or token.startswith(("tests/", "roamgate/")):
            path = _resolve(token)
            if path is None:
                problems.append(f"line {number}: `{token}` does not exist")
            else:
                last[number] = path
    return problems


def test_every_test_the_threat_model_names_exists() -> None:
    refs = references()
    assert len(refs) > 50, "the parser found too few references: has the table format changed?"
    assert check(refs) == []


def test_the_checker_catches_a_missing_test() -> None:
    assert check([(1, "tests/test_login.py::test_no_such_thing")]) == [
        "line 1: tests/test_login.py has no test_no_such_thing"
    ]
    assert check([(2, "test_nowhere.py::test_x")]) == [
        "line 2: no such test file for `test_nowhere.py::test_x`"
    ]
    assert check([(3, "test_login.py::test_password_and_code_log_in_once"), (3, "::nope")]) == [
        "line 3: tests/test_login.py has no nope"
    ]
