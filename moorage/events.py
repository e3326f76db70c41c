"""Change events, as watch streams carry them (on the cloud and on the edge)."""

from __future__ import annotations

import collections
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


class History:
    """The recent changes, for watches that resume from a resourceVersion.

    Every change after ``floor`` is kept; older ones have been dropped (or predate
    this process), so resuming from before ``floor`` is refused with TooOld.
    """

    def __init__(self, maxlen: int, floor: int = 0) -> None:
        self.events: collections.deque[Event] = collections.deque()
        self.maxlen, self.floor = maxlen, floor

    def append(self, event: Event) -> None:
        if len(self.events) >= self.maxlen:
            self.floor = self.events.popleft().resource_version
        self.events.append(event)

    def since(self, resource_version: int) -> list[Event]:
        if resource_version < self.floor:
            raise TooOld(f"too old resource version: {resource_version} (oldest kept: "
                         f"{self.floor})")
        return [e for e in self.events if e.resource_version > resource_version]
