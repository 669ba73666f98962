"""Build frozen config dataclasses from YAML/dicts, validating every field.

Why not pydantic: the configs are small, frozen dataclasses keep the core dependency-free,
and one ~100-line validator gives the property we need — an error that names the field
and the allowed range in one line (``ConfigError``), and unknown keys rejected.

Range limits live next to the field they constrain::

    max_replicas: int = field(default=4, metadata=bounds(1, 64, "replicas the GPU can hold"))
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from ecrl.errors import ConfigError

T = TypeVar("T")


def bounds(lo: float | None = None, hi: float | None = None, doc: str = "") -> dict[str, Any]:
    """Field metadata: inclusive numeric range (None = open) and a one-line doc."""
    return {"lo": lo, "hi": hi, "doc": doc}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a syntax error or non-mapping becomes a ConfigError."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(str(p), "<file>", "file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<yaml>"
        raise ConfigError(str(p), where, f"invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(p), "<root>", f"expected a mapping, got {type(data).__name__}")
    return data


def from_file(cls: type[T], path: str | Path) -> T:
    """Load and validate a config dataclass from a YAML file."""
    return from_mapping(cls, load_yaml(path), source=str(path))


def from_mapping(
    cls: type[T], data: Mapping[str, Any], source: str = "<config>", prefix: str = ""
) -> T:
    """Validate ``data`` against dataclass ``cls`` and build it (recursively)."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            source, prefix or "<root>", f"expected a mapping, got {type(data).__name__}"
        )
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{prefix}{unknown[0]}"
        raise ConfigError(source, name, f"unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        path = f"{prefix}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(source, path, "required field is missing")
            continue
        value = _coerce(hints[name], data[name], source, path)
        _check_bounds(f.metadata, value, source, path)
        kwargs[name] = value
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError:
            raise
        except ValueError as exc:  # validate() raises ValueError("field: problem")
            field_name, _, problem = str(exc).partition(": ")
            raise ConfigError(source, f"{prefix}{field_name}", problem or str(exc)) from None
    return obj


def _check_bounds(meta: Mapping[str, Any], value: Any, source: str, path: str) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is None and hi is None:
        return
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, int | float):
            continue
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(source, path, f"{v!r} is outside the allowed range {rng}")


def _coerce(tp: Any, value: Any, source: str, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, path)
            except ConfigError as exc:
                errors.append(exc.problem)
        raise ConfigError(source, path, "; ".join(errors))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(source, path, f"{value!r} is not one of {list(allowed)}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(source, path, f"expected a list, got {type(value).__name__}")
        item_tp = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item_tp is None and len(args) != len(value):
            raise ConfigError(source, path, f"expected {len(args)} items, got {len(value)}")
        return tuple(
            _coerce(item_tp if item_tp is not None else args[i], v, source, f"{path}[{i}]")
            for i, v in enumerate(value)
        )
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, source, prefix=f"{path}.")  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(source, path, f"expected a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise ConfigError(source, path, f"expected a finite number, got {value!r}")
        return v
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, path, f"expected a string, got {type(value).__name__}")
        return value
    if tp is Any:
        return value
    raise ConfigError(source, path, f"unsupported field type {tp!r}")
