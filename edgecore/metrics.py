"""Edgecore's Prometheus metrics and its /healthz, /readyz (``modules.metrics``, off by default).

Imported only when enabled: with aiohttp and prometheus_client it costs memory
a small node does not spend otherwise. Everything is read at scrape time, in
the daemon's event loop, from state edgecore keeps anyway.

| metric | type | labels |
|---|---|---|
| ``edgecore_cloud_connected`` (1 connected, 0 not) | gauge | - |
| ``edgecore_cloud_connects_total`` | counter | - |
| ``edgecore_cloud_reconnects_total`` (connections after the first) | counter | - |
| ``edgecore_outbox_depth`` (reports waiting for the cloud's ack) | gauge | - |
| ``edgecore_pods`` | gauge | ``phase``: Pending, Running, Succeeded, Failed, Unknown |
| ``edgecore_device_reads_total`` | counter | ``device``: ``namespace/name`` |
| ``edgecore_device_read_errors_total`` | counter | ``device`` |
| ``edgecore_device_online`` (1 online, 0 not) | gauge | ``device`` |

Device labels are bounded by the devices bound to this node. Reads are the
readings mappers report over DMI (one per reported twin per report cycle); a
reading whose metadata carries an error is a read error.

/readyz is 200 when the local store answers: the node works without the cloud,
so the link does not decide readiness; its state is in the body.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edgecore.config import check_address
from moorage import metrics as endpoint

if TYPE_CHECKING:
    from aiohttp import web

    from edgecore.main import EdgeCore

log = logging.getLogger("edgecore.metrics")

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
ONLINE_STATES = ("online", "ok")


def phase_counts(raw: dict[str, int]) -> dict[str, int]:
    """Pods by phase over the fixed set of phases: a pod without a status yet is Pending,
    a phase Kubernetes does not define is Unknown (pure)."""
    counts = dict.fromkeys(PHASES, 0)
    for phase, count in raw.items():
        name = "Pending" if not phase else phase if phase in counts else "Unknown"
        counts[name] += count
    return counts


def device_name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


class EdgeCollector:
    def __init__(self, core: EdgeCore) -> None:
        self.core = core

    def collect(self) -> Iterator[Metric]:
        hub, store = self.core.hub, self.core.store
        connected = GaugeMetricFamily("edgecore_cloud_connected",
                                      "1 when the connection to the cloud hub is up, else 0")
        connected.add_metric([], 1 if hub.ws is not None and hub.connected.is_set() else 0)
        yield connected
        connects = CounterMetricFamily("edgecore_cloud_connects",
                                       "Connections opened to the cloud hub")
        connects.add_metric([], hub.connects)
        yield connects
        reconnects = CounterMetricFamily(
            "edgecore_cloud_reconnects",
            "Connections opened to the cloud hub after the first (lost links, rotations)")
        reconnects.add_metric([], max(0, hub.connects - 1))
        yield reconnects
        try:
            outbox = store.outbox_depth()
            phases = phase_counts(store.pod_phases())
            devices = store.list("devices")
        except sqlite3.Error as exc:  # the store is closing: the rest still scrapes
            log.debug("edge store not readable for metrics: %s", exc)
            return
        depth = GaugeMetricFamily("edgecore_outbox_depth",
                                  "Reports (statuses, twins) waiting for the cloud's ack")
        depth.add_metric([], outbox)
        yield depth
        pods = GaugeMetricFamily("edgecore_pods", "Pods on this node by phase",
                                 labels=["phase"])
        for phase, count in phases.items():
            pods.add_metric([phase], count)
        yield pods
        online = GaugeMetricFamily("edgecore_device_online",
                                   "1 when the device's mapper reports it online, else 0",
                                   labels=["device"])
        reads = CounterMetricFamily("edgecore_device_reads",
                                    "Readings mappers reported for the device",
                                    labels=["device"])
        errors = CounterMetricFamily("edgecore_device_read_errors",
                                     "Readings mappers reported with an error",
                                     labels=["device"])
        twin = getattr(self.core, "devicetwin", None)
        for obj in devices:
            name = device_name(obj)
            state = (obj.get("status") or {}).get("state")
            online.add_metric([name], 1 if state in ONLINE_STATES else 0)
            if twin is not None:
                key = tuple(name.split("/", 1))
                reads.add_metric([name], twin.reads.get(key, 0))
                errors.add_metric([name], twin.read_errors.get(key, 0))
        yield online
        yield reads
        yield errors


async def ready(core: EdgeCore) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {}
    try:
        core.store.db.execute("SELECT 1").fetchone()
        checks["store"] = "ok"
    except sqlite3.Error as exc:
        checks["store"] = f"unavailable: {exc}"
    hub = core.hub
    # Informational: the node keeps working from its store while the cloud is away.
    checks["cloudLink"] = "connected" if hub.ws is not None and hub.connected.is_set() \
        else "disconnected"
    return checks["store"] == "ok", checks


async def start(core: EdgeCore) -> web.AppRunner | None:
    """Serve /metrics, /healthz and /readyz on ``modules.metrics.server``; None when the
    port cannot be bound (edgecore runs on without them)."""
    cfg = core.cfg.modules.metrics
    host, port = check_address(cfg.server, cfg.insecure_allow_non_loopback,
                               "modules.metrics.server")
    registry = CollectorRegistry()
    registry.register(EdgeCollector(core))  # type: ignore[arg-type]

    async def check() -> tuple[bool, dict[str, Any]]:
        return await ready(core)

    return await endpoint.serve(registry, check, host, port, log)
