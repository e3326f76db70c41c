"""The link between cloud and edge cut for 60 s while both sides keep changing."""

from __future__ import annotations

import threading
import time
from typing import Any

from moorage import kubeconfig
from moorage.client import AdminClient
from tests.integration.test_desired_state import all_pods_synced
from tests.support import (
    Env,
    FaultProxy,
    enable_metaserver,
    held,
    http_json,
    join,
    make_cloud,
    wait_for,
    write_manifests,
)

CUT_SECONDS = 60.0


def pod(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "volumes": [{"name": "c", "configMap": {"name": "cm"}}],
                     "containers": [{"name": "app", "image": "busybox",
                                     "volumeMounts": [{"name": "c", "mountPath": "/c"}]}]}}


def test_sixty_second_cut_heals_and_every_offline_report_arrives_in_order(env: Env) -> None:
    cloud = make_cloud(env, keepaliveInterval="1s", nodeGracePeriod="5s").start()
    proxy = FaultProxy(cloud.hub_port)
    try:
        edge = join(cloud, "island")
        edge.configure(heartbeat="1s", websocket={"server": f"127.0.0.1:{proxy.port}",
                                                  "handshakeTimeout": "3s"})
        port = enable_metaserver(edge)
        edge.start()
        wait_for(lambda: cloud.node_ready("island") is True, what="island Ready")
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"},
              "data": {"v": "before"}}
        cloud.moorage("apply", "-f", str(write_manifests(
            env.root / "a.yaml", [cm, *[pod(f"p{i}", "island") for i in range(5)]])))
        wait_for(lambda: held(edge, "pods") == {f"p{i}" for i in range(5)}, what="5 pods")

        # Record every status the cloud commits for p0, from now on.
        start_rv = cloud.moorage("get", "pods", "-o", "json").stdout
        import json as _json

        rv = _json.loads(start_rv)["metadata"]["resourceVersion"]
        seen: list[str] = []

        def watch() -> None:
            client = AdminClient(kubeconfig.load(cloud.kubeconfig))
            path = (f"/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}"
                    "&fieldSelector=metadata.name%3Dp0&timeoutSeconds=150")
            for event in client.watch(path, accept="application/json"):
                message = event["object"].get("status", {}).get("message")
                if message and (not seen or seen[-1] != message):
                    seen.append(message)
                if message == "report-9":
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        proxy.freeze()
        cut_at = time.monotonic()
        assert edge.daemon is not None
        edge.daemon.wait_log("connection to the cloud lost", timeout=10)

        # The cloud changes and deletes; the edge reports, each side on its own.
        cm["data"] = {"v": "after"}
        cloud.moorage("apply", "-f", str(write_manifests(
            env.root / "b.yaml", [cm, pod("p5", "island")])))
        cloud.moorage("delete", "pod", "p4")
        for i in range(10):
            http_json(port, "/api/v1/namespaces/default/pods/p0/status", "PATCH",
                      {"status": {"phase": "Running", "message": f"report-{i}"}},
                      "application/merge-patch+json")
        assert held(edge, "pods") == {f"p{i}" for i in range(5)}  # still cut off
        wait_for(lambda: time.monotonic() - cut_at >= CUT_SECONDS, CUT_SECONDS + 10,
                 interval=0.5, what="the cut to last 60 s")
        assert cloud.node_ready("island") is False  # the cloud noticed the silence

        proxy.heal()
        wait_for(lambda: held(edge, "pods") == {"p0", "p1", "p2", "p3", "p5"}, 30,
                 what="the edge to catch up")
        wait_for(lambda: http_json(port, "/api/v1/namespaces/default/configmaps/cm")["data"]
                 == {"v": "after"}, what="the new ConfigMap at the edge")
        watcher.join(30)
        assert seen == [f"report-{i}" for i in range(10)]
        wait_for(lambda: cloud.node_ready("island") is True, what="island Ready again")
        wait_for(lambda: all_pods_synced(cloud), what="everything Synced")
    finally:
        proxy.close()
