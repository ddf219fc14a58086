"""Bind safely loaded YAML onto frozen dataclasses, reporting every problem with its line and key.

The binder works on PyYAML's node graph (not on plain dicts) so that each value keeps the line
it came from. It collects all problems instead of stopping at the first, because an operator
fixing a config wants the whole list at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file."""

    line: int
    key: str
    message: str

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.line}"
        return f"{where} {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found in one config file."""

    def __init__(self, filename: str, issues: list[ConfigIssue]) -> None:
        self.filename = filename
        self.issues = tuple(sorted(issues, key=lambda i: (i.line, i.key)))
        super().__init__("\n".join(i.format(filename) for i in self.issues))

    def lines(self) -> list[str]:
        return [i.format(self.filename) for i in self.issues]


@dataclass(frozen=True, repr=False)
class Secret:
    """A secret read from a file (`NAME_file`) or the environment (`NAME_env`); never inline."""

    origin: str
    value: bytes = field(repr=False, compare=False)

    def __repr__(self) -> str:
        return f"Secret({self.origin})"

    def text(self) -> str:
        return self.value.decode("utf-8")


def int_range(lo: int, hi: int) -> dict[str, Any]:
    """Field metadata: an integer between lo and hi inclusive."""
    return {"min": lo, "max": hi}


PORT = int_range(1, 65535)


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a value"


class _Binder:
    """Walks one YAML document against a dataclass schema."""

    def __init__(self, loader: yaml.SafeLoader, base_dir: Path, env: Mapping[str, str]) -> None:
        self.loader = loader
        self.base_dir = base_dir
        self.env = env
        self.issues: list[ConfigIssue] = []
        self.lines: dict[str, int] = {}
        self.key_lines: dict[str, int] = {}

    def problem(self, node: yaml.Node | None, key: str, message: str, line: int = 0) -> None:
        if node is not None:
            line = node.start_mark.line + 1
        self.issues.append(ConfigIssue(line, key, message))

    def _owner_line(self, path: str, node: yaml.Node) -> int:
        """The line of the key that holds a mapping (a block mapping starts at its first child)."""
        return self.key_lines.get(path, node.start_mark.line + 1)

    def scalar(self, node: yaml.Node) -> object:
        return self.loader.construct_object(node, deep=True)

    def mapping_items(self, node: yaml.MappingNode, path: str) -> Iterator[tuple[str, yaml.Node]]:
        self.loader.flatten_mapping(node)  # honour YAML merge keys (<<)
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = self.scalar(key_node)
            if not isinstance(key, str):
                self.problem(key_node, path, f"keys must be strings, got {_describe(key)}")
                continue
            if key in seen:
                self.problem(key_node, _join(path, key), "duplicate key")
                continue
            seen.add(key)
            self.key_lines[_join(path, key)] = key_node.start_mark.line + 1
            yield key, value_node

    def bind(self, tp: Any, node: yaml.Node, path: str, meta: Mapping[str, Any]) -> Any:
        """Convert node to tp; on a problem record it and return None."""
        self.lines[path] = self.key_lines.get(path, node.start_mark.line + 1)
        if node.tag not in _PLAIN_TAGS:
            # Only plain data: a tag such as !!python/object is refused, never constructed.
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.problem(node, path, f"YAML tag '{tag}' is not allowed here")
            return None
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            nullable = len(options) < len(typing.get_args(tp))
            if nullable and isinstance(node, yaml.ScalarNode) and self.scalar(node) is None:
                return None
            if len(options) == 1:
                return self.bind(options[0], node, path, meta)
            raise TypeError(f"unsupported union {tp}")  # schema bug, not user input
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.bind_dataclass(tp, node, path)
        if origin is tuple:
            (item_tp, _ellipsis) = typing.get_args(tp)
            if not isinstance(node, yaml.SequenceNode):
                self.problem(node, path, f"expected a list, got {_node_kind(node)}")
                return None
            items = [
                self.bind(item_tp, child, f"{path}[{i}]", meta)
                for i, child in enumerate(node.value)
            ]
            return tuple(items)
        if origin is dict:
            (_key_tp, value_tp) = typing.get_args(tp)
            if not isinstance(node, yaml.MappingNode):
                self.problem(node, path, f"expected a mapping, got {_node_kind(node)}")
                return None
            return {
                key: self.bind(value_tp, child, _join(path, key), meta)
                for key, child in self.mapping_items(node, path)
            }
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, path, f"expected {_expect(tp, meta)}, got {_node_kind(node)}")
            return None
        return self.bind_scalar(tp, node, path, meta)

    def bind_scalar(
        self, tp: Any, node: yaml.ScalarNode, path: str, meta: Mapping[str, Any]
    ) -> Any:
        value = self.scalar(node)
        expect = _expect(tp, meta)
        if typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
            if value in choices:
                return value
            self.problem(node, path, f"expected {expect}, got {_describe(value)}")
            return None
        if tp is bool:
            if isinstance(value, bool):
                return value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                lo, hi = meta.get("min"), meta.get("max")
                if (lo is None or value >= lo) and (hi is None or value <= hi):
                    return value
        elif tp is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                lo, hi = meta.get("min"), meta.get("max")
                if (lo is None or value >= lo) and (hi is None or value <= hi):
                    return float(value)
        elif tp is str:
            # Accept numbers written bare (a hostname like 10.0.0.1 is a str anyway).
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                text = node.value if not isinstance(value, str) else value
                if text or meta.get("allow_empty"):
                    return text
        elif tp is Path:
            if isinstance(value, str) and value:
                p = Path(value).expanduser()
                return p if p.is_absolute() else self.base_dir / p
        else:
            raise TypeError(f"unsupported field type {tp}")  # schema bug, not user input
        self.problem(node, path, f"expected {expect}, got {_describe(value)}")
        return None

    def bind_dataclass(self, cls: type[T], node: yaml.Node, path: str) -> T | None:
        if isinstance(node, yaml.ScalarNode) and self.scalar(node) is None:
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, f"expected a mapping, got {_node_kind(node)}")
            return None
        hints = typing.get_type_hints(cls)
        fields = {
            f.name: f
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.init and not f.metadata.get("internal")
        }
        given = dict(self.mapping_items(node, path))
        accepted: set[str] = set()
        values: dict[str, Any] = {}
        ok = True
        for name, f in fields.items():
            tp = hints[name]
            if _is_secret(tp):
                accepted |= {name, f"{name}_file", f"{name}_env"}
                if name in given:
                    self.problem(
                        given[name],
                        _join(path, name),
                        f"secrets are not accepted inline; use {name}_file or {name}_env",
                    )
                    ok = False
                    continue
                secret = self.bind_secret(name, given, path, node)
                if secret is None and not _optional(tp):
                    if f"{name}_file" not in given and f"{name}_env" not in given:
                        self.issues.append(
                            ConfigIssue(
                                self._owner_line(path, node),
                                path,
                                f"missing {name}_file or {name}_env",
                            )
                        )
                    ok = False
                    continue
                values[name] = secret
                continue
            accepted.add(name)
            if name in given:
                bound = self.bind(tp, given[name], _join(path, name), f.metadata)
                if bound is None and not _optional(tp):
                    ok = False
                    continue
                values[name] = bound
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if dataclasses.is_dataclass(tp):
                    # A section whose keys all have defaults may be left out entirely.
                    empty = yaml.MappingNode(
                        "tag:yaml.org,2002:map", [], node.start_mark, node.end_mark
                    )
                    bound = self.bind(tp, empty, _join(path, name), f.metadata)
                    if bound is not None:
                        values[name] = bound
                        continue
                self.issues.append(
                    ConfigIssue(
                        self._owner_line(path, node), _join(path, name), "missing required key"
                    )
                )
                ok = False
        for key in given:
            if key not in accepted:
                hint = difflib.get_close_matches(key, sorted(accepted), n=1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                # Point at the key's own line: its value may start on the next line.
                self.issues.append(
                    ConfigIssue(_key_line(node, key), _join(path, key), f"unknown key{extra}")
                )
                ok = False
        if not ok:
            return None
        return cls(**values)

    def bind_secret(
        self, name: str, given: dict[str, yaml.Node], path: str, parent: yaml.Node
    ) -> Secret | None:
        file_node, env_node = given.get(f"{name}_file"), given.get(f"{name}_env")
        if file_node is not None and env_node is not None:
            self.problem(
                env_node, _join(path, f"{name}_env"), f"give {name}_file or {name}_env, not both"
            )
            return None
        if file_node is not None:
            key = _join(path, f"{name}_file")
            p = self.bind(Path, file_node, key, {})
            if p is None:
                return None
            try:
                data = Path(p).read_bytes()
            except OSError as exc:
                self.problem(file_node, key, f"cannot read secret file '{p}': {exc.strerror}")
                return None
            data = data.rstrip(b"\r\n")
            if not data:
                self.problem(file_node, key, f"secret file '{p}' is empty")
                return None
            return Secret(f"file {p}", data)
        if env_node is not None:
            key = _join(path, f"{name}_env")
            var = self.bind(str, env_node, key, {})
            if var is None:
                return None
            value = self.env.get(var)
            if not value:
                self.problem(env_node, key, f"environment variable {var} is not set or empty")
                return None
            return Secret(f"env {var}", value.encode("utf-8"))
        return None


_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")
)


