"""The backup and restore procedure of docs/operators-guide.md, run as written.

The shell blocks are read from the guide itself (the ones marked
``<!-- doc-test: backup -->`` and ``<!-- doc-test: restore -->``) and run with bash, so
the guide and this test cannot drift apart. The backup is taken while cloudcore runs
and writes; after more changes, cloudcore is stopped, the backup restored, cloudcore
started again: the store must hold exactly what it held at backup time, and the node
enrolled before the backup must connect again with its certificate. The node held
newer state than the restored store (and had seen versions the store hands out again):
its inventory brings it in line with the restored store, and later writes reach it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.support import (
    BIN,
    SCALE,
    Cloud,
    Edge,
    Env,
    enable_metaserver,
    held,
    http_json,
    join,
    make_cloud,
    wait_for,
    write_manifests,
)

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operators-guide.md"
KINDS = ("configmaps", "devicemodels", "devices")


def documented(step: str) -> str:
    """The shell block that follows ``<!-- doc-test: STEP -->`` in the guide."""
    found = re.search(rf"<!-- doc-test: {step} -->\s*```sh\n(.*?)```", GUIDE.read_text(),
                      re.DOTALL)
    assert found, f"{GUIDE} has no block marked doc-test: {step}"
    return found.group(1)


def run_documented(step: str, env: Env, data: Path, backup: Path) -> None:
    # python3 is the one of this installation, as on a machine where pip installed Moorage.
    variables = {**env.vars, "DATA": str(data), "BACKUP": str(backup),
                 "PATH": f"{BIN}{os.pathsep}{env.vars.get('PATH', '')}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", documented(step)],
                            capture_output=True, text=True, env=variables, timeout=60 * SCALE,
                            check=False)
    assert result.returncode == 0, f"{step} failed:\n{result.stdout}\n{result.stderr}"


def configmap(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"}, "data": {"value": value}}


def consumer(node: str, configmaps: list[str]) -> dict[str, Any]:
    """A pod on ``node`` that mounts ``configmaps``: the cloud sends them to that node."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "consumer", "namespace": "default"},
            "spec": {"nodeName": node,
                     "containers": [{"name": "app", "image": "docker.io/library/busybox"}],
                     "volumes": [{"name": name, "configMap": {"name": name}}
                                 for name in configmaps]}}


def thermometer(name: str, node: str) -> list[dict[str, Any]]:
    model = {"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
             "metadata": {"name": "thermometer", "namespace": "default"},
             "spec": {"properties": [{"name": "temperature", "type": "FLOAT",
                                      "accessMode": "ReadWrite"}]}}
    device = {"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
              "metadata": {"name": name, "namespace": "default"},
              "spec": {"deviceModelRef": {"name": "thermometer"}, "nodeName": node,
                       "protocol": {"protocolName": "modbus", "configData": {
                           "communicateMode": "TCP", "ip": "192.0.2.20", "port": 502,
                           "slaveID": 1}},
                       "properties": [{"name": "temperature", "desired": {"value": "21.5"},
                                       "visitors": {"protocolName": "modbus", "configData": {
                                           "register": "HoldingRegister", "offset": 10,
                                           "dataType": "int16"}}}]}}
    return [model, device]


def snapshot(cloud: Cloud) -> dict[str, dict[str, Any]]:
    """Every object of KINDS: name -> uid, resourceVersion and its desired part."""
    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        items = json.loads(cloud.moorage("get", kind, "-A", "-o", "json").stdout)["items"]
        for item in items:
            meta = item["metadata"]
            out[f"{kind}/{meta['namespace']}/{meta['name']}"] = {
                "uid": meta["uid"], "resourceVersion": meta["resourceVersion"],
                "desired": item.get("data", item.get("spec"))}
    return out


