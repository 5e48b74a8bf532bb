"""Config plumbing: dataclasses <-> YAML, dotted overrides, type checking.

Every config in lightseek is a dataclass whose fields carry a ``help`` text in their metadata
(the same text is the CLI help). This module turns nested dicts (from YAML files and
``--section.key=value`` overrides) into those dataclasses, and rejects unknown keys and values
of the wrong type with an error that names the dotted key at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from lightseek.errors import ConfigError

T = TypeVar("T")


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with a help text (shown by the CLI and in docs)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


class _IntText(int):
    """An override's number that keeps the text it was written as, for keys that take text."""

    text: str


class _FloatText(float):
    text: str


class _BoolText:
    """An override's true/false (YAML also reads yes/no/on/off so), with its text."""

    def __init__(self, value: bool, text: str) -> None:
        self.value, self.text = value, text

    def __repr__(self) -> str:
        return repr(self.value)


def _scalar(raw: str) -> Any:
    """An override's value: a YAML scalar, list or mapping; a number or true/false keeps its text
    beside it, so that a key that takes text reads ``--out_dir=2024`` as '2024' (1.50 as '1.50',
    yes as 'yes')."""
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, bool):
        return _BoolText(value, raw)
    if not isinstance(value, (int, float)):
        return value
    number = (_IntText if isinstance(value, int) else _FloatText)(value)
    number.text = raw
    return number


def _plain(value: Any) -> Any:
    """``value`` with every kept override text dropped (plain ints and floats, for YAML and JSON)."""
    if isinstance(value, _IntText):
        return int(value)
    if isinstance(value, _FloatText):
        return float(value)
    if isinstance(value, _BoolText):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow int -> float. Raise ConfigError."""
    origin = get_origin(tp)
    if isinstance(value, (_IntText, _FloatText, _BoolText)):
        if tp is str:
            return value.text
        if isinstance(value, _BoolText):
            value = value.value
    if tp is Any:
        return _plain(value)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(
                f"config key '{key}': {value!r} is not one of {', '.join(map(repr, get_args(tp)))}"
            )
        return _plain(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return _plain(dict(value))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a section (mapping), got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        hint = f" (in a YAML file, quote it: '{value}')" if isinstance(value, (int, float, bool)) else ""
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}{hint}")
    return _plain(value)


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"did you mean '{prefix}{close[0]}'?" if close else "`lightseek config` lists every key"
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' ({hint})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}': {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict for JSON/YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def parse_overrides(args: list[str]) -> dict:
    """``['--train.lr=3e-4', '--model.n_layers', '4']`` -> nested dict. Values are YAML scalars."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) <= 2:
            raise ConfigError(f"unexpected argument '{arg}' (overrides look like --section.key=value)")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override '{arg}' has no value (use {arg}=VALUE)")
            key, raw = arg[2:], args[i + 1]
            i += 1
        i += 1
        key = key.replace("-", "_")
        value = _scalar(raw)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '--{key}' conflicts with another override")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def build(cls: type[T], config_path: str | Path | None = None, overrides: list[str] | None = None,
          base: dict | None = None) -> T:
    """Defaults <- ``base`` <- YAML file <- dotted overrides, validated into ``cls``."""
    data = dict(base or {})
    if config_path:
        data = deep_merge(data, load_yaml(config_path))
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def build_section(cls: type[T], section: str, config_path: str | Path | None = None,
                  overrides: list[str] | None = None):
    """The ``section`` of ``cls`` (a dataclass with that one field): the YAML file's section of
    that name (its other sections ignored, so one recipe can serve several commands), then
    dotted overrides (``--section.key=value``)."""
    base = {section: load_yaml(config_path).get(section) or {}} if config_path else None
    return getattr(build(cls, None, overrides, base=base), section)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field, for CLI help and docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, prefix + f.name + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((prefix + f.name, default, f.metadata.get("help", "")))
    return rows
