"""kill -9 of either daemon in the middle of a large apply: nothing committed is lost,
nothing is duplicated, and both sides converge once it is back."""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any

import pytest

from tests.integration.test_desired_state import (
    expected_for,
    fleet_manifests,
    holdings,
    start_fleet,
)
from tests.support import BIN, Cloud, Edge, Env, http_json, make_cloud, wait_for, write_manifests

KINDS = {"pods": "/api/v1", "configmaps": "/api/v1", "secrets": "/api/v1",
         "devices": "/apis/devices.kubeedge.io/v1beta1",
         "devicemodels": "/apis/devices.kubeedge.io/v1beta1"}


def cloud_objects(cloud: Cloud) -> dict[str, dict[str, dict[str, Any]]]:
    found = {}
    for plural in KINDS:
        items = json.loads(cloud.moorage("get", plural, "-A", "-o", "json").stdout)["items"]
        found[plural] = {item["metadata"]["name"]: item for item in items}
    return found


def expected_from(objects: dict[str, dict[str, dict[str, Any]]], node: str
                  ) -> dict[str, set[str]]:
    """What ``node`` must hold given what the cloud committed (the fleet's naming scheme)."""
    pods = {n for n, p in objects["pods"].items() if p["spec"]["nodeName"] == node}
    configmaps, secrets = set(), set()
    for name in pods:
        i = int(name.rsplit("-", 1)[1])
        configmaps.add(f"cm-{node}-{i % 20}")
        secrets.add(f"sec-{node}-{i % 10}")
    devices = {n for n, d in objects["devices"].items() if d["spec"]["nodeName"] == node}
    models = {f"dm-{node}-{n.rsplit('-', 1)[1]}" for n in devices}
    return {"pods": pods, "configmaps": configmaps & set(objects["configmaps"]),
            "secrets": secrets & set(objects["secrets"]), "devices": devices,
            "devicemodels": models & set(objects["devicemodels"]), "nodes": {node}}


def same_versions(edge: Edge, objects: dict[str, dict[str, dict[str, Any]]]) -> bool:
    """Every object the edge holds is the cloud's, same uid and resourceVersion."""
    for plural, group in KINDS.items():
        for item in http_json(edge.metaserver_port, f"{group}/{plural}")["items"]:
            mine = objects[plural].get(item["metadata"]["name"])
            if mine is None or mine["metadata"]["uid"] != item["metadata"]["uid"] or \
                    mine["metadata"]["resourceVersion"] != item["metadata"]["resourceVersion"]:
                return False
    return True


def apply_in_background(env: Env, cloud: Cloud, path: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "moorage"), "apply", "-f", path, "--kubeconfig",
                             str(cloud.kubeconfig)], env=env.vars, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_cloudcore_killed_mid_apply_loses_nothing_it_committed(env: Env) -> None:
    cloud = make_cloud(env, enrollRatePerClient=1000).start()
    names = [f"n{i}" for i in range(10)]
    edges = start_fleet(cloud, names)
    path = str(write_manifests(env.root / "fleet.yaml", fleet_manifests(names)))

    applying = apply_in_background(env, cloud, path)
    assert applying.stdout is not None
    created = 0
    for line in applying.stdout:
        created += line.endswith(" created\n")
        if created >= 400:
            break
    assert cloud.daemon is not None
    cloud.daemon.stop(signal.SIGKILL)
    applying.communicate(timeout=60)
    assert applying.returncode != 0  # the CLI noticed the cloud went away

    cloud.start()
    committed = cloud_objects(cloud)
    assert 400 <= sum(len(v) for v in committed.values()) < 1000
    for edge in edges:
        want = expected_from(committed, edge.name)
        wait_for(lambda e=edge, w=want: holdings(e) == w, 60,
                 what=f"{edge.name} to converge on what the cloud committed")
        assert same_versions(edge, committed)

    # Finishing the apply completes the picture everywhere.
    cloud.moorage("apply", "-f", path)
    for edge in edges:
        wait_for(lambda e=edge: holdings(e) == expected_for(e.name), 60,
                 what=f"{edge.name} complete")
    final = cloud_objects(cloud)
    assert all(same_versions(edge, final) for edge in edges)


def test_edgecore_killed_mid_stream_converges_after_restart(env: Env) -> None:
    cloud = make_cloud(env, enrollRatePerClient=1000).start()
    names = [f"n{i}" for i in range(10)]
    edges = start_fleet(cloud, names)
    victim = edges[-1]  # the manifests list its objects last
    path = str(write_manifests(env.root / "fleet.yaml", fleet_manifests(names)))

    applying = apply_in_background(env, cloud, path)
    at_kill = wait_for(lambda: (lambda n: n if n >= 5 else 0)(len(holdings(victim)["pods"])),
                       60, interval=0.01, what="n9 to be receiving")
    victim.stop(signal.SIGKILL)
    assert at_kill < 60  # killed in the middle of its stream
    out, _ = applying.communicate(timeout=120)
    assert applying.returncode == 0, out

    victim.start()
    wait_for(lambda: holdings(victim) == expected_for("n9"), 60, what="n9 to converge")
    final = cloud_objects(cloud)
    assert same_versions(victim, final)
    for edge in edges[:-1]:
        wait_for(lambda e=edge: holdings(e) == expected_for(e.name), 60,
                 what=f"{edge.name} complete")


@pytest.mark.parametrize("loss", ["deleted", "damaged"])
def test_a_node_whose_store_was_lost_gets_everything_again(env: Env, loss: str) -> None:
    """The node's disk was replaced, or its store damaged (a power cut on an SD card), its
    certificate kept: the cloud's record says it holds everything, its inventory says
    nothing; the inventory wins. A damaged store is moved aside, not deleted."""
    cloud = make_cloud(env).start()
    (edge,) = start_fleet(cloud, ["n0"])
    path = str(write_manifests(env.root / "fleet.yaml",
                               fleet_manifests(["n0"], pods=10, configmaps=5, secrets=2,
                                               devices=2)))
    cloud.moorage("apply", "-f", path)
    want = expected_for("n0", pods=10, configmaps=5, secrets=2, devices=2)
    wait_for(lambda: holdings(edge) == want, 60, what="n0 complete")

    edge.stop()
    for lost in edge.dir.glob("edgecore.db*"):
        lost.unlink()
    if loss == "damaged":
        (edge.dir / "edgecore.db").write_bytes(b"\x00garbage after a power cut" * 100)
    edge.start()
    assert edge.daemon is not None
    if loss == "damaged":
        edge.daemon.wait_log("is damaged: file is not a database; moved it to", 20)
        assert [p.name.split("-")[0] for p in edge.dir.glob("edgecore.db.damaged-*")] == [
            "edgecore.db.damaged"]
    edge.daemon.wait_log("serving 0 object(s) from the local store", 20)
    wait_for(lambda: holdings(edge) == want, 60, what="n0 complete again")
    assert same_versions(edge, cloud_objects(cloud))
    assert cloud.daemon is not None
    cloud.daemon.wait_log(f"node n0 holds 0 object(s): 0 the cloud did not count on, "
                          f"{sum(map(len, want.values()))} it lacks", 20)