def test_documented_backup_and_restore(env: Env) -> None:
    cloud = make_cloud(env)
    cloud.start()
    edge = join(cloud, "edge-1")
    enable_metaserver(edge)
    edge.start()
    wait_for(lambda: cloud.node_ready("edge-1") is True, 20, what="edge-1 Ready")

    cloud.moorage("apply", "-f", str(write_manifests(env.root / "before.yaml", [
        configmap("kept", "1"), configmap("changed", "old"), configmap("deleted", "1"),
        consumer("edge-1", ["kept", "changed", "deleted", "created-later", "after-restore"]),
        *thermometer("thermometer-1", "edge-1")])))
    at_backup = snapshot(cloud)
    assert {"configmaps/default/kept", "configmaps/default/changed",
            "configmaps/default/deleted", "devicemodels/default/thermometer",
            "devices/default/thermometer-1"} <= set(at_backup)

    backup = env.root / "backups" / "1"
    run_documented("backup", env, cloud.dir, backup)
    assert cloud.daemon is not None and cloud.daemon.running, "the backup stopped cloudcore"
    assert (backup / "pki" / "ca.key").stat().st_mode & 0o077 == 0
    assert (backup / "cloudcore.db").stat().st_mode & 0o077 == 0
    assert backup.stat().st_mode & 0o777 == 0o700

    # Life goes on after the backup: a new object, a change, two deletes.
    cloud.moorage("apply", "-f", str(write_manifests(env.root / "after.yaml", [
        configmap("created-later", "1"), configmap("changed", "new")])))
    cloud.moorage("delete", "configmap", "deleted")
    cloud.moorage("delete", "device", "thermometer-1")
    assert snapshot(cloud) != at_backup
    wait_for(lambda: held(edge, "configmaps") >= {"created-later"} and
             edge_value(edge, "changed") == "new" and
             not held(edge, "devices", "/apis/devices.kubeedge.io/v1beta1"), 20,
             what=lambda: f"the changes after the backup on the node: {node_state(edge)}")

    # The node is away while the cloud is restored (so the check of the restored store
    # below sees it before the node's inventory makes the cloud write anything).
    edge.stop()
    cloud.stop()
    run_documented("restore", env, cloud.dir, backup)
    cloud.start()

    assert snapshot(cloud) == at_backup
    edge.start()
    # The node enrolled before the backup connects again with the certificate it holds.
    cloud.daemon.wait_log("node edge-1 connected from", 20, count=2)
    wait_for(lambda: cloud.node_ready("edge-1") is True, 20, what="edge-1 Ready after restore")
    assert edge.daemon is not None and edge.daemon.running

    # The node had seen versions above the restored counter: the cloud says so and moves on.
    cloud.daemon.wait_log("the store went back in time (restored from a backup?)", 20)
    # The node drops what was created after the backup, gets back what was deleted, and
    # the restored version of what changed (which carries an older resourceVersion).
    wait_for(lambda: held(edge, "configmaps") >= {"kept", "changed", "deleted"} and
             "created-later" not in held(edge, "configmaps") and
             edge_value(edge, "changed") == "old" and
             held(edge, "devices", "/apis/devices.kubeedge.io/v1beta1") == {"thermometer-1"},
             30, what=lambda: f"the node in line with the restored store: {node_state(edge)}")
    # New writes get versions the node has not seen, so it takes them.
    cloud.moorage("apply", "-f", str(write_manifests(env.root / "later.yaml", [
        configmap("kept", "2"), configmap("after-restore", "1")])))
    wait_for(lambda: edge_value(edge, "kept") == "2" and
             "after-restore" in held(edge, "configmaps"), 20,
             what=lambda: f"writes after the restore on the node: {node_state(edge)}")


def edge_value(edge: Edge, name: str) -> str | None:
    """The ``value`` of ConfigMap default/NAME as the node's MetaServer serves it."""
    items = http_json(edge.metaserver_port, "/api/v1/namespaces/default/configmaps")["items"]
    found = [i for i in items if i["metadata"]["name"] == name]
    return found[0].get("data", {}).get("value") if found else None


def node_state(edge: Edge) -> str:
    configmaps = {name: edge_value(edge, name) for name in sorted(held(edge, "configmaps"))}
    devices = held(edge, "devices", "/apis/devices.kubeedge.io/v1beta1")
    return f"configmaps {configmaps}, devices {sorted(devices)}\n{edge.log()[-3000:]}"
