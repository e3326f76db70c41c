"""Typed config objects loaded from YAML, with errors that name the bad field.

A config is a tree of dataclasses. YAML keys are the camelCase form of the
field names (KubeEdge's style) unless a field says ``metadata={"key": ...}``.
Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from moorage import yamlio
from moorage.durations import parse_seconds
from moorage.errors import ConfigError, ManifestError

T = TypeVar("T")


def duration(default: float, key: str | None = None) -> Any:
    """A field given in YAML as a duration ("15s", "24h" or plain seconds), held as seconds."""
    meta: dict[str, Any] = {"duration": True}
    if key:
        meta["key"] = key
    return dataclasses.field(default=default, metadata=meta)


def key(name: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field whose YAML key is not the camelCase of its name (``tlsCAFile``)."""
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"key": name}, **kwargs)


def yaml_key(f: dataclasses.Field[Any]) -> str:
    if "key" in f.metadata:
        return str(f.metadata["key"])
    head, *rest = f.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _convert(kind: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, where)
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, where)  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str) and item is str:
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if kind is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return str(value)
    raise ConfigError(f"{where}: unsupported config type {kind!r}")  # a bug of ours


def from_mapping(cls: type[T], data: Any, where: str = "") -> T:
    """Build ``cls`` from a YAML mapping, validating every field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {yaml_key(f): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(fields)})"
        raise ConfigError(f"{where + '.' if where else ''}{key}: unknown field{hint}")
    values = {}
    for key, f in fields.items():
        if key not in data and dataclasses.is_dataclass(hints[f.name]):
            # A missing section gets its defaults, validated like a written one.
            path = f"{where}.{key}" if where else key
            section = f.default_factory() if callable(f.default_factory) else f.default
            _validate_tree(section, path)
            values[f.name] = section
        if key in data:
            path = f"{where}.{key}" if where else key
            if f.metadata.get("duration"):
                values[f.name] = parse_seconds(data[key], path)
            else:
                values[f.name] = _convert(hints[f.name], data[key], path)
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(where)
    return obj


def _validate_tree(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, f"{where}.{yaml_key(f)}")
    check = getattr(obj, "validate", None)
    if callable(check):
        check(where)


def to_mapping(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {yaml_key(f): to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_mapping(v) for v in obj]
    return obj


def load(cls: type[T], path: str | Path) -> T:
    """Load and validate a config file; every problem is a ConfigError naming file and field."""
    try:
        data = yamlio.load_file(path)
    except ManifestError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return from_mapping(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save(obj: Any, path: str | Path, header: str = "") -> None:
    from certs.files import write_private

    text = (header + "\n" if header else "") + yamlio.dump(to_mapping(obj))
    write_private(path, text.encode(), mode=0o600)


def check_address(server: str, allow_non_loopback: bool,
                  where: str = "modules.metaManager.metaServer.server") -> tuple[str, int]:
    """``IP:PORT`` of a local endpoint without authentication: loopback unless forced."""
    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        number = int(port)
    except ValueError:
        raise ConfigError(f"{where}: expected IP:PORT, got {server!r}") from None
    if not loopback and not allow_non_loopback:
        raise ConfigError(
            f"{where}: {host} is not a loopback address; this endpoint has no "
            "authentication, so it listens on 127.0.0.1 only (set "
            "insecureAllowNonLoopback: true to override)")
    return host, number
