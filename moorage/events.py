"""Change events, as watch streams carry them (on the cloud and on the edge)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str  # ADDED, MODIFIED, DELETED
    kind: str  # plural, e.g. "pods"
    obj: dict[str, Any]
    resource_version: int
    status_only: bool = False  # a status write nodes need not receive


class TooOld(Exception):
    """A watch asked to resume from before the history kept (HTTP 410 Expired)."""
