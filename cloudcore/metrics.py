"""Cloudcore's Prometheus metrics and its /healthz, /readyz (``modules.metrics``).

Gauges are read at scrape time from the state cloudcore keeps anyway (sessions,
per-node sync queues, certificates); counters are plain integers bumped at the few
places where things happen (``Dispatcher.sent/resent/acks``, ``Hub.refusals``,
``HubEventLoop.handshake_failures``). The only bookkeeping added for metrics is
the write time of each object, for the apply-to-ack histogram.

| metric | type | labels |
|---|---|---|
| ``connected_nodes`` (KubeEdge's name) | gauge | - |
| ``cloudcore_messages_sent_total`` (resends included) | counter | - |
| ``cloudcore_messages_resent_total`` | counter | - |
| ``cloudcore_messages_acked_total`` | counter | - |
| ``cloudcore_node_queue_depth`` | gauge | ``node``: the 20 deepest, then ``_other`` |
| ``cloudcore_apply_to_ack_seconds`` | histogram | - |
| ``cloudcore_handshake_failures_total`` | counter | ``reason``: see HANDSHAKE_REASONS |
| ``cloudcore_certificate_expiry_seconds`` | gauge | - |

Queue depth cardinality: a node label per connected node would give a fleet of
thousands of nodes thousands of series. Only the ``TOP_NODES`` nodes with the
deepest queues (objects queued plus in flight; ties by name) get their own
series; the sum of all the others is ``node="_other"``, so the total stays exact
and the series count is at most ``TOP_NODES + 1``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import text

from certs import pki
from cloudcore.objects import Change, Key, key_of
from cloudcore.sync import Outgoing
from moorage import kubeconfig
from moorage import metrics as endpoint

if TYPE_CHECKING:
    from aiohttp import web

    from cloudcore.main import CloudCore

log = logging.getLogger("cloudcore.metrics")

TOP_NODES = 20
OTHER = "_other"
HANDSHAKE_REASONS = ("tls", "certificate", "revoked", "identity", "node_limit", "timeout",
                     "other")
# From a connected node's usual tens of milliseconds to an offline node's catch-up.
APPLY_TO_ACK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                        300.0, 1800.0)
MAX_TRACKED_WRITES = 50_000
STORE_CHECK_TIMEOUT = 2.0


def top_depths(depths: Mapping[str, int], n: int = TOP_NODES) -> list[tuple[str, int]]:
    """The ``n`` deepest queues by node (ties by name), then the rest summed as ``_other``."""
    ranked = sorted(depths.items(), key=lambda item: (-item[1], item[0]))
    return [*ranked[:n], (OTHER, sum(depth for _, depth in ranked[n:]))]


class WriteTimes:
    """When each object was last written with a change nodes must receive (pure).

    At most ``cap`` keys are remembered (the least recently written are forgotten),
    and nothing from before the process started: acks of such writes are not observed.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 cap: int = MAX_TRACKED_WRITES) -> None:
        self.clock, self.cap = clock, cap
        self.written: OrderedDict[Key, tuple[int | None, float]] = OrderedDict()

    def on_change(self, change: Change) -> None:
        if change.status_only:
            return  # not sent to nodes
        key = key_of(change.kind, change.obj)
        version = None if change.type == "DELETED" else change.resource_version
        self.written[key] = (version, self.clock())
        self.written.move_to_end(key)
        while len(self.written) > self.cap:
            self.written.popitem(last=False)

    def since_write(self, key: Key, resource_version: int | None) -> float | None:
        """Seconds since the write a node just acknowledged (``resource_version`` None: a
        delete), or None when the ack is of an older version than the last write."""
        entry = self.written.get(key)
        if entry is None:
            return None
        version, at = entry
        if resource_version is None:
            return self.clock() - at if version is None else None
        if version is None or resource_version < version:
            return None
        return self.clock() - at


class CertificateFile:
    """The expiry of the certificate in a file, read again only when the file changes (a
    SIGHUP after renew-server, `moorage certs renew-admin`)."""

    def __init__(self, path: Path, read: Callable[[Path], bytes] = Path.read_bytes) -> None:
        self.path, self.read = path, read
        self._seen: tuple[int, int] | None = None
        self._not_after: float | None = None

    def not_after(self) -> float | None:
        try:
            stat = os.stat(self.path)
            seen = (stat.st_mtime_ns, stat.st_size)
            if seen != self._seen:
                cert = pki.cert_from_bytes(self.read(self.path), str(self.path))
                self._not_after = pki.not_valid_after(cert).timestamp()
                self._seen = seen
        except Exception as exc:  # a scrape must not fail for this (or for no such file)
            log.debug("certificate %s not readable for metrics: %s", self.path, exc)
        return self._not_after


