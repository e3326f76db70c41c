"""YAML input that cannot hurt us: size-capped, no aliases, no Python tags."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from moorage.errors import ManifestError

MAX_YAML_BYTES = 1024 * 1024


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases: they buy nothing in manifests or configs
    and are the vehicle of "billion laughs" expansion attacks."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ManifestError(
                f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                "accepted: write the value out in full"
            )
        return super().compose_node(parent, index)


def _check_size(text: str | bytes, source: str, limit: int) -> None:
    if len(text) > limit:
        raise ManifestError(
            f"{source}: {len(text)} bytes is more than the {limit}-byte limit for one document"
        )


def load_all(
    text: str | bytes, source: str = "input", limit: int = MAX_YAML_BYTES
) -> Iterator[Any]:
    """Every document of a (multi-document) YAML stream; errors name the line."""
    _check_size(text, source, limit)
    try:
        yield from yaml.load_all(text, Loader=_NoAliasLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ManifestError(f"{source}: invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{source}: YAML nested too deeply") from None
    except ValueError as exc:  # e.g. an impossible date such as 2024-02-30
        raise ManifestError(f"{source}: invalid value in YAML: {exc}") from None


def load_one(text: str | bytes, source: str = "input", limit: int = MAX_YAML_BYTES) -> Any:
    docs = [doc for doc in load_all(text, source, limit) if doc is not None]
    if len(docs) != 1:
        raise ManifestError(f"{source}: expected one YAML document, found {len(docs)}")
    return docs[0]


def load_file(path: str | Path, limit: int = MAX_YAML_BYTES) -> Any:
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ManifestError(f"cannot read {source}: {exc.strerror}") from None
    return load_one(data, source, limit)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
