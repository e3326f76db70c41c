"""Desired state from the cloud to the edges: routing, reliable sync, the MetaServer."""

from __future__ import annotations

import json
from typing import Any

from tests.support import (
    Cloud,
    Edge,
    Env,
    enable_metaserver,
    held,
    join,
    make_cloud,
    wait_for,
    write_manifests,
)

DEV = "/apis/devices.kubeedge.io/v1beta1"


def fleet_manifests(nodes: list[str], pods: int = 60, configmaps: int = 20, secrets: int = 10,
                    devices: int = 5) -> list[dict[str, Any]]:
    """100 objects per node by default; each node's pods use only that node's config."""
    docs: list[dict[str, Any]] = []
    for node in nodes:
        for j in range(configmaps):
            docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": f"cm-{node}-{j}"}, "data": {"k": str(j)}})
        for k in range(secrets):
            docs.append({"apiVersion": "v1", "kind": "Secret",
                         "metadata": {"name": f"sec-{node}-{k}"},
                         "data": {"password": "c2VjcmV0"}})
        for i in range(pods):
            docs.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"pod-{node}-{i}", "labels": {"node": node}},
                         "spec": {"nodeName": node,
                                  "volumes": [{"name": "cfg", "configMap": {
                                      "name": f"cm-{node}-{i % configmaps}"}}],
                                  "containers": [{
                                      "name": "app", "image": "busybox",
                                      "envFrom": [{"secretRef": {
                                          "name": f"sec-{node}-{i % secrets}"}}],
                                      "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]}})
        for d in range(devices):
            docs.append({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
                         "metadata": {"name": f"dm-{node}-{d}"},
                         "spec": {"properties": [{"name": "temp", "type": "INT",
                                                  "accessMode": "ReadOnly"}]}})
            docs.append({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
                         "metadata": {"name": f"dev-{node}-{d}"},
                         "spec": {"nodeName": node,
                                  "deviceModelRef": {"name": f"dm-{node}-{d}"}}})
    return docs


def expected_for(node: str, pods: int = 60, configmaps: int = 20, secrets: int = 10,
                 devices: int = 5) -> dict[str, set[str]]:
    return {
        "pods": {f"pod-{node}-{i}" for i in range(pods)},
        "configmaps": {f"cm-{node}-{j}" for j in range(configmaps)},
        "secrets": {f"sec-{node}-{k}" for k in range(secrets)},
        "devices": {f"dev-{node}-{d}" for d in range(devices)},
        "devicemodels": {f"dm-{node}-{d}" for d in range(devices)},
        "nodes": {node},
    }


def holdings(edge: Edge) -> dict[str, set[str]]:
    return {
        "pods": held(edge, "pods"), "configmaps": held(edge, "configmaps"),
        "secrets": held(edge, "secrets"), "devices": held(edge, "devices", DEV),
        "devicemodels": held(edge, "devicemodels", DEV), "nodes": held(edge, "nodes"),
    }


def all_pods_synced(cloud: Cloud) -> bool:
    table = cloud.moorage("get", "pods", "-A", "-o", "wide").stdout.splitlines()[1:]
    return bool(table) and all(line.split()[-1] == "Synced" for line in table)


def start_fleet(cloud: Cloud, names: list[str]) -> list[Edge]:
    """Enroll and start edges with their MetaServer on."""
    token = cloud.token()
    edges = []
    for name in names:
        edge = join(cloud, name, token)
        enable_metaserver(edge)
        edges.append(edge.start())
    wait_for(lambda: all(cloud.node_ready(n) for n in names), 60, what="the fleet Ready")
    return edges


def test_thousand_objects_reach_exactly_their_ten_nodes(env: Env) -> None:
    cloud = make_cloud(env, enrollRatePerClient=1000).start()
    names = [f"n{i}" for i in range(10)]
    edges = start_fleet(cloud, names)
    docs = fleet_manifests(names)
    # Objects that no pod uses reach no node at all: secrets are need-to-know.
    docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unused"},
                 "stringData": {"k": "v"}})
    docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}})
    assert len(docs) == 1002
    applied = cloud.moorage("apply", "-f", str(write_manifests(env.root / "fleet.yaml", docs)))
    assert applied.stdout.count(" created") == 1002

    for edge in edges:
        want = expected_for(edge.name)
        wait_for(lambda e=edge, w=want: holdings(e) == w, 60,
                 what=f"{edge.name} to hold exactly its objects")
    wait_for(lambda: all_pods_synced(cloud), 30, what="every pod Synced at the cloud")


