"""Metrics and health endpoints of real daemons: scraped over HTTP, parsed with
prometheus_client's parser, and watched as they move (nodes connect and leave, objects
are applied and acked, a refused handshake, a device read and a read error)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from certs import tls
from tests.integration.test_devices import device, model, prop, start_mapper
from tests.modbus import ModbusSim, modbus_available
from tests.support import (
    Cloud,
    Edge,
    Env,
    edit_yaml,
    free_port,
    join,
    make_cloud,
    require,
    wait_for,
    write_manifests,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(port: int, name: str, **labels: str) -> float | None:
    return scrape(port).get((name, tuple(sorted(labels.items()))))


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def ready(port: int) -> dict[str, Any] | None:
    status, body = get(port, "/readyz")
    return json.loads(body) if status == 200 else None


def refused_without_certificate(cloud: Cloud) -> None:
    """A TLS client with no certificate: the hub refuses it in the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection(("127.0.0.1", cloud.hub_port), timeout=10)
    try:
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls_sock:
            tls_sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            tls_sock.recv(100)  # TLS 1.3 reports the refusal on the first read
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        sock.close()


def with_metrics(cloud: Cloud) -> int:
    port = free_port()
    edit_yaml(cloud.config, lambda d: d["modules"].update(metrics={"port": port}))
    return port


def edge_metrics(edge: Edge) -> int:
    port = free_port()
    edit_yaml(edge.config, lambda d: d["modules"].update(
        metrics={"enable": True, "server": f"127.0.0.1:{port}"}))
    return port


def pod(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}


