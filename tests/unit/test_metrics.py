"""Metrics, the pure parts: bounded labels, ack latency bookkeeping, failure reasons, and the
collectors read over small stand-ins for the daemons' state."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from certs import pki
from cloudcore.config import CloudCoreConfig
from cloudcore.metrics import (
    HANDSHAKE_REASONS,
    OTHER,
    TOP_NODES,
    CloudCollector,
    WriteTimes,
    top_depths,
)
from cloudcore.objects import Change
from cloudcore.tlsloop import handshake_failure_reason
from edgecore.config import EdgeCoreConfig
from edgecore.devicetwin import reading_outcomes
from edgecore.metrics import EdgeCollector, phase_counts
from edgecore.metrics import ready as edge_ready
from edgecore.store import EdgeStore
from moorage import config, kubeconfig
from moorage.errors import ConfigError


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# ---------------------------------------------------------------- queue depth cardinality


def test_few_nodes_all_get_a_label_and_other_is_zero() -> None:
    assert top_depths({"b": 3, "a": 3, "c": 0}) == [("a", 3), ("b", 3), ("c", 0), (OTHER, 0)]


def test_many_nodes_give_at_most_top_n_plus_one_series_and_an_exact_total() -> None:
    depths = {f"node-{i:04d}": i % 97 for i in range(5000)}
    series = top_depths(depths)
    assert len(series) == TOP_NODES + 1
    assert series[-1][0] == OTHER
    assert sum(value for _, value in series) == sum(depths.values())
    labelled = [value for name, value in series[:-1]]
    assert min(labelled) >= max(v for n, v in depths.items() if n not in dict(series[:-1]))


def test_top_n_is_configurable_and_empty_is_just_other() -> None:
    assert top_depths({}, 3) == [(OTHER, 0)]
    assert top_depths({"a": 1, "b": 2, "c": 3}, 1) == [("c", 3), (OTHER, 3)]


# ---------------------------------------------------------------- apply-to-ack bookkeeping


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default"}}


def test_ack_of_the_written_version_or_newer_is_timed_from_the_write() -> None:
    clock = Clock()
    writes = WriteTimes(clock)
    writes.on_change(Change("ADDED", "pods", pod("p"), 10))
    clock.now += 0.25
    key = ("pods", "default", "p")
    assert writes.since_write(key, 10) == pytest.approx(0.25)
    assert writes.since_write(key, 12) == pytest.approx(0.25)  # a status write came after


def test_ack_of_an_older_version_than_the_last_write_is_not_timed() -> None:
    clock = Clock()
    writes = WriteTimes(clock)
    writes.on_change(Change("ADDED", "pods", pod("p"), 10))
    writes.on_change(Change("MODIFIED", "pods", pod("p"), 14))
    assert writes.since_write(("pods", "default", "p"), 10) is None
    assert writes.since_write(("pods", "default", "p"), None) is None  # not deleted


def test_status_only_writes_do_not_restart_the_clock_and_deletes_are_timed() -> None:
    clock = Clock()
    writes = WriteTimes(clock)
    key = ("pods", "default", "p")
    writes.on_change(Change("ADDED", "pods", pod("p"), 10))
    clock.now += 1
    writes.on_change(Change("MODIFIED", "pods", pod("p"), 11, True))
    assert writes.since_write(key, 10) == pytest.approx(1)
    writes.on_change(Change("DELETED", "pods", pod("p"), 12))
    clock.now += 2
    assert writes.since_write(key, None) == pytest.approx(2)
    assert writes.since_write(key, 12) is None
    assert writes.since_write(("pods", "default", "unknown"), 1) is None


def test_write_times_are_bounded() -> None:
    writes = WriteTimes(Clock(), cap=3)
    for i in range(10):
        writes.on_change(Change("ADDED", "pods", pod(f"p{i}"), i + 1))
    assert list(writes.written) == [("pods", "default", f"p{i}") for i in (7, 8, 9)]


# ---------------------------------------------------------------- handshake failure reasons


def ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()} (_ssl.c:1000)")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(("exc", "reason"), [
    (ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "certificate"),
    (ssl_error("TLSV1_ALERT_UNKNOWN_CA"), "certificate"),
    (ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate"),
     "certificate"),
    (ssl_error("NO_SHARED_CIPHER"), "tls"),
    (ssl_error("UNSUPPORTED_PROTOCOL"), "tls"),
    (ConnectionResetError, "other"),
    (ValueError("odd"), "other"),
])
def test_tls_failures_map_to_a_bounded_set_of_reasons(exc: Any, reason: str) -> None:
    assert handshake_failure_reason(exc) == reason
    assert reason in HANDSHAKE_REASONS


# ---------------------------------------------------------------- cloud collector


def fake_cloud(tmp_path: Path, sessions: dict[str, float], backlogs: dict[str, int]
               ) -> SimpleNamespace:
    ca = pki.create_ca(lifetime=dt.timedelta(days=365))
    server = pki.issue(ca, pki.subject("server"), lifetime=dt.timedelta(days=30), server=True,
                       sans=["127.0.0.1"])
    cert_file = tmp_path / "server.crt"
    cert_file.write_bytes(pki.cert_to_pem(server.cert))
    return SimpleNamespace(
        cfg=SimpleNamespace(data_path=tmp_path, modules=SimpleNamespace(
            cloud_hub=SimpleNamespace(tls_cert_file=str(cert_file)))),
        authority=SimpleNamespace(ca=ca),
        hub=SimpleNamespace(
            sessions={n: SimpleNamespace(identity=SimpleNamespace(not_after=t))
                      for n, t in sessions.items()},
            refusals={"revoked": 2, "node_limit": 1}),
        dispatcher=SimpleNamespace(
            sent=7, acks=5, resent=1,
            syncs={n: SimpleNamespace(backlog=b) for n, b in backlogs.items()}))


def test_cloud_collector_reads_state_at_scrape_time(tmp_path: Path) -> None:
    soon = time.time() + 3600
    core = fake_cloud(tmp_path, {"a": soon, "b": time.time() + 60 * 86400}, {"a": 4, "b": 0})
    registry = CollectorRegistry()
    registry.register(CloudCollector(core, {"certificate": 3, "timeout": 1}))  # type: ignore
    got = samples(registry)
    assert got[("connected_nodes", ())] == 2
    assert got[("cloudcore_messages_sent_total", ())] == 7
    assert got[("cloudcore_messages_acked_total", ())] == 5
    assert got[("cloudcore_messages_resent_total", ())] == 1
    assert got[("cloudcore_node_queue_depth", (("node", "a"),))] == 4
    assert got[("cloudcore_node_queue_depth", (("node", OTHER),))] == 0
    failures = {dict(labels)["reason"]: value for (name, labels), value in got.items()
                if name == "cloudcore_handshake_failures_total"}
    assert failures == {"tls": 0, "certificate": 3, "revoked": 2, "identity": 0,
                        "node_limit": 1, "timeout": 1, "other": 0}
    # The soonest expiry: node a's certificate, in an hour.
    assert 3500 < got[("cloudcore_certificate_expiry_seconds", ())] <= 3600
    # Gauges follow the state: node a leaves.
    del core.hub.sessions["a"], core.dispatcher.syncs["a"]
    got = samples(registry)
    assert got[("connected_nodes", ())] == 1
    assert ("cloudcore_node_queue_depth", (("node", "a"),)) not in got
    assert 29 * 86400 < got[("cloudcore_certificate_expiry_seconds", ())] <= 30 * 86400

    # The admin kubeconfig's certificate counts too, read again when it is renewed.
    for days in (10, 20):
        admin = pki.issue(core.authority.ca, pki.subject("moorage-admin",
                                                         pki.ADMIN_ORGANIZATION),
                          lifetime=dt.timedelta(days=days), client=True)
        kubeconfig.write(tmp_path / "admin.kubeconfig", "https://127.0.0.1:6443",
                         pki.cert_to_pem(core.authority.ca.cert), pki.cert_to_pem(admin.cert),
                         pki.key_to_pem(admin.key))
        got = samples(registry)
        assert (days - 1) * 86400 < got[("cloudcore_certificate_expiry_seconds", ())] <= \
            days * 86400


# ---------------------------------------------------------------- edge collector


def test_reported_twins_count_good_and_failed_reads() -> None:
    twins = [
        {"propertyName": "t", "reported": {"value": "1", "metadata": {"timestamp": "1"}}},
        {"propertyName": "m", "reported": {"value": "", "metadata": {"error": "no register"}}},
        {"propertyName": "d", "observedDesired": {"value": "2", "metadata": {"error": "x"}}},
    ]
    assert reading_outcomes(twins) == (1, 1)
    assert reading_outcomes([]) == (0, 0)


def test_pod_phases_are_a_fixed_set() -> None:
    assert phase_counts({"": 2, "Running": 1, "Weird": 1}) == {
        "Pending": 2, "Running": 1, "Succeeded": 0, "Failed": 0, "Unknown": 1}


def test_edge_collector_and_readiness_over_a_real_store(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge.db")
    store.apply(("pods", "default", "p1"), "u1", 1, {**pod("p1"), "status": {"phase": "Running"}})
    store.apply(("pods", "default", "p2"), "u2", 2, pod("p2"))
    store.apply(("devices", "default", "d1"), "u3", 3,
                {**pod("d1"), "status": {"state": "online"}})
    store.apply(("devices", "default", "d2"), "u4", 4, pod("d2"))
    store.enqueue("k", "default/podstatus/p1", "update", {"status": {}})
    connected = asyncio.Event()
    connected.set()
    core = SimpleNamespace(
        store=store,
        hub=SimpleNamespace(ws=None, connected=connected, connects=3),
        devicetwin=SimpleNamespace(reads={("default", "d1"): 9},
                                   read_errors={("default", "d1"): 2}))
    registry = CollectorRegistry()
    registry.register(EdgeCollector(core))  # type: ignore[arg-type]
    got = samples(registry)
    assert got[("edgecore_cloud_connected", ())] == 0  # no connection object
    assert got[("edgecore_cloud_connects_total", ())] == 3
    assert got[("edgecore_cloud_reconnects_total", ())] == 2
    assert got[("edgecore_outbox_depth", ())] == 1
    assert got[("edgecore_pods", (("phase", "Running"),))] == 1
    assert got[("edgecore_pods", (("phase", "Pending"),))] == 1
    assert got[("edgecore_device_online", (("device", "default/d1"),))] == 1
    assert got[("edgecore_device_online", (("device", "default/d2"),))] == 0
    assert got[("edgecore_device_reads_total", (("device", "default/d1"),))] == 9
    assert got[("edgecore_device_read_errors_total", (("device", "default/d1"),))] == 2
    assert got[("edgecore_device_reads_total", (("device", "default/d2"),))] == 0

    ok, checks = asyncio.run(edge_ready(core))  # type: ignore[arg-type]
    assert ok and checks == {"store": "ok", "cloudLink": "disconnected"}
    store.close()
    ok, checks = asyncio.run(edge_ready(core))  # type: ignore[arg-type]
    assert not ok and checks["store"].startswith("unavailable")
    # A closed store does not break the scrape: the link figures are still there.
    assert ("edgecore_cloud_connected", ()) in samples(registry)


# ---------------------------------------------------------------- config: loopback only


CLOUD = {"kind": "CloudCore", "dataDir": "/var/lib/moorage",
         "modules": {"cloudHub": {"advertiseAddress": ["10.0.0.1"], "tlsCAFile": "/pki/ca.crt",
                                  "tlsCAKeyFile": "/pki/ca.key",
                                  "tlsCertFile": "/pki/server.crt",
                                  "tlsPrivateKeyFile": "/pki/server.key"}}}
EDGE = {"kind": "EdgeCore", "dataDir": "/var/lib/edgecore",
        "modules": {"edgeHub": {"tlsCaFile": "/pki/ca.crt", "tlsCertFile": "/pki/edge.crt",
                                "tlsPrivateKeyFile": "/pki/edge.key",
                                "httpServer": "https://10.0.0.1:10002",
                                "websocket": {"server": "10.0.0.1:10000"}},
                    "edged": {"hostnameOverride": "edge-1"}}}


def test_metrics_endpoints_refuse_non_loopback_addresses_at_config_load() -> None:
    with pytest.raises(ConfigError) as caught:
        config.from_mapping(CloudCoreConfig, {**CLOUD, "modules": {
            **CLOUD["modules"], "metrics": {"address": "10.0.0.1"}}})
    assert "modules.metrics.address" in str(caught.value)
    assert "not a loopback address" in str(caught.value)
    edge = {**EDGE, "modules": {**EDGE["modules"],
                                "metrics": {"enable": True, "server": "10.1.2.3:9092"}}}
    with pytest.raises(ConfigError) as caught:
        config.from_mapping(EdgeCoreConfig, edge)
    assert "modules.metrics.server" in str(caught.value)
    assert "insecureAllowNonLoopback" in str(caught.value)
    # Forced: accepted.
    edge["modules"]["metrics"]["insecureAllowNonLoopback"] = True
    assert config.from_mapping(EdgeCoreConfig, edge).modules.metrics.enable