class CloudCollector:
    """Figures read from cloudcore's state at each scrape."""

    def __init__(self, core: CloudCore, tls_failures: Mapping[str, int]) -> None:
        self.core, self.tls_failures = core, tls_failures
        self.server_cert = CertificateFile(Path(core.cfg.modules.cloud_hub.tls_cert_file))
        # The admin kubeconfig `moorage init` wrote (copies elsewhere may be older).
        self.admin_cert = CertificateFile(core.cfg.data_path / "admin.kubeconfig",
                                          kubeconfig.client_certificate)
        self.ca_not_after = pki.not_valid_after(core.authority.ca.cert).timestamp()

    def soonest_expiry(self) -> float:
        expiries = [self.ca_not_after]
        for cert in (self.server_cert, self.admin_cert):
            not_after = cert.not_after()
            if not_after is not None:
                expiries.append(not_after)
        # Edge certificates in use: those of connected nodes (cheap, and the ones that
        # matter; superseded certificates of rotated nodes expire unused).
        expiries.extend(s.identity.not_after for s in self.core.hub.sessions.values())
        return min(expiries) - time.time()

    def collect(self) -> Iterator[Metric]:
        hub, dispatcher = self.core.hub, self.core.dispatcher
        connected = GaugeMetricFamily("connected_nodes",
                                      "Number of edge nodes connected to this cloudcore")
        connected.add_metric([], len(hub.sessions))
        yield connected
        for name, value, about in (
                ("cloudcore_messages_sent", dispatcher.sent,
                 "Desired-state messages sent to nodes, resends included"),
                ("cloudcore_messages_acked", dispatcher.acks,
                 "Desired-state messages nodes acknowledged after their commit"),
                ("cloudcore_messages_resent", dispatcher.resent,
                 "Desired-state messages sent again because their ack was overdue")):
            counter = CounterMetricFamily(name, about)
            counter.add_metric([], value)
            yield counter
        depth = GaugeMetricFamily(
            "cloudcore_node_queue_depth",
            f"Objects queued or in flight per connected node: the {TOP_NODES} deepest, "
            f"the others summed as node=\"{OTHER}\"", labels=["node"])
        for node, value in top_depths({n: s.backlog for n, s in dispatcher.syncs.items()}):
            depth.add_metric([node], value)
        yield depth
        failures = CounterMetricFamily(
            "cloudcore_handshake_failures_total",
            "Edge connections refused during the TLS or WebSocket handshake, by reason",
            labels=["reason"])
        for reason in HANDSHAKE_REASONS:
            failures.add_metric([reason], self.tls_failures.get(reason, 0)
                                + hub.refusals.get(reason, 0))
        yield failures
        expiry = GaugeMetricFamily(
            "cloudcore_certificate_expiry_seconds",
            "Seconds until the soonest expiry among the CA, the server certificate, the admin "
            "certificate and the certificates of connected nodes")
        expiry.add_metric([], self.soonest_expiry())
        yield expiry


class CloudMetrics:
    def __init__(self, core: CloudCore, tls_failures: Mapping[str, int]) -> None:
        self.core = core
        self.registry = CollectorRegistry()
        self.registry.register(CloudCollector(core, tls_failures))  # type: ignore[arg-type]
        self.apply_to_ack = Histogram(
            "cloudcore_apply_to_ack_seconds",
            "Time from an object's write in the store to a node's ack of that version",
            buckets=APPLY_TO_ACK_BUCKETS, registry=self.registry)
        self.writes = WriteTimes()
        core.store.listeners.append(self.writes.on_change)
        core.dispatcher.on_delivered = self.delivered

    def delivered(self, node: str, message: Outgoing) -> None:
        elapsed = self.writes.since_write(message.key, message.resource_version)
        if elapsed is not None:
            self.apply_to_ack.observe(elapsed)

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        core = self.core
        checks: dict[str, Any] = {}
        hub_cfg, admin_cfg = core.cfg.modules.cloud_hub, core.cfg.modules.admin
        if hub_cfg.websocket.enable:
            server = core.hub.server
            checks["hub"] = "ok" if server is not None and server.is_serving() else "not serving"
        if admin_cfg.enable:
            serving = any(address[1] == admin_cfg.port for runner in core.runners
                          for address in runner.addresses)
            checks["admin"] = "ok" if serving else "not serving"
        try:
            async with asyncio.timeout(STORE_CHECK_TIMEOUT):
                async with core.store.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"unavailable: {exc or type(exc).__name__}"
        checks["connectedNodes"] = len(core.hub.sessions)
        ok = all(value == "ok" for name, value in checks.items() if name != "connectedNodes")
        return ok, checks


async def start(core: CloudCore) -> web.AppRunner | None:
    """Serve /metrics, /healthz and /readyz when ``modules.metrics.enable``; None otherwise
    (or when the port is taken: cloudcore runs on without them)."""
    cfg = core.cfg.modules.metrics
    if not cfg.enable:
        return None
    # The TLS refusals are counted by the event loop (cloudcore.tlsloop.HubEventLoop).
    tls_failures = getattr(asyncio.get_running_loop(), "handshake_failures", {})
    metrics = CloudMetrics(core, tls_failures)
    return await endpoint.serve(metrics.registry, metrics.ready, cfg.address, cfg.port, log)
