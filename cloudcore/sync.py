"""Reliable delivery of desired state to one node: the pure bookkeeping.

For each node the cloud knows what the node has acknowledged (uid and
resourceVersion per object, durable in ``object_sync``) and what it should
hold. Keys that differ wait in a queue; the object itself is read only when a
message is built, so a newer version simply replaces a queued older one. At
most ``window`` messages are unacknowledged at once; each is sent again with
exponential backoff until the node acknowledges it (after its own commit).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moorage.resources import KINDS

Key = tuple[str, str, str]
Held = tuple[str, int]  # (uid, resourceVersion) the node has acknowledged


@dataclass
class Target:
    """What the node should hold for a key: an object at a version, or nothing."""

    uid: str
    sync_version: int  # resourceVersion of the last change the node must see
    resource_version: int
    obj: dict[str, Any]


@dataclass
class Outgoing:
    msg_id: str
    key: Key
    uid: str
    resource_version: int | None  # None: a delete
    obj: dict[str, Any] | None
    sent_at: float
    attempts: int = 1


class NodeSync:
    def __init__(self, node: str, acked: dict[Key, Held], *, window: int = 64,
                 resend_after: float = 5.0, max_backoff: float = 60.0) -> None:
        self.node = node
        self.acked = acked
        self.window, self.resend_after, self.max_backoff = window, resend_after, max_backoff
        self.queue: OrderedDict[Key, None] = OrderedDict()
        self.inflight: dict[str, Outgoing] = {}
        self.latest_for: dict[Key, str] = {}  # key -> msg_id of its newest send

    def needs(self, key: Key, target: Target | None) -> bool:
        held = self.acked.get(key)
        if target is None:
            return held is not None
        return held is None or held[0] != target.uid or held[1] < target.sync_version

    def reconcile(self, desired: dict[Key, Target]) -> None:
        """Queue every difference between what the node holds and ``desired``; what other
        objects use (device models, config maps, secrets) first, so a device reaches its
        mapper after its model, and a pod its node after its config."""
        for key, target in sorted(desired.items(), key=lambda item: _send_order(item[0])):
            if self.needs(key, target):
                self.queue[key] = None
        for key in self.acked:
            if key not in desired:
                self.queue[key] = None

    def mark(self, key: Key) -> None:
        self.queue[key] = None

    def take(self, now: float, target_of: Callable[[Key], Target | None]) -> list[Outgoing]:
        """Messages to send now, within the window."""
        out: list[Outgoing] = []
        while self.queue and len(self.inflight) < self.window:
            key, _ = self.queue.popitem(last=False)
            target = target_of(key)
            pending = self.inflight.get(self.latest_for.get(key, ""))
            if pending is not None:
                if _same_target(pending, target):
                    continue  # already on its way
            elif not self.needs(key, target):
                continue
            message = Outgoing(
                msg_id=str(uuid.uuid4()), key=key,
                uid=target.uid if target else (self.acked.get(key) or ("", 0))[0],
                resource_version=target.resource_version if target else None,
                obj=target.obj if target else None, sent_at=now)
            self.inflight[message.msg_id] = message
            self.latest_for[key] = message.msg_id
            out.append(message)
        return out

    def on_ack(self, msg_id: str) -> Outgoing | None:
        """The node committed ``msg_id``; returns it so the caller can persist the record."""
        message = self.inflight.pop(msg_id, None)
        if message is None:
            return None
        if self.latest_for.get(message.key) == msg_id:
            del self.latest_for[message.key]
        if message.resource_version is None:
            self.acked.pop(message.key, None)
        else:
            held = self.acked.get(message.key)
            if held is None or held[0] != message.uid or held[1] < message.resource_version:
                self.acked[message.key] = (message.uid, message.resource_version)
        return message

    def due(self, now: float) -> list[Outgoing]:
        """In-flight messages whose ack is overdue; they are sent again as they are."""
        again = []
        for msg_id, message in list(self.inflight.items()):
            if self.latest_for.get(message.key) != msg_id:
                del self.inflight[msg_id]  # superseded by a newer send of the same key
                continue
            wait = min(self.max_backoff, self.resend_after * 2 ** (message.attempts - 1))
            if now - message.sent_at >= wait:
                message.attempts += 1
                message.sent_at = now
                again.append(message)
        return again

    def disconnected(self) -> None:
        """The connection is gone: what was in flight is queued for the next one."""
        for message in self.inflight.values():
            self.queue[message.key] = None
        self.inflight.clear()
        self.latest_for.clear()

    @property
    def backlog(self) -> int:
        return len(self.queue) + len(self.inflight)


_DEPENDENCIES = frozenset({"devicemodels", "configmaps", "secrets"})


def _send_order(key: Key) -> int:
    return 0 if key[0] in _DEPENDENCIES else 1


def _same_target(message: Outgoing, target: Target | None) -> bool:
    if target is None:
        return message.resource_version is None
    return message.uid == target.uid and message.resource_version == target.resource_version


# ------------------------------------------------------------ inventories

MAX_INVENTORY_ENTRIES = 100_000  # objects plus deletions one node may report
# How far ahead of the store a node's versions may be: a restored backup is behind by the
# writes since it was taken, never by this much. Beyond it, the inventory is refused, so a
# faulty node cannot push the store's counter towards its end.
MAX_VERSION_LEAD = 10**9
SYNCED_KINDS = frozenset(kind.plural for kind in KINDS)


@dataclass
class Inventory:
    """What a node says it holds, assembled from its ``inventory`` pages.

    ``seen`` is the highest resourceVersion the node has received (objects and
    deletions): above the store's counter, the store went back in time.
    """

    seen: int = 0
    held: dict[Key, Held] = field(default_factory=dict)
    deleted: dict[Key, int] = field(default_factory=dict)
    generation: str = ""
    next_page: int = 0


class InventoryError(ValueError):
    """An inventory page that does not fit the protocol."""


def _key(entry: list[Any]) -> Key | None:
    kind, namespace, name = entry[0], entry[1], entry[2]
    if kind not in SYNCED_KINDS or len(namespace) > 63 or not 0 < len(name) <= 253:
        return None
    return kind, namespace, name


def _version(value: Any, seen: int) -> bool:
    """A resourceVersion a node can hold: at most the highest it says it has seen."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= seen


