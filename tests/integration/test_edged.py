"""Pods on the edge: edged runs them through CRI on a real containerd."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.containerd import Containerd, containerd_available
from tests.support import Cloud, Edge, Env, edit_yaml, join, make_cloud, require, wait_for


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Containerd]:
    reason = containerd_available()
    require(reason is None, reason or "")
    with Containerd() as ctrd:
        yield ctrd


def cri(ctrd: Containerd) -> Any:
    import grpc

    from edgecore.cri import api_pb2, api_pb2_grpc

    channel = grpc.insecure_channel(ctrd.endpoint)
    return api_pb2, api_pb2_grpc.RuntimeServiceStub(channel), channel


def sandboxes(ctrd: Containerd, uid: str | None = None) -> list[Any]:
    pb, stub, channel = cri(ctrd)
    try:
        labels = {"moorage.io/managed": "true"}
        if uid:
            labels["io.kubernetes.pod.uid"] = uid
        return list(stub.ListPodSandbox(pb.ListPodSandboxRequest(
            filter=pb.PodSandboxFilter(label_selector=labels)), timeout=10).items)
    finally:
        channel.close()


def containers(ctrd: Containerd) -> list[Any]:
    pb, stub, channel = cri(ctrd)
    try:
        return list(stub.ListContainers(pb.ListContainersRequest(), timeout=10).containers)
    finally:
        channel.close()


def edge_with_runtime(cloud: Cloud, ctrd: Containerd, name: str) -> Edge:
    edge = join(cloud, name, None, "--remote-runtime-endpoint", ctrd.endpoint)
    edit_yaml(edge.config, lambda d: d["modules"]["edged"].update(
        enable=True, syncPeriod="0.5s", crashLoopBackoffBase="1s", crashLoopBackoffMax="8s"))
    return edge


def pod_manifest(ctrd: Containerd, name: str, node: str, command: str,
                 policy: str = "Always") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "restartPolicy": policy, "hostNetwork": True,
                     "containers": [{"name": "main", "image": ctrd.image,
                                     "command": ["sh", "-c", command],
                                     "env": [{"name": "GREETING", "value": "hello-moorage"}]}]}}


def apply(cloud: Cloud, env: Env, docs: list[dict[str, Any]]) -> None:
    from tests.support import write_manifests

    cloud.moorage("apply", "-f", str(write_manifests(env.root / "apply.yaml", docs)))


def cloud_pod(cloud: Cloud, name: str) -> dict[str, Any]:
    return json.loads(cloud.moorage("get", "pod", name, "-o", "json").stdout)


def phase(cloud: Cloud, name: str) -> str:
    return str(cloud_pod(cloud, name).get("status", {}).get("phase", ""))


def container_log(edge: Edge, uid: str) -> str:
    logs = list((edge.dir / "pods" / uid / "logs" / "main").glob("*.log"))
    return "".join(path.read_text(errors="replace") for path in logs)


def test_pod_runs_for_real_and_is_removed_on_delete(env: Env, runtime: Containerd) -> None:
    cloud = make_cloud(env).start()
    edge = edge_with_runtime(cloud, runtime, "worker").start()
    wait_for(lambda: cloud.node_ready("worker") is True, what="worker Ready")
    apply(cloud, env, [pod_manifest(runtime, "hello", "worker",
                                    "echo $GREETING; sleep 3600")])
    wait_for(lambda: phase(cloud, "hello") == "Running", 30, what="hello Running at the cloud")
    uid = cloud_pod(cloud, "hello")["metadata"]["uid"]
    listed = cloud.moorage("get", "pods").stdout.splitlines()
    assert listed[1].split()[:3] == ["hello", "1/1", "Running"]
    assert len(sandboxes(runtime, uid)) == 1
    assert [c.state for c in containers(runtime)] == [1]  # CONTAINER_RUNNING
    wait_for(lambda: "hello-moorage" in container_log(edge, uid), what="the container's output")

    cloud.moorage("delete", "pod", "hello")
    wait_for(lambda: sandboxes(runtime) == [] and containers(runtime) == [], 30,
             what="sandbox and containers removed")


def test_exited_container_restarts_with_growing_backoff(env: Env, runtime: Containerd) -> None:
    cloud = make_cloud(env).start()
    edge = edge_with_runtime(cloud, runtime, "crashy").start()
    wait_for(lambda: cloud.node_ready("crashy") is True, what="crashy Ready")
    apply(cloud, env, [pod_manifest(runtime, "flaky", "crashy", "echo boom; exit 3")])

    def restarts() -> int:
        statuses = cloud_pod(cloud, "flaky").get("status", {}).get("containerStatuses", [])
        return int(statuses[0]["restartCount"]) if statuses else 0

    wait_for(lambda: restarts() >= 3, 60, what="three restarts")
    assert edge.daemon is not None
    delays = [float(line.rsplit("next backoff ", 1)[1].rstrip("s"))
              for line in edge.log().splitlines() if "next backoff" in line]
    assert delays[:3] == [1.0, 2.0, 4.0]
    status = cloud_pod(cloud, "flaky")["status"]["containerStatuses"][0]
    last = status.get("lastState", status["state"]).get("terminated") or {}
    waiting = status["state"].get("waiting", {})
    assert last.get("exitCode") == 3 or waiting.get("reason") == "CrashLoopBackOff"

    apply(cloud, env, [pod_manifest(runtime, "once", "crashy", "exit 0", policy="Never")])
    wait_for(lambda: phase(cloud, "once") == "Succeeded", 30, what="a Never pod Succeeded")


def test_restarted_offline_edge_keeps_pods_without_duplicates(env: Env,
                                                              runtime: Containerd) -> None:
    cloud = make_cloud(env).start()
    edge = edge_with_runtime(cloud, runtime, "steady").start()
    wait_for(lambda: cloud.node_ready("steady") is True, what="steady Ready")
    apply(cloud, env, [pod_manifest(runtime, "keeper", "steady", "sleep 3600")])
    wait_for(lambda: phase(cloud, "keeper") == "Running", 30, what="keeper Running")
    before = {s.id for s in sandboxes(runtime)}
    before_containers = {c.id for c in containers(runtime)}

    edge.stop(signal.SIGKILL)
    cloud.stop()
    edge.start()
    assert edge.daemon is not None
    edge.daemon.wait_log("container runtime", timeout=20)
    wait_for(lambda: "connecting to the cloud failed" in edge.log(), what="offline edge")
    assert {s.id for s in sandboxes(runtime)} == before
    assert {c.id for c in containers(runtime)} == before_containers
    cloud.start()
    wait_for(lambda: cloud.node_ready("steady") is True, what="steady back")
    assert {s.id for s in sandboxes(runtime)} == before  # not recreated on reconnect
    assert phase(cloud, "keeper") == "Running"


def test_unsafe_runtime_sockets_are_refused(tmp_path: Path) -> None:
    from edgecore.runtime import RuntimeUnavailable, check_endpoint

    path = tmp_path / "fake.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        os.chmod(path, 0o666)  # noqa: S103 - the unsafe socket under test
        with pytest.raises(RuntimeUnavailable, match=r"writable by group .* or others"):
            check_endpoint(f"unix://{path}")
        os.chmod(path, 0o660)
        os.chown(path, 0, 1)  # group-writable by a group other than root
        with pytest.raises(RuntimeUnavailable, match="writable by group 1"):
            check_endpoint(f"unix://{path}")
        os.chown(path, 65534, 0)
        os.chmod(path, 0o600)
        with pytest.raises(RuntimeUnavailable, match="owned by uid 65534, not root"):
            check_endpoint(f"unix://{path}")
        os.chown(path, 0, 0)
        assert check_endpoint(f"unix://{path}") == path
        regular = tmp_path / "plain"
        regular.write_text("")
        with pytest.raises(RuntimeUnavailable, match="is not a socket"):
            check_endpoint(f"unix://{regular}")
        with pytest.raises(RuntimeUnavailable, match=r"only unix:///path"):
            check_endpoint("tcp://127.0.0.1:1234")
    finally:
        server.close()


def runtime_condition(cloud: Cloud, node: str) -> dict[str, Any]:
    status = cloud.nodes()[node]["status"]
    return next((c for c in status.get("conditions", [])
                 if c["type"] == "ContainerRuntimeReady"), {})


def test_logs_come_from_the_node_and_the_runtime_shows_in_node_status(
        env: Env, runtime: Containerd) -> None:
    import shutil
    import subprocess

    cloud = make_cloud(env).start()
    edge_with_runtime(cloud, runtime, "talker").start()
    wait_for(lambda: runtime_condition(cloud, "talker").get("status") == "True",
             what="the runtime condition at the cloud")
    info = cloud.nodes()["talker"]["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://")
    apply(cloud, env, [pod_manifest(runtime, "chatty", "talker",
                                    "for i in 1 2 3 4 5; do echo line-$i; done; sleep 3600")])
    wait_for(lambda: "line-5" in cloud.moorage("logs", "chatty", check=False).stdout, 30,
             what="moorage logs to show the output")
    assert cloud.moorage("logs", "chatty").stdout == "".join(f"line-{i}\n" for i in range(1, 6))
    assert cloud.moorage("logs", "chatty", "--tail", "2").stdout == "line-4\nline-5\n"
    missing = cloud.moorage("logs", "chatty", "-c", "nope", check=False)
    assert missing.returncode == 1 and "has no container 'nope'" in missing.stderr
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "--kubeconfig", str(cloud.kubeconfig), "logs", "chatty",
                              "--tail=1"], capture_output=True, text=True, timeout=30,
                             check=False)
        assert out.stdout == "line-5\n", out.stderr


def test_containerd_restart_is_survived(env: Env, runtime: Containerd) -> None:
    cloud = make_cloud(env).start()
    edge = edge_with_runtime(cloud, runtime, "sturdy").start()
    wait_for(lambda: cloud.node_ready("sturdy") is True, what="sturdy Ready")
    apply(cloud, env, [pod_manifest(runtime, "survivor", "sturdy", "sleep 3600")])
    wait_for(lambda: phase(cloud, "survivor") == "Running", 30, what="survivor Running")
    before = {s.id for s in sandboxes(runtime)}

    runtime.restart()
    assert edge.daemon is not None
    wait_for(lambda: runtime_condition(cloud, "sturdy").get("status") == "True", 30,
             what="the runtime condition back to True")
    wait_for(lambda: phase(cloud, "survivor") == "Running", 30, what="survivor Running")
    assert {s.id for s in sandboxes(runtime)} == before


def test_runtime_going_away_turns_the_condition_false(env: Env, runtime: Containerd) -> None:
    cloud = make_cloud(env).start()
    edge = edge_with_runtime(cloud, runtime, "fragile").start()
    wait_for(lambda: runtime_condition(cloud, "fragile").get("status") == "True",
             what="runtime condition True")
    runtime.stop_daemon()
    wait_for(lambda: runtime_condition(cloud, "fragile").get("status") == "False", 30,
             what="runtime condition False")
    assert runtime_condition(cloud, "fragile")["reason"] == "RuntimeUnavailable"
    assert edge.daemon is not None
    edge.daemon.wait_log("container runtime unavailable")
    runtime.restart()
    wait_for(lambda: runtime_condition(cloud, "fragile").get("status") == "True", 30,
             what="runtime condition True again")


def test_config_and_secrets_reach_the_container_as_env_and_files(
        env: Env, runtime: Containerd, tmp_path: Path) -> None:
    cloud = make_cloud(env).start()
    edge_with_runtime(cloud, runtime, "configured").start()
    wait_for(lambda: cloud.node_ready("configured") is True, what="configured Ready")
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "note").write_text("from-the-host")
    pod = pod_manifest(runtime, "reader", "configured",
                       "echo env=$MODE/$TOKEN; cat /cfg/greeting; echo; cat /sec/token; echo; "
                       "cat /host/note; echo; "
                       "echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                       "/sys/fs/cgroup/memory.max 2>/dev/null); "
                       "echo cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us "
                       "/sys/fs/cgroup/cpu.max 2>/dev/null); "
                       "ls /scratch && echo scratch-ok; sleep 3600")
    spec = pod["spec"]
    spec["volumes"] = [{"name": "cfg", "configMap": {"name": "app-config"}},
                       {"name": "sec", "secret": {"secretName": "app-secret"}},
                       {"name": "host", "hostPath": {"path": str(host_dir)}},
                       {"name": "scratch", "emptyDir": {}}]
    container = spec["containers"][0]
    container["volumeMounts"] = [{"name": "cfg", "mountPath": "/cfg"},
                                 {"name": "sec", "mountPath": "/sec", "readOnly": True},
                                 {"name": "host", "mountPath": "/host"},
                                 {"name": "scratch", "mountPath": "/scratch"}]
    container["envFrom"] = [{"configMapRef": {"name": "app-config"}}]
    container["env"] = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "app-secret", "key": "token"}}}]
    container["resources"] = {"limits": {"memory": "64Mi", "cpu": "500m"}}
    apply(cloud, env, [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"},
         "data": {"MODE": "edge", "greeting": "hello-from-configmap"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-secret"},
         "stringData": {"token": "s3cret"}},
        pod])
    wait_for(lambda: "scratch-ok" in cloud.moorage("logs", "reader", check=False).stdout, 30,
             what="the container to print what it sees")
    out = cloud.moorage("logs", "reader").stdout
    assert "env=edge/s3cret" in out
    assert "hello-from-configmap" in out and "s3cret" in out and "from-the-host" in out
    assert "mem=67108864" in out  # limits.memory 64Mi, enforced by the cgroup
    assert "cpu=50000" in out  # limits.cpu 500m: 50 ms per 100 ms period


def test_missing_image_offline_gives_a_clear_pod_status(env: Env, runtime: Containerd) -> None:
    cloud = make_cloud(env).start()
    edge_with_runtime(cloud, runtime, "isolated").start()
    wait_for(lambda: cloud.node_ready("isolated") is True, what="isolated Ready")
    pod = pod_manifest(runtime, "nowhere", "isolated", "true")
    pod["spec"]["containers"][0]["image"] = "moorage.local/not-imported:1"
    apply(cloud, env, [pod])
    wait_for(lambda: "cannot be pulled" in str(cloud_pod(cloud, "nowhere").get("status", {})),
             60, what="the pull failure in the pod status")
    status = cloud_pod(cloud, "nowhere")["status"]
    assert status["phase"] == "Pending"
    assert "moorage.local/not-imported:1" in status["message"]
    assert "ctr -n k8s.io images import" in status["message"]
    assert runtime_condition(cloud, "isolated").get("status") == "True"  # the node is fine


def test_offline_edge_recreates_a_pod_that_vanished(env: Env, runtime: Containerd) -> None:
    cloud = make_cloud(env).start()
    edge = edge_with_runtime(cloud, runtime, "alone").start()
    wait_for(lambda: cloud.node_ready("alone") is True, what="alone Ready")
    apply(cloud, env, [pod_manifest(runtime, "phoenix", "alone", "sleep 3600")])
    wait_for(lambda: phase(cloud, "phoenix") == "Running", 30, what="phoenix Running")
    cloud.stop()
    (gone,) = sandboxes(runtime)
    pb, stub, channel = cri(runtime)
    try:
        stub.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=gone.id), timeout=30)
        stub.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=gone.id), timeout=30)
    finally:
        channel.close()
    wait_for(lambda: [s.id for s in sandboxes(runtime)] not in ([], [gone.id]), 30,
             what="edged to recreate the pod from its store, with no cloud")
    wait_for(lambda: [c.state for c in containers(runtime)] == [1], 30,
             what="its container running again")
    assert edge.daemon is not None and "connecting to the cloud failed" in edge.log()
