"""Apply ``key=value`` overrides to a frozen config, with type checks; serialise configs to and from JSON.

Errors name the key, the value and what was expected, e.g.::

    ConfigError: train.stepz: no such key in section 'train' (did you mean 'steps'?)
    ConfigError: train.steps='ten': expected an integer
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from typing import Any, Iterable


from medjax.errors import ConfigError  # noqa: E402  (re-exported)


def _field_types(dc_type) -> dict[str, Any]:
    hints = typing.get_type_hints(dc_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(dc_type)}


def _parse_scalar(key: str, text: str, typ) -> Any:
    text = text.strip()
    if typ is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a boolean (true/false)")
    if typ is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected an integer") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a number") from None
    if typ is str:
        return text
    raise ConfigError(f"{key}: values of type {typ} cannot be set from the command line")


def _coerce(key: str, value: Any, typ) -> Any:
    """Convert ``value`` (a string from the CLI, or a JSON value) to ``typ``; raise ConfigError if impossible."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0])
    if origin is tuple:
        args = typing.get_args(typ)
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            items: list = [] if not text else [t for t in text.replace("x", ",").split(",")] if _all_numeric(args) else text.split(",")
        else:
            items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(items))
        if len(items) != len(args):
            raise ConfigError(f"{key}={value!r}: expected {len(args)} comma-separated values")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(items, args)))
    if isinstance(value, str):
        return _parse_scalar(key, value, typ)
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ is bool and isinstance(value, bool):
        return value
    if typ is str and isinstance(value, str):
        return value
    if dataclasses.is_dataclass(typ) and isinstance(value, dict):
        return from_dict(typ, value, prefix=key)
    raise ConfigError(f"{key}={value!r}: expected {getattr(typ, '__name__', typ)}")


def _all_numeric(args) -> bool:
    inner = [a for a in args if a is not Ellipsis]
    return all(a in (int, float) for a in inner)


def apply_overrides(cfg, overrides: Iterable[str]):
    """Return ``cfg`` with each ``"section.field=value"`` applied. Raises :class:`ConfigError` naming the key."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r}: overrides look like key=value, e.g. train.steps=100")
        key, value = item.split("=", 1)
        cfg = set_value(cfg, key.strip(), value)
    return cfg


def set_value(cfg, key: str, value: Any):
    """Set dotted ``key`` (e.g. ``"model.variant"``) to ``value`` (string or typed), type-checked."""
    parts = key.split(".")
    return _set(cfg, parts, value, key)


def _set(node, parts: list[str], value, full_key: str):
    types_ = _field_types(type(node))
    name = parts[0]
    if name not in types_:
        section = type(node).__name__
        close = difflib.get_close_matches(name, list(types_), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(types_)}"
        raise ConfigError(f"{full_key}: no such key {name!r} in {section}{hint}")
    typ = types_[name]
    if len(parts) == 1:
        if dataclasses.is_dataclass(typ):
            raise ConfigError(f"{full_key}: is a section; set one of its keys, e.g. {full_key}.{next(iter(_field_types(typ)))}=...")
        return dataclasses.replace(node, **{name: _coerce(full_key, value, typ)})
    child = getattr(node, name)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"{full_key}: {name!r} is a value, not a section")
    return dataclasses.replace(node, **{name: _set(child, parts[1:], value, full_key)})


def to_dict(cfg) -> dict:
    """A JSON-serialisable dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(dc_type, data: dict, prefix: str = ""):
    """Build ``dc_type`` from a dict (e.g. loaded JSON); unknown keys raise, missing keys take defaults."""
    types_ = _field_types(dc_type)
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else k
        if k not in types_:
            raise ConfigError(f"{full}: no such key in {dc_type.__name__}")
        kwargs[k] = _coerce(full, v, types_[k])
    return dc_type(**kwargs)


def to_json(cfg) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
