"""Kubernetes ``Table`` responses: what kubectl and ``moorage get`` print, per kind."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from moorage.durations import format_age

Key = tuple[str, str, str]
# (node, key) -> "Synced", "Pending" or "Behind (held<needed)": where the node is
SyncLookup = Callable[[str, Key], str]


def age(obj: dict[str, Any]) -> str:
    created = obj.get("metadata", {}).get("creationTimestamp")
    if not created:
        return "<unknown>"
    try:
        born = dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return "<unknown>"
    return format_age(time.time() - born.timestamp())


def _node_cells(obj: dict[str, Any], _: SyncLookup) -> list[Any]:
    status = obj.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
    info = status.get("nodeInfo", {})
    ip = next((a.get("address", "") for a in status.get("addresses", [])
               if a.get("type") == "InternalIP"), "<none>")
    return [obj["metadata"]["name"], "Ready" if ready.get("status") == "True" else "NotReady",
            age(obj), info.get("kubeletVersion", ""), ip, info.get("osImage", ""),
            info.get("kernelVersion", ""), info.get("architecture", "")]


def _pod_cells(obj: dict[str, Any], synced: SyncLookup) -> list[Any]:
    spec, status = obj.get("spec", {}), obj.get("status", {})
    containers = spec.get("containers", [])
    states = status.get("containerStatuses", [])
    ready = sum(1 for s in states if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in states)
    phase = status.get("phase") or "Pending"
    node = spec.get("nodeName") or "<none>"
    meta = obj["metadata"]
    sync = "<none>"
    if spec.get("nodeName"):
        sync = synced(spec["nodeName"], ("pods", meta.get("namespace", ""), meta["name"]))
    return [meta["name"], f"{ready}/{len(containers)}", phase, restarts, age(obj),
            status.get("podIP") or "<none>", node, sync]


def _configmap_cells(obj: dict[str, Any], _: SyncLookup) -> list[Any]:
    count = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
    return [obj["metadata"]["name"], count, age(obj)]


def _secret_cells(obj: dict[str, Any], _: SyncLookup) -> list[Any]:
    count = len(obj.get("data") or {}) + len(obj.get("stringData") or {})
    return [obj["metadata"]["name"], obj.get("type", "Opaque"), count, age(obj)]


def _device_cells(obj: dict[str, Any], _: SyncLookup) -> list[Any]:
    spec, status = obj.get("spec", {}), obj.get("status", {})
    return [obj["metadata"]["name"], spec.get("nodeName") or "<none>",
            (spec.get("deviceModelRef") or {}).get("name", ""),
            status.get("state") or "<unknown>", age(obj)]


def _devicemodel_cells(obj: dict[str, Any], _: SyncLookup) -> list[Any]:
    return [obj["metadata"]["name"], len((obj.get("spec") or {}).get("properties") or []),
            age(obj)]


# plural -> ([(column, priority)], cells). Priority 1 columns show with -o wide.
COLUMNS: dict[str, tuple[list[tuple[str, int]], Callable[[dict[str, Any], SyncLookup],
                                                         list[Any]]]] = {
    "nodes": ([("Name", 0), ("Status", 0), ("Age", 0), ("Version", 0), ("Internal-IP", 0),
               ("OS-Image", 1), ("Kernel-Version", 1), ("Arch", 1)], _node_cells),
    "pods": ([("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0),
              ("IP", 1), ("Node", 1), ("Synced", 1)], _pod_cells),
    "configmaps": ([("Name", 0), ("Data", 0), ("Age", 0)], _configmap_cells),
    "secrets": ([("Name", 0), ("Type", 0), ("Data", 0), ("Age", 0)], _secret_cells),
    "devices": ([("Name", 0), ("Node", 0), ("Model", 0), ("State", 0), ("Age", 0)],
                _device_cells),
    "devicemodels": ([("Name", 0), ("Properties", 0), ("Age", 0)], _devicemodel_cells),
}


def table(plural: str, items: list[dict[str, Any]], resource_version: str,
          synced: SyncLookup) -> dict[str, Any]:
    columns, cells = COLUMNS[plural]
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {"name": name, "type": "integer" if name in ("Restarts", "Data", "Properties")
             else "string", "format": "name" if name == "Name" else "", "description": name,
             "priority": priority} for name, priority in columns],
        "rows": [{"cells": cells(obj, synced),
                  "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata", {})}} for obj in items],
    }


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def _read_at(twin_property: dict[str, Any]) -> str:
    stamp = (twin_property.get("metadata") or {}).get("timestamp", "")
    try:
        at = dt.datetime.fromtimestamp(int(stamp) / 1000, dt.UTC)
        return at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (TypeError, ValueError, OverflowError, OSError):
        return str(stamp)


def device_properties(obj: dict[str, Any]) -> list[list[str]]:
    """Rows for `describe device`: each property's desired, observed and reported values."""
    twins = {t.get("propertyName"): t for t in (obj.get("status") or {}).get("twins") or []
             if isinstance(t, dict)}
    rows = [["PROPERTY", "DESIRED", "OBSERVED", "REPORTED", "READ AT", "ERROR"]]
    for prop in (obj.get("spec") or {}).get("properties") or []:
        name = prop.get("name", "")
        desired = (prop.get("desired") or {}).get("value", "")
        twin = twins.get(name, {})
        reported, observed = twin.get("reported") or {}, twin.get("observedDesired") or {}
        error = (reported.get("metadata") or {}).get("error") or \
            (observed.get("metadata") or {}).get("error") or ""
        rows.append([name, str(desired or "<none>"), str(observed.get("value", "")) or "-",
                     str(reported.get("value", "")) or "-",
                     _read_at(reported) if reported else "-", error])
    return rows
