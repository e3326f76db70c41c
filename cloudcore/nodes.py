"""Node objects and their liveness: Ready while the node is heard from, NotReady after the grace.

Liveness lives in memory (one float per node); the store is written only when
a node registers, changes its reported status, or flips Ready/NotReady.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from cloudcore.objects import NotFound, ObjectStore

log = logging.getLogger("cloudcore.nodes")

EDGE_ROLE_LABEL = "node-role.kubernetes.io/edge"
# Status fields the edge may report; everything else in status is the cloud's.
EDGE_STATUS_FIELDS = ("addresses", "capacity", "allocatable", "nodeInfo", "daemonEndpoints")
MAX_LABELS = 64


def rfc3339(ts: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(ts if ts is not None else time.time(), dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(node: dict[str, Any]) -> dict[str, Any] | None:
    for condition in node.get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            return condition
    return None


def is_ready(node: dict[str, Any]) -> bool:
    condition = ready_condition(node)
    return bool(condition and condition.get("status") == "True")


class NodeRegistry:
    def __init__(self, store: ObjectStore, grace_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.grace, self.clock = store, grace_seconds, clock
        started = clock()
        # Nodes that were Ready before a restart get one grace period to come back.
        self.last_seen: dict[str, float] = {n["metadata"]["name"]: started
                                            for n in store.list("nodes")}

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["metadata"]["name"]: n for n in self.store.list("nodes")}

    def get(self, name: str) -> dict[str, Any] | None:
        return self.store.get(("nodes", "", name))

    def list(self) -> list[dict[str, Any]]:
        return self.store.list("nodes")

    async def _save(self, node: dict[str, Any], status_only: bool = True) -> None:
        # Registrations and status are group-committed: a fleet connects at once.
        if self.get(node["metadata"]["name"]) is None:
            await self.store.upsert_status("nodes", node)  # a twin registration: one create
        elif status_only:
            await self.store.replace_status("nodes", node)  # a node deleted meanwhile: gone
        else:
            await self.store.replace("nodes", node)

    def _set_ready(self, node: dict[str, Any], ready: bool, reason: str, message: str) -> None:
        now = rfc3339()
        condition = ready_condition(node)
        status = "True" if ready else "Unknown"
        if condition is None:
            condition = {"type": "Ready"}
            node.setdefault("status", {}).setdefault("conditions", []).append(condition)
        if condition.get("status") != status:
            condition["lastTransitionTime"] = now
        condition.update(status=status, reason=reason, message=message, lastHeartbeatTime=now)

    async def register(self, name: str, reported: dict[str, Any]) -> dict[str, Any]:
        """A node (re)connected and described itself; returns the stored Node object."""
        self.last_seen[name] = self.clock()
        existing = self.get(name)
        node = copy.deepcopy(existing) if existing else {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {}},
            "spec": {},
            "status": {},
        }
        labels = node["metadata"].setdefault("labels", {})
        reported_labels = reported.get("metadata", {}).get("labels", {})
        if isinstance(reported_labels, dict):
            for key, value in list(reported_labels.items())[:MAX_LABELS]:
                if isinstance(key, str) and isinstance(value, str):
                    labels.setdefault(key, value)
        labels[EDGE_ROLE_LABEL] = ""
        labels["kubernetes.io/hostname"] = name
        self._merge_status(node, reported.get("status", {}))
        self._set_ready(node, True, "EdgeReady", "edgecore is connected and posting status")
        labels_changed = existing is None or existing["metadata"].get("labels") != labels
        await self._save(node, status_only=not labels_changed)
        if existing is None:
            log.info("node %s registered", name)
        elif not is_ready(existing):
            log.info("node %s is Ready again", name)
        return node

    def _merge_status(self, node: dict[str, Any], reported: Any) -> bool:
        if not isinstance(reported, dict):
            return False
        status = node.setdefault("status", {})
        changed = False
        for key in EDGE_STATUS_FIELDS:
            if key in reported and status.get(key) != reported[key]:
                status[key] = reported[key]
                changed = True
        reported_conditions = reported.get("conditions")
        if isinstance(reported_conditions, list):
            # The edge reports its own conditions (runtime); Ready stays the cloud's call.
            ours = [c for c in status.get("conditions", []) if c.get("type") == "Ready"]
            theirs = [c for c in reported_conditions[:16] if isinstance(c, dict)
                      and isinstance(c.get("type"), str) and c.get("type") != "Ready"]
            if [c for c in status.get("conditions", []) if c.get("type") != "Ready"] != theirs:
                status["conditions"] = ours + theirs
                changed = True
        info = status.get("nodeInfo")
        if isinstance(info, dict):
            labels = node["metadata"].setdefault("labels", {})
            for label, field in (("kubernetes.io/arch", "architecture"),
                                 ("kubernetes.io/os", "operatingSystem")):
                if isinstance(info.get(field), str):
                    labels[label] = info[field]
        return changed

    async def heard(self, name: str) -> None:
        """Anything from the node counts as a heartbeat."""
        self.last_seen[name] = self.clock()
        node = self.get(name)
        if node is not None and not is_ready(node):
            node = copy.deepcopy(node)
            self._set_ready(node, True, "EdgeReady", "edgecore is connected and posting status")
            await self._save(node)
            log.info("node %s is Ready again", name)

    async def update_status(self, name: str, reported: dict[str, Any]) -> None:
        self.last_seen[name] = self.clock()
        node = self.get(name)
        if node is None:
            await self.register(name, {"status": reported})
            return
        node = copy.deepcopy(node)
        if self._merge_status(node, reported) or not is_ready(node):
            self._set_ready(node, True, "EdgeReady", "edgecore is connected and posting status")
            await self._save(node)

    async def check(self) -> list[str]:
        """Mark nodes silent for longer than the grace NotReady; returns their names."""
        now = self.clock()
        stale = []
        for name, seen in list(self.last_seen.items()):
            silent = now - seen
            node = self.get(name)
            if silent > self.grace and node is not None and is_ready(node):
                node = copy.deepcopy(node)
                self._set_ready(node, False, "NodeStatusUnknown",
                                f"edgecore stopped posting status: nothing heard for "
                                f"{int(silent)}s (grace {self.grace:g}s)")
                await self._save(node)
                stale.append(name)
                log.warning("node %s is NotReady: nothing heard for %.0fs (grace %gs)",
                            name, silent, self.grace)
        return stale

    async def forget(self, name: str) -> bool:
        self.last_seen.pop(name, None)
        try:
            await self.store.delete(("nodes", "", name))
        except NotFound:
            return False
        return True
