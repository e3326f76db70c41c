"""Which node holds which object. Pure bookkeeping, updated from the change feed.

- a Pod goes to ``spec.nodeName``;
- a ConfigMap or Secret goes to the nodes whose pods reference it (volumes,
  ``env[].valueFrom``, ``envFrom``), and to no other node;
- a Device goes to ``spec.nodeName``; a DeviceModel to the nodes holding devices
  of that model (same namespace);
- a Node object goes to itself.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

Key = tuple[str, str, str]


def pod_references(pod: dict[str, Any]) -> set[Key]:
    """ConfigMaps and Secrets a pod uses, as keys in its namespace."""
    ns = pod.get("metadata", {}).get("namespace", "default")
    spec = pod.get("spec") or {}
    refs: set[Key] = set()
    for volume in spec.get("volumes") or []:
        if isinstance(volume.get("configMap"), dict) and volume["configMap"].get("name"):
            refs.add(("configmaps", ns, volume["configMap"]["name"]))
        if isinstance(volume.get("secret"), dict) and volume["secret"].get("secretName"):
            refs.add(("secrets", ns, volume["secret"]["secretName"]))
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            for field, kind in (("configMapKeyRef", "configmaps"), ("secretKeyRef", "secrets")):
                ref = source.get(field)
                if isinstance(ref, dict) and ref.get("name"):
                    refs.add((kind, ns, ref["name"]))
        for env_from in container.get("envFrom") or []:
            for field, kind in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
                ref = env_from.get(field)
                if isinstance(ref, dict) and ref.get("name"):
                    refs.add((kind, ns, ref["name"]))
    return refs


class Router:
    def __init__(self) -> None:
        self.pod_node: dict[Key, str] = {}
        self.pod_refs: dict[Key, set[Key]] = {}
        self.pods_on: dict[str, set[Key]] = defaultdict(set)
        self.device_node: dict[Key, str] = {}
        self.device_model: dict[Key, Key] = {}
        self.devices_on: dict[str, set[Key]] = defaultdict(set)

    def nodes_for(self, key: Key) -> set[str]:
        """The nodes that should hold ``key`` now."""
        kind, _, name = key
        if kind == "pods":
            node = self.pod_node.get(key)
            return {node} if node else set()
        if kind in ("configmaps", "secrets"):
            return {node for pod, refs in self.pod_refs.items() if key in refs
                    for node in [self.pod_node.get(pod)] if node}
        if kind == "devices":
            node = self.device_node.get(key)
            return {node} if node else set()
        if kind == "devicemodels":
            return {self.device_node[d] for d, model in self.device_model.items()
                    if model == key and d in self.device_node}
        if kind == "nodes":
            return {name}
        return set()

    def keys_for(self, node: str) -> set[Key]:
        """Every object key ``node`` should hold."""
        keys: set[Key] = {("nodes", "", node)}
        for pod in self.pods_on.get(node, ()):
            keys.add(pod)
            keys |= self.pod_refs.get(pod, set())
        for device in self.devices_on.get(node, ()):
            keys.add(device)
            if device in self.device_model:
                keys.add(self.device_model[device])
        return keys

    def update(self, kind: str, key: Key, obj: dict[str, Any] | None) -> set[str]:
        """Apply a change (``obj`` None: deleted); returns the nodes whose set may change."""
        affected = self.nodes_for(key)
        if kind == "pods":
            self._unindex(self.pod_node, self.pods_on, key)
            self.pod_refs.pop(key, None)
            node = (obj or {}).get("spec", {}).get("nodeName") if obj else None
            if node:
                self.pod_node[key] = node
                self.pods_on[node].add(key)
                self.pod_refs[key] = pod_references(obj or {})
                affected.add(node)
        elif kind == "devices":
            self._unindex(self.device_node, self.devices_on, key)
            self.device_model.pop(key, None)
            spec = (obj or {}).get("spec", {}) if obj else {}
            node = spec.get("nodeName")
            model = (spec.get("deviceModelRef") or {}).get("name")
            if model:
                self.device_model[key] = ("devicemodels", key[1], model)
            if node:
                self.device_node[key] = node
                self.devices_on[node].add(key)
                affected.add(node)
        return affected | self.nodes_for(key)

    @staticmethod
    def _unindex(owner: dict[Key, str], by_node: dict[str, set[Key]], key: Key) -> None:
        node = owner.pop(key, None)
        if node is not None:
            by_node[node].discard(key)
            if not by_node[node]:
                del by_node[node]