def test_cloud_and_edge_metrics_move(env: Env, tmp_path: Path) -> None:
    reason = modbus_available(serial=False)
    require(reason is None, reason or "")
    with ModbusSim.tcp(devices=[1]) as sim:
        sim.set_holding(1, 10, [215])
        cloud = make_cloud(env)
        cport = with_metrics(cloud)
        cloud.start()

        # Health and readiness: the hub, the admin API and the store.
        assert get(cport, "/healthz") == (200, "ok\n")
        checks = wait_for(lambda: ready(cport), 10, what="cloud /readyz 200")["checks"]
        assert checks["hub"] == checks["admin"] == checks["store"] == "ok", checks
        before = scrape(cport)
        assert before[("connected_nodes", ())] == 0
        assert before[("cloudcore_node_queue_depth", (("node", "_other"),))] == 0
        # The CA lives ten years, the server certificate less: positive and plausible.
        expiry = before[("cloudcore_certificate_expiry_seconds", ())]
        assert 30 * 86400 < expiry <= 3660 * 86400, expiry

        # A refused handshake is counted under its reason.
        failures = labelled(before, "cloudcore_handshake_failures_total", "reason")
        assert set(failures) == {"tls", "certificate", "revoked", "identity", "node_limit",
                                 "timeout", "other"}
        refused_without_certificate(cloud)
        wait_for(lambda: value(cport, "cloudcore_handshake_failures_total", reason="certificate")
                 == failures["certificate"] + 1, 10, what="a certificate refusal counted")

        # An edge connects: connected_nodes 0 -> 1, and the edge says it is connected.
        edge = join(cloud, "edge-m")
        eport = edge_metrics(edge)
        edge.start()
        wait_for(lambda: value(cport, "connected_nodes") == 1, 20,
                 what=lambda: f"connected_nodes 1:\n{edge.log()}")
        wait_for(lambda: value(eport, "edgecore_cloud_connected") == 1, 10)
        edge_samples = scrape(eport)
        assert ("edgecore_outbox_depth", ()) in edge_samples
        assert labelled(edge_samples, "edgecore_pods", "phase") == {
            "Pending": 0, "Running": 0, "Succeeded": 0, "Failed": 0, "Unknown": 0}
        assert get(eport, "/healthz") == (200, "ok\n")
        assert ready(eport) == {"ready": True,
                                "checks": {"store": "ok", "cloudLink": "connected"}}
        assert ("cloudcore_node_queue_depth", (("node", "edge-m"),)) in scrape(cport)

        # Objects applied: sent and acked grow, and so does the apply-to-ack histogram.
        start = scrape(cport)
        protocol = {"communicateMode": "TCP", "ip": "127.0.0.1", "port": sim.port,
                    "slaveID": 1, "timeout": 500}
        thermo = device("thermo", "edge-m", protocol, [
            prop("temperature", "HoldingRegister", 10, "int16", scale=0.1),
            # Not in the device: a read error on every cycle.
            prop("humidity", "HoldingRegister", 5000, "uint16")])
        cloud.moorage("apply", "-f", str(write_manifests(tmp_path / "objects.yaml", [
            pod("web", "edge-m"), model(), thermo])))

        def moved(name: str) -> bool:
            return (value(cport, name) or 0) >= start[(name, ())] + 3

        for name in ("cloudcore_messages_sent_total", "cloudcore_messages_acked_total",
                     "cloudcore_apply_to_ack_seconds_count"):
            wait_for(lambda name=name: moved(name), 15, what=f"{name} to grow by 3")
        now = scrape(cport)
        assert 0 < now[("cloudcore_apply_to_ack_seconds_sum", ())] < 60
        assert now[("cloudcore_apply_to_ack_seconds_bucket", (("le", "+Inf"),))] == \
            now[("cloudcore_apply_to_ack_seconds_count", ())]
        assert ("cloudcore_messages_resent_total", ()) in now
        wait_for(lambda: value(eport, "edgecore_pods", phase="Pending") == 1, 10)

        # A mapper reads the device: reads grow, and errors grow for the missing register.
        mapper = start_mapper(env, edge)
        dev = "default/thermo"
        wait_for(lambda: (value(eport, "edgecore_device_reads_total", device=dev) or 0) >= 2
                 and (value(eport, "edgecore_device_read_errors_total", device=dev) or 0) >= 2,
                 20, what=lambda: f"device reads and errors:\n{mapper.log()}\n{edge.log()}")
        wait_for(lambda: value(eport, "edgecore_device_online", device=dev) == 1, 10)
        first = value(eport, "edgecore_device_reads_total", device=dev) or 0
        wait_for(lambda: (value(eport, "edgecore_device_reads_total", device=dev) or 0) > first,
                 10, what="reads to keep growing")

        # The cloud goes away: the edge stays ready, says the link is down; back: reconnect.
        cloud.stop()
        wait_for(lambda: value(eport, "edgecore_cloud_connected") == 0, 15)
        assert ready(eport) == {"ready": True,
                                "checks": {"store": "ok", "cloudLink": "disconnected"}}
        assert ("edgecore_outbox_depth", ()) in scrape(eport)
        cloud.start()
        wait_for(lambda: value(cport, "connected_nodes") == 1, 20,
                 what=lambda: f"the edge back:\n{edge.log()}")
        assert (value(eport, "edgecore_cloud_reconnects_total") or 0) >= 1

        # The edge stops: connected_nodes back to 0.
        edge.stop()
        wait_for(lambda: value(cport, "connected_nodes") == 0, 15)
        assert "Traceback" not in cloud.log() + edge.log() + mapper.log()


def test_a_connection_that_never_asks_for_the_upgrade_is_logged_and_counted(env: Env) -> None:
    """TLS completes with a node certificate, then silence: websockets drops such a
    connection at the handshake timeout without a word; the hub says so and counts it."""
    cloud = make_cloud(env, handshakeTimeout="1s")
    port = with_metrics(cloud)
    cloud.start()
    edge = join(cloud, "quiet")
    ctx = tls.client_context(ca_file=edge.pki / "ca.crt", cert_file=edge.pki / "edge.crt",
                             key_file=edge.pki / "edge.key")
    sock = socket.create_connection(("127.0.0.1", cloud.hub_port), timeout=10)
    with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls_sock:
        assert tls_sock.recv(100) == b""  # the hub closes it; nothing was ever sent
    assert cloud.daemon is not None
    cloud.daemon.wait_log("dropped: no WebSocket upgrade request within 1s after the TLS "
                          "handshake", 10)
    assert value(port, "cloudcore_handshake_failures_total", reason="timeout") == 1