def add_inventory_page(partial: Inventory | None, store_version: int,
                       content: Any) -> tuple[Inventory, bool]:
    """Add one page to ``partial`` (None: nothing yet); returns it and whether it is complete.

    A page of a new generation starts over, so a node that reconnected mid-way
    sends its whole inventory again without confusing the cloud."""
    if not isinstance(content, dict):
        raise InventoryError("content: expected an object")
    generation, page = content.get("generation"), content.get("page")
    seen, last = content.get("resourceVersion"), content.get("last")
    if not isinstance(generation, str) or not generation or len(generation) > 64:
        raise InventoryError("content.generation: expected a short string")
    if not isinstance(page, int) or isinstance(page, bool) or page < 0:
        raise InventoryError("content.page: expected a page number")
    if not isinstance(seen, int) or isinstance(seen, bool) or seen < 0:
        raise InventoryError("content.resourceVersion: expected a non-negative integer")
    if seen > store_version + MAX_VERSION_LEAD:
        raise InventoryError(f"content.resourceVersion: {seen} is implausibly far ahead of "
                             f"the store ({store_version})")
    if not isinstance(last, bool):
        raise InventoryError("content.last: expected true or false")
    if partial is None or partial.generation != generation:
        if page != 0:
            raise InventoryError(f"content.page: page {page} of an inventory whose first page "
                                 "never came")
        partial = Inventory(generation=generation)
    elif page != partial.next_page:
        raise InventoryError(f"content.page: expected page {partial.next_page}, got {page}")
    objects, deleted = content.get("objects", []), content.get("deleted", [])
    if not isinstance(objects, list) or not isinstance(deleted, list):
        raise InventoryError("content.objects and content.deleted: expected lists")
    if len(partial.held) + len(partial.deleted) + len(objects) + len(deleted) > \
            MAX_INVENTORY_ENTRIES:
        raise InventoryError(f"the inventory has more than {MAX_INVENTORY_ENTRIES} entries")
    for i, entry in enumerate(objects):
        if not (isinstance(entry, list) and len(entry) == 5
                and all(isinstance(part, str) for part in entry[:4])
                and 0 < len(entry[3]) <= 64 and _version(entry[4], seen)):
            raise InventoryError(f"content.objects[{i}]: expected [kind, namespace, name, uid, "
                                 "resourceVersion] (a uid of at most 64 characters, a version "
                                 "at most content.resourceVersion)")
        key = _key(entry)
        if key is None:
            raise InventoryError(f"content.objects[{i}]: {entry[0]!r} {entry[1]}/{entry[2]} "
                                 "is not an object the cloud sends")
        partial.held[key] = (entry[3], entry[4])
    for i, entry in enumerate(deleted):
        if not (isinstance(entry, list) and len(entry) == 4
                and all(isinstance(part, str) for part in entry[:3])
                and _version(entry[3], seen)):
            raise InventoryError(f"content.deleted[{i}]: expected [kind, namespace, name, "
                                 "resourceVersion] (a version at most content.resourceVersion)")
        key = _key(entry)
        if key is not None:  # deletions of other things change nothing here
            partial.deleted[key] = entry[3]
    partial.seen = max(partial.seen, seen)
    partial.next_page = page + 1
    return partial, last


def stale_on_node(desired: dict[Key, Target], inventory: Inventory) -> list[Key]:
    """Objects the node must get but would refuse as old: it holds (or deleted) the key at a
    version as new as the cloud's. That happens only after the cloud store went back in time
    (a restore from a backup); such objects must be written again with a new version."""
    held, deleted = inventory.held, inventory.deleted
    stale = []
    for key, target in desired.items():
        have = held.get(key)
        if have is not None:
            if have[1] > target.resource_version or (
                    have[1] == target.resource_version and have[0] != target.uid):
                stale.append(key)
        elif deleted.get(key, 0) >= target.resource_version:
            stale.append(key)
    return stale
