"""Node objects and their liveness: Ready while the node is heard from, NotReady after the grace.

Liveness lives in memory (one float per node); the store is written only when
a node registers, changes its reported status, or flips Ready/NotReady.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from cloudcore.store import Store

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
    def __init__(self, store: Store, grace_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.grace, self.clock = store, grace_seconds, clock
        self.nodes: dict[str, dict[str, Any]] = {n["metadata"]["name"]: n
                                                 for n in store.list_nodes()}
        started = clock()
        # Nodes that were Ready before a restart get one grace period to come back.
        self.last_seen: dict[str, float] = {name: started for name in self.nodes}

    def get(self, name: str) -> dict[str, Any] | None:
        return self.nodes.get(name)

    def list(self) -> list[dict[str, Any]]:
        return [self.nodes[name] for name in sorted(self.nodes)]

    def _save(self, node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        rv = self.store.put_node(name, node["metadata"]["uid"], node)
        node["metadata"]["resourceVersion"] = str(rv)
        self.nodes[name] = node

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

    def register(self, name: str, reported: dict[str, Any]) -> dict[str, Any]:
        """A node (re)connected and described itself; returns the stored Node object."""
        self.last_seen[name] = self.clock()
        existing = self.nodes.get(name)
        node = copy.deepcopy(existing) if existing else {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "uid": str(uuid.uuid4()),
                         "creationTimestamp": rfc3339(), "labels": {}},
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
        self._save(node)
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
        info = status.get("nodeInfo")
        if isinstance(info, dict):
            labels = node["metadata"].setdefault("labels", {})
            for label, field in (("kubernetes.io/arch", "architecture"),
                                 ("kubernetes.io/os", "operatingSystem")):
                if isinstance(info.get(field), str):
                    labels[label] = info[field]
        return changed

    def heard(self, name: str) -> None:
        """Anything from the node counts as a heartbeat."""
        self.last_seen[name] = self.clock()
        node = self.nodes.get(name)
        if node is not None and not is_ready(node):
            node = copy.deepcopy(node)
            self._set_ready(node, True, "EdgeReady", "edgecore is connected and posting status")
            self._save(node)
            log.info("node %s is Ready again", name)

    def update_status(self, name: str, reported: dict[str, Any]) -> None:
        self.last_seen[name] = self.clock()
        node = self.nodes.get(name)
        if node is None:
            self.register(name, {"status": reported})
            return
        node = copy.deepcopy(node)
        if self._merge_status(node, reported) or not is_ready(node):
            self._set_ready(node, True, "EdgeReady", "edgecore is connected and posting status")
            self._save(node)

    def check(self) -> list[str]:
        """Mark nodes silent for longer than the grace NotReady; returns their names."""
        now = self.clock()
        stale = []
        for name, node in list(self.nodes.items()):
            silent = now - self.last_seen.get(name, now)
            if silent > self.grace and is_ready(node):
                node = copy.deepcopy(node)
                self._set_ready(node, False, "NodeStatusUnknown",
                                f"edgecore stopped posting status: nothing heard for "
                                f"{int(silent)}s (grace {self.grace:g}s)")
                self._save(node)
                stale.append(name)
                log.warning("node %s is NotReady: nothing heard for %.0fs (grace %gs)",
                            name, silent, self.grace)
        return stale

    def forget(self, name: str) -> bool:
        self.last_seen.pop(name, None)
        known = self.nodes.pop(name, None) is not None
        return self.store.delete_node(name) or known
