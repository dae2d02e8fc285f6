"""Typed settings built from parsed YAML: dataclasses filled field by field, refusing unknown
keys and wrong types with a one-line ConfigError naming the key (config.py's loader)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from bulkbackup.errors import ConfigError, one_line


def read_mapping(file: Path) -> dict[str, Any]:
    """The YAML mapping in ``file`` ({} when it is empty); ConfigError in one line."""
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config {file}: not UTF-8 text "
                          f"(byte {exc.start + 1})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read config {file}: {yaml_reason(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {file}: {exc.strerror or one_line(exc)}"
                          ) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config {file}: top level must be a mapping")
    return loaded or {}


_T = typing.TypeVar("_T")


def build(cls: type[_T], raw: object, where: str) -> _T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config {where or 'top level'}: expected a mapping")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key: {name}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        path = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(typing.cast(type, hint), value or {}, path)
        else:
            kwargs[name] = _coerce(hint, value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: object, path: str) -> object:
    if value is None:
        raise ConfigError(f"config {path}: a value is required")
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config {path}: expected a list of strings")
        return tuple(value)
    if isinstance(hint, types.UnionType):
        raise ConfigError(f"config {path}: unsupported type")  # pragma: no cover
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {path}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config {path}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config {path}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config {path}: expected a string")
        return value
    raise ConfigError(f"config {path}: unsupported type")  # pragma: no cover


def yaml_reason(exc: yaml.YAMLError) -> str:
    """The parser's problem and where it is (line and column, 1-based)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or one_line(exc)
    if mark is None:
        return one_line(exc)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
