"""Kubernetes label and field selectors, and JSON merge patch (RFC 7386)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from moorage.errors import ManifestError

Predicate = Callable[[dict[str, Any]], bool]
_SET = re.compile(r"^\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def label_selector(text: str | None) -> Predicate:
    """``app=web,tier!=db,env in (a,b),!legacy`` as a predicate on objects."""
    if not text:
        return lambda _: True
    tests: list[Predicate] = []
    for part in _split(text):
        part = part.strip()
        for op in ("!=", "==", "="):
            if op in part and "(" not in part:
                key, value = (s.strip() for s in part.split(op, 1))
                if op == "!=":
                    tests.append(lambda o, k=key, v=value: _labels(o).get(k) != v)
                else:
                    tests.append(lambda o, k=key, v=value: _labels(o).get(k) == v)
                break
        else:
            match = _SET.match(part)
            if not match:
                raise ManifestError(f"unable to parse requirement: {part!r}")
            negate, key, op, values = match.groups()
            if op:
                options = {v.strip() for v in values.split(",") if v.strip()}
                if op == "in":
                    tests.append(lambda o, k=key, s=options: _labels(o).get(k) in s)
                else:
                    tests.append(lambda o, k=key, s=options: _labels(o).get(k) not in s)
            elif negate:
                tests.append(lambda o, k=key: k not in _labels(o))
            else:
                tests.append(lambda o, k=key: k in _labels(o))
    return lambda obj: all(test(obj) for test in tests)


FIELD_PATHS = {"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"}


def field_selector(text: str | None) -> Predicate:
    if not text:
        return lambda _: True
    tests: list[Predicate] = []
    for part in _split(text):
        for op in ("!=", "==", "="):
            if op in part:
                path, value = (s.strip() for s in part.split(op, 1))
                break
        else:
            raise ManifestError(f"invalid field selector {part!r}: use FIELD=VALUE")
        if path not in FIELD_PATHS:
            raise ManifestError(f'field label not supported: "{path}" (supported: '
                                f"{', '.join(sorted(FIELD_PATHS))})")
        if op == "!=":
            tests.append(lambda o, p=path, v=value: _field(o, p) != v)
        else:
            tests.append(lambda o, p=path, v=value: _field(o, p) == v)
    return lambda obj: all(test(obj) for test in tests)


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _field(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)