def test_changes_moves_and_deletes_follow_the_routing(env: Env) -> None:
    cloud = make_cloud(env).start()
    a, b = start_fleet(cloud, ["a", "b"])
    docs = fleet_manifests(["a"], pods=2, configmaps=1, secrets=1, devices=1)
    cloud.moorage("apply", "-f", str(write_manifests(env.root / "a.yaml", docs)))
    wait_for(lambda: holdings(a) == expected_for("a", 2, 1, 1, 1), what="a holds its objects")
    assert held(b, "pods") == set()

    # Move one pod to b: b gets it and the config it needs; a keeps what its other pod uses.
    moved = docs[2]
    assert moved["metadata"]["name"] == "pod-a-0"
    moved["spec"]["nodeName"] = "b"
    cloud.moorage("apply", "-f", str(write_manifests(env.root / "move.yaml", [moved])))
    wait_for(lambda: held(b, "pods") == {"pod-a-0"} and held(b, "configmaps") == {"cm-a-0"}
             and held(b, "secrets") == {"sec-a-0"}, what="b to receive the moved pod")
    wait_for(lambda: held(a, "pods") == {"pod-a-1"}, what="a to lose the moved pod")
    assert held(a, "configmaps") == {"cm-a-0"}  # still used by pod-a-1

    # A ConfigMap change reaches both nodes that use it.
    cloud.moorage("apply", "-f", str(write_manifests(env.root / "cm.yaml", [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm-a-0"},
         "data": {"k": "changed"}}])))
    for edge in (a, b):
        wait_for(lambda e=edge: _port_json(e, "/api/v1/namespaces/default/configmaps/cm-a-0")
                 ["data"] == {"k": "changed"}, what=f"{edge.name} to see the new data")

    # Deleting the last user of a secret removes it from the node.
    cloud.moorage("delete", "pod", "pod-a-1")
    wait_for(lambda: held(a, "pods") == set() and held(a, "secrets") == set()
             and held(a, "configmaps") == set(), what="a to drop what nothing uses")
    assert held(a, "devices", DEV) == {"dev-a-0"}  # devices follow spec.nodeName


def _port_json(edge: Edge, path: str) -> Any:
    from tests.support import http_json

    return http_json(edge.metaserver_port, path)


def test_edge_restarted_with_cloud_down_serves_last_known_state_at_once(env: Env) -> None:
    cloud = make_cloud(env).start()
    (edge,) = start_fleet(cloud, ["lonely"])
    docs = fleet_manifests(["lonely"], pods=3, configmaps=2, secrets=1, devices=1)
    cloud.moorage("apply", "-f", str(write_manifests(env.root / "l.yaml", docs)))
    want = expected_for("lonely", 3, 2, 1, 1)
    wait_for(lambda: holdings(edge) == want, what="lonely holds its objects")

    cloud.stop()
    edge.stop()
    edge.start()
    from tests.support import port_open

    wait_for(lambda: port_open(edge.metaserver_port), 10, what="the MetaServer to listen")
    assert holdings(edge) == want  # first answer, no waiting for a cloud that is not there
    assert edge.daemon is not None
    edge.daemon.wait_log("connecting to the cloud failed")


def test_pod_status_reported_at_the_edge_reaches_the_cloud(env: Env) -> None:
    cloud = make_cloud(env).start()
    (edge,) = start_fleet(cloud, ["reporter"])
    docs = fleet_manifests(["reporter"], pods=1, configmaps=1, secrets=1, devices=0)
    cloud.moorage("apply", "-f", str(write_manifests(env.root / "r.yaml", docs)))
    wait_for(lambda: held(edge, "pods") == {"pod-reporter-0"}, what="the pod at the edge")
    from tests.support import http_json

    http_json(edge.metaserver_port, "/api/v1/namespaces/default/pods/pod-reporter-0/status",
              "PATCH", {"status": {"phase": "Running", "podIP": "10.1.2.3"}},
              "application/merge-patch+json")
    wait_for(lambda: json.loads(cloud.moorage("get", "pod", "pod-reporter-0", "-o", "json")
                                .stdout).get("status", {}).get("podIP") == "10.1.2.3",
             what="the status at the cloud")
    assert all_pods_synced(cloud)  # a status report does not make the pod due again
