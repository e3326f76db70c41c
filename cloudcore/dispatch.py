"""Delivers desired state to connected nodes: the asyncio shell around Router and NodeSync.

Change feed -> Router (which nodes care) -> NodeSync per connected node (what to
send, what is in flight) -> Hub (the wire). Acks are recorded in ``object_sync``
after the node committed, so a restart of either side resends only what a
node lacks, plus deletes for what it should no longer hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from cloudcore.hub import Hub
from cloudcore.objects import Change, ObjectStore, key_of
from cloudcore.routing import Router
from cloudcore.sync import (
    Inventory,
    InventoryError,
    Key,
    NodeSync,
    Outgoing,
    Target,
    add_inventory_page,
    stale_on_node,
)
from moorage import envelope
from moorage.envelope import Message
from moorage.errors import ProtocolError
from moorage.resources import lookup

log = logging.getLogger("cloudcore.dispatch")

TICK = 0.5
TOUCH_PERIOD = 60.0  # seconds between two rewrites of objects for one node's inventories


def resource_path(key: Key) -> str:
    """KubeEdge's resource string: ``<namespace>/<type>/<name>`` (type singular)."""
    kind, namespace, name = key
    return f"{namespace or 'default'}/{lookup(kind).singular}/{name}"


class Dispatcher:
    def __init__(self, store: ObjectStore, hub: Hub, *, window: int = 64,
                 resend_after: float = 5.0) -> None:
        self.store, self.hub = store, hub
        self.window, self.resend_after = window, resend_after
        self.router = Router()
        for (kind, ns, name), obj in store.cache.items():
            self.router.update(kind, (kind, ns, name), obj)
        self.syncs: dict[str, NodeSync] = {}
        # What each node acknowledged: kept for all nodes, for `get pods -o wide`.
        self.acked: dict[str, dict[Key, tuple[str, int]]] = {}
        # Which nodes hold each key: a change finds them without scanning every node.
        self.holders: dict[Key, set[str]] = {}
        # Nodes with something to send, and nodes waiting for acks: the only ones the
        # sender looks at, so its cost follows activity, not the number of nodes.
        self.dirty: set[str] = set()
        self.awaiting: set[str] = set()
        self.wake = asyncio.Event()
        # Messages put on the wire (resends included), resends, and acks: for metrics.
        self.sent = self.resent = self.acks = 0
        # Called with (node, message) when a node acknowledged a message (metrics).
        self.on_delivered: Callable[[str, Outgoing], None] | None = None
        # Inventories being received, page by page, per node; when a node's last made the
        # cloud rewrite objects.
        self.inventories: dict[str, Inventory] = {}
        self._touched: dict[str, float] = {}
        store.listeners.append(self.on_change)

    async def load(self) -> None:
        for node in {n["metadata"]["name"] for n in self.store.list("nodes")}:
            self._hold(node, await self.store.acked(node))

    def _hold(self, node: str, acked: dict[Key, tuple[str, int]]) -> None:
        """Record what ``node`` holds, in place: a node's NodeSync shares the same dict."""
        mine = self.acked.setdefault(node, {})
        for key in mine:
            holding = self.holders.get(key)
            if holding is not None:
                holding.discard(node)
                if not holding:
                    del self.holders[key]  # keys nodes only claimed must not pile up
        if mine is not acked:
            mine.clear()
            mine.update(acked)
        for key in mine:
            self.holders.setdefault(key, set()).add(node)

    def sync_state(self, node: str, key: Key) -> str:
        """Has ``node`` acknowledged the latest version of ``key`` it must hold?"""
        held = self.acked.get(node, {}).get(key)
        needed = self.store.sync_versions.get(key, 0)
        if held is None:
            return "Pending"
        return "Synced" if held[1] >= needed else f"Behind ({held[1]}<{needed})"

    def target(self, node: str) -> Any:
        def target_of(key: Key) -> Target | None:
            if key not in self.router.keys_for(node):
                return None
            obj = self.store.get(key)
            if obj is None:
                return None
            meta = obj["metadata"]
            return Target(meta["uid"], self.store.sync_versions.get(key, 0),
                          int(meta["resourceVersion"]), obj)
        return target_of

    def desired(self, node: str) -> dict[Key, Target]:
        target_of = self.target(node)
        found = {key: target_of(key) for key in self.router.keys_for(node)}
        return {key: t for key, t in found.items() if t is not None}

    # ------------------------------------------------------------ events

    def on_change(self, change: Change) -> None:
        key = key_of(change.kind, change.obj)
        obj = None if change.type == "DELETED" else change.obj
        affected = self.router.update(change.kind, key, obj)
        if change.status_only:
            return
        for node in affected:
            sync = self.syncs.get(node)
            if sync is not None:
                sync.reconcile(self.desired(node))
                sync.mark(key)
                self.dirty.add(node)
        # Nodes holding the key that the router no longer sends it to get a delete.
        for node in self.holders.get(key, set()) - affected:
            sync = self.syncs.get(node)
            if sync is not None:
                sync.mark(key)
                self.dirty.add(node)
        if self.dirty:
            self.wake.set()

    async def node_connected(self, node: str) -> None:
        self._hold(node, await self.store.acked(node))
        self.inventories.pop(node, None)
        sync = NodeSync(node, self.acked[node], window=self.window,
                        resend_after=self.resend_after)
        sync.reconcile(self.desired(node))
        self.syncs[node] = sync
        if sync.backlog:
            log.info("node %s connected: %d object(s) to send", node, sync.backlog)
            self.dirty.add(node)
            self.wake.set()

    def node_disconnected(self, node: str, replaced: bool) -> None:
        sync = self.syncs.get(node)
        if sync is None:
            return
        if replaced:
            sync.disconnected()  # what was in flight goes out again on the new connection
            self.dirty.add(node)
            self.wake.set()
        else:
            del self.syncs[node]
            self.inventories.pop(node, None)
            self.dirty.discard(node)
            self.awaiting.discard(node)

    async def node_deleted(self, node: str) -> None:
        self.syncs.pop(node, None)
        self.inventories.pop(node, None)
        self._hold(node, {})
        self.acked.pop(node, None)
        self.dirty.discard(node)
        self.awaiting.discard(node)
        await self.store.forget_node(node)

    async def on_ack(self, node: str, message: Message) -> None:
        sync = self.syncs.get(node)
        if sync is None:
            return
        if message.operation == envelope.ERROR:
            log.warning("node %s could not apply %s: %s", node, message.parent_msg_id,
                        message.content)
            return
        done = sync.on_ack(message.parent_msg_id)
        if done is not None:
            self.acks += 1
            if self.on_delivered is not None:
                self.on_delivered(node, done)
            if done.resource_version is None:
                self.holders.get(done.key, set()).discard(node)
            else:
                self.holders.setdefault(done.key, set()).add(node)
            if not sync.inflight:
                self.awaiting.discard(node)
            if sync.queue:
                self.dirty.add(node)
                self.wake.set()
            await self.store.record_ack(node, done.key, done.uid, done.resource_version)

    async def inventory(self, node: str, content: Any) -> None:
        """One page of what ``node`` holds, sent when it connects. The whole inventory
        replaces the cloud's record of what the node acknowledged, so what the node lacks
        is sent and what it should not hold is deleted, even after the cloud store was
        restored from a backup or the node's store was lost."""
        try:
            partial, complete = add_inventory_page(self.inventories.get(node),
                                                   self.store.resource_version, content)
        except InventoryError as exc:
            self.inventories.pop(node, None)
            raise ProtocolError(f"inventory: {exc}") from exc
        if not complete:
            self.inventories[node] = partial
            return
        self.inventories.pop(node, None)
        if partial.seen > self.store.resource_version:
            log.warning("node %s has seen resourceVersion %d, but the cloud store is at %d: "
                        "the store went back in time (restored from a backup?). Moving past "
                        "the node's versions and sending it what differs.", node, partial.seen,
                        self.store.resource_version)
            await self.store.advance_to(partial.seen)
        held = partial.held
        before = self.acked.get(node, {})
        if held != before:
            # Usually only acks still on their way; a restore or a lost store shows here.
            extra = len(held.keys() - before.keys())
            missing = len(before.keys() - held.keys())
            log.info("node %s holds %d object(s): %d the cloud did not count on, %d it "
                     "lacks; bringing it in line", node, len(held), extra, missing)
            self._hold(node, held)
            await self.store.replace_acked(node, held)
        desired = self.desired(node)
        stale = stale_on_node(desired, partial)
        now = time.monotonic()
        if stale and now - self._touched.get(node, -TOUCH_PERIOD) < TOUCH_PERIOD:
            # Only a restore makes objects stale, once; a node claiming odd versions on
            # every reconnect must not make the cloud rewrite (and resend) them each time.
            log.warning("node %s claims versions newer than the store's for %d object(s) "
                        "again within %.0fs; not rewriting them this time", node, len(stale),
                        TOUCH_PERIOD)
            stale = []
        if stale:
            self._touched[node] = now
            if len(self._touched) > 10_000:
                self._touched = {n: t for n, t in self._touched.items()
                                 if now - t < TOUCH_PERIOD}
            # One group commit for all; the change feed queues them for their nodes.
            await asyncio.gather(*(self.store.touch(key) for key in stale))
        sync = self.syncs.get(node)
        if sync is not None:
            sync.reconcile(desired)  # touched keys are queued already; the rest is current
            if sync.backlog:
                self.dirty.add(node)
                self.wake.set()

    async def apply_report(self, node: str, kind: str, namespace: str, name: str,
                           message: Message) -> None:
        """A status reported by ``node`` (``podstatus``, ``devicestatus``): only for objects
        bound to it, and only their status."""
        plural = {"podstatus": "pods", "devicestatus": "devices"}[kind]
        obj = self.store.get((plural, namespace, name))
        if obj is None:
            raise ProtocolError(f"{plural} {namespace}/{name} does not exist at the cloud")
        if obj.get("spec", {}).get("nodeName") != node:
            raise PermissionError(f"node {node!r} may not report about {plural} "
                                  f"{namespace}/{name}, which is not bound to it")
        content = message.content if isinstance(message.content, dict) else {}
        status = content.get("status")
        if not isinstance(status, dict):
            raise ProtocolError("content.status: expected an object")
        if plural == "devices":
            twins = status.get("twins", [])
            if not isinstance(twins, list) or not all(
                    isinstance(t, dict) and isinstance(t.get("propertyName"), str)
                    for t in twins):
                raise ProtocolError("content.status.twins: expected a list of "
                                    "{propertyName, reported, observedDesired}")
        await self.store.replace_status(plural, {**obj, "status": status})

    # ------------------------------------------------------------ sending

    def _message(self, out: Outgoing, node: str) -> Message:
        held = out.key in (self.syncs[node].acked if node in self.syncs else {})
        if out.resource_version is None:
            return Message(source="edgecontroller", group=envelope.GROUP_RESOURCE,
                           operation=envelope.DELETE, resource=resource_path(out.key),
                           msg_id=out.msg_id, resource_version=str(self.store.resource_version),
                           content={"metadata": {"name": out.key[2], "namespace": out.key[1],
                                                 "uid": out.uid}})
        return Message(source="edgecontroller", group=envelope.GROUP_RESOURCE,
                       operation=envelope.UPDATE if held else envelope.INSERT,
                       resource=resource_path(out.key), msg_id=out.msg_id,
                       resource_version=str(out.resource_version), content=out.obj)

    async def run(self, stopping: asyncio.Event) -> None:
        next_resend_check = 0.0
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), TICK)
            self.wake.clear()
            now = time.monotonic()
            nodes, self.dirty = self.dirty, set()
            if now >= next_resend_check:
                nodes |= self.awaiting  # overdue acks: resend
                next_resend_check = now + TICK
            for node in nodes:
                sync = self.syncs.get(node)
                if sync is None or node not in self.hub.sessions:
                    continue
                due = sync.due(now)
                self.resent += len(due)
                batch = due + sync.take(now, self.target(node))
                if sync.inflight:
                    self.awaiting.add(node)
                for out in batch:
                    if await self.hub.send_to(node, envelope.encode(self._message(out, node))):
                        self.sent += 1