def _key_line(node: yaml.MappingNode, key: str) -> int:
    for key_node, _value in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return int(key_node.start_mark.line) + 1
    return int(node.start_mark.line) + 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(tp)


def _is_secret(tp: Any) -> bool:
    if _optional(tp):
        return any(a is Secret for a in typing.get_args(tp))
    return tp is Secret


def _expect(tp: Any, meta: Mapping[str, Any]) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if tp is bool:
        return "true or false"
    if tp in (int, float):
        noun = "an integer" if tp is int else "a number"
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and hi is not None:
            return f"{noun} {lo}-{hi}"
        if lo is not None:
            return f"{noun} >= {lo}"
        return noun
    if tp is Path:
        return "a file or directory path"
    if tp is str:
        return "a string"
    return str(tp)


def load_yaml_into(
    cls: type[T], text: str, filename: str, base_dir: Path, env: Mapping[str, str] | None = None
) -> tuple[T, dict[str, int]]:
    """Parse text with the safe loader and bind it onto cls; raise ConfigError listing every problem.

    Returns the object and a map from dotted key to line, for later cross-field checks.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 0
            problem = exc.problem or exc.context or "invalid YAML"
            raise ConfigError(
                filename, [ConfigIssue(line, "", f"YAML syntax error: {problem}")]
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(filename, [ConfigIssue(0, "", f"YAML error: {exc}")]) from None
        if node is None:
            raise ConfigError(filename, [ConfigIssue(1, "", "the file is empty")])
        binder = _Binder(loader, base_dir, os.environ if env is None else env)
        try:
            result = binder.bind_dataclass(cls, node, "")
        except yaml.constructor.ConstructorError as exc:
            mark = exc.problem_mark
            line = mark.line + 1 if mark is not None else 0
            raise ConfigError(
                filename, [ConfigIssue(line, "", f"YAML error: {exc.problem}")]
            ) from None
        if binder.issues or result is None:
            raise ConfigError(filename, binder.issues or [ConfigIssue(1, "", "invalid config")])
        return result, binder.lines
    finally:
        loader.dispose()
