"""MetaManager: applies the cloud's desired state to the edge store, and queues reports.

Pure logic over :class:`EdgeStore`: it turns a downstream message into a
commit and an ack (only after the commit), and an upstream report into an
outbox entry. Listeners (the MetaServer's watches) hear of every change.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from edgecore.store import EdgeStore, Key, StoreError
from moorage import envelope
from moorage.envelope import Message
from moorage.errors import ManifestError
from moorage.events import Event, History
from moorage.resources import lookup

log = logging.getLogger("edgecore.metamanager")

HISTORY = 5_000
REPORTS_KEPT = 1_000  # unsent status reports kept per object while the cloud is away
# An inventory page stays far below the smallest frame a cloud accepts (64 KiB).
INVENTORY_PAGE_BYTES = 32 * 1024


class MetaManager:
    def __init__(self, store: EdgeStore) -> None:
        self.store = store
        self.history = History(HISTORY, floor=store.revision)
        self.listeners: list[Callable[[Event], None]] = []
        self.changed: Callable[[], None] = lambda: None  # wakes the outbox pump

    @property
    def resource_version(self) -> int:
        """The local revision: what lists report and watches resume from."""
        return self.store.revision

    def _publish(self, event: Event) -> None:
        self.history.append(event)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a watch listener failed")

    def since(self, resource_version: int) -> list[Event]:
        return self.history.since(resource_version)

    @staticmethod
    def parse(resource: str) -> Key:
        """``<namespace>/<type>/<name>`` -> (plural, namespace, name)."""
        parts = resource.split("/")
        if len(parts) != 3 or not all(parts):
            raise ManifestError(f"resource {resource!r}: expected <namespace>/<type>/<name>")
        kind = lookup(parts[1])
        return kind.plural, parts[0] if kind.namespaced else "", parts[2]

    def handle(self, message: Message) -> Message:
        """Apply one downstream message; the reply is the ack (or an error, not an ack)."""
        try:
            key = self.parse(message.resource)
            version = int(message.resource_version or "0")
            if version <= 0:
                raise ManifestError("header.resourceversion: required for desired state")
            if message.operation in (envelope.INSERT, envelope.UPDATE):
                obj = message.content
                meta = obj.get("metadata") if isinstance(obj, dict) else None
                if not isinstance(meta, dict) or meta.get("name") != key[2] \
                        or not isinstance(meta.get("uid"), str):
                    raise ManifestError("content: expected the object named in the resource, "
                                        "with metadata.uid")
                previous = self.store.get(key)
                if self.store.apply(key, meta["uid"], version, obj):
                    self._publish(Event("MODIFIED" if previous else "ADDED", key[0], obj,
                                        self.store.revision))
            elif message.operation == envelope.DELETE:
                previous = self.store.get(key)
                if self.store.remove(key, version) and previous is not None:
                    gone = {**previous, "metadata": {**previous["metadata"],
                                                     "resourceVersion": str(version)}}
                    self._publish(Event("DELETED", key[0], gone, self.store.revision))
            else:
                raise ManifestError(f"operation {message.operation!r} is not handled here")
        except (ManifestError, ValueError) as exc:
            log.warning("message %s refused: %s", message.msg_id, exc)
            return message.reply(str(exc), source="metamanager", operation=envelope.ERROR)
        except StoreError as exc:
            # No ack: the cloud sends it again later, when the disk may have room.
            log.error("%s; the cloud will resend", exc)
            return message.reply(str(exc), source="metamanager", operation=envelope.ERROR)
        return message.reply("OK", source="metamanager")

    def inventory_pages(self, page_bytes: int = INVENTORY_PAGE_BYTES) -> Iterator[dict[str, Any]]:
        """What this node holds, as the pages of one ``inventory`` (see
        cloudcore.sync.add_inventory_page): sent on every connection, so the cloud's record
        of what the node holds cannot drift from the truth."""
        seen, held, deleted = self.store.inventory()
        generation = uuid.uuid4().hex
        entries = [("objects", row) for row in held] + [("deleted", row) for row in deleted]
        page: dict[str, Any] = {"objects": [], "deleted": []}
        size, number = 0, 0
        for section, row in entries:
            cost = len(json.dumps(row)) + 1
            if size and size + cost > page_bytes:
                yield {"generation": generation, "page": number, "last": False,
                       "resourceVersion": seen, **page}
                page, size, number = {"objects": [], "deleted": []}, 0, number + 1
            page[section].append(row)
            size += cost
        yield {"generation": generation, "page": number, "last": True,
               "resourceVersion": seen, **page}

    # ------------------------------------------------------------ upstream

    def report_node_status(self, node: str, status: dict[str, Any]) -> None:
        # Periodic and complete: only the newest unsent one matters.
        self.store.enqueue(f"nodes//{node}", f"default/nodestatus/{node}", envelope.UPDATE,
                           {"status": status}, replace=True)
        self.changed()

    def report_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.report_status("pods", namespace, name, status)

    def report_status(self, plural: str, namespace: str, name: str,
                      status: dict[str, Any]) -> None:
        """Record an object's status locally (MetaServer shows it) and queue it for the cloud.

        Every report is sent, in order, also those made offline; but a node offline for
        weeks must not pile up a report per reading: past REPORTS_KEPT unsent reports of
        one object, the oldest go.
        """
        key = (plural, namespace, name)
        obj = self.store.get(key)
        if obj is None:
            raise ManifestError(f'{plural} "{name}" not found on this node')
        self.store.report_status(key, status)
        report = {"pods": "podstatus", "devices": "devicestatus"}[plural]
        self.store.enqueue(f"{plural}/{namespace}/{name}", f"{namespace}/{report}/{name}",
                           envelope.UPDATE, {"status": status}, cap=REPORTS_KEPT)
        self._publish(Event("MODIFIED", plural, {**obj, "status": status}, self.store.revision))
        self.changed()
