"""A real kubectl against the admin API (with the kubeconfig `moorage init` writes) and
against an edge's MetaServer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.test_desired_state import start_fleet
from tests.support import Env, enable_metaserver, make_cloud, require, wait_for, write_manifests

KUBECTL = shutil.which("kubectl")


def kubectl(*args: str, env: Env) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    return subprocess.run([KUBECTL, *args], capture_output=True, text=True, timeout=60,
                          env=env.vars, check=False)


class Watcher:
    """`kubectl get -w` in the background, its output in a file."""

    def __init__(self, env: Env, name: str, *args: str) -> None:
        assert KUBECTL is not None
        self.path = env.root / f"{name}.out"
        with self.path.open("w") as out:
            self.proc = subprocess.Popen([KUBECTL, *args], stdout=out, stderr=subprocess.STDOUT,
                                         env=env.vars)

    def output(self) -> str:
        return self.path.read_text()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def pod(name: str, node: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"a": "b"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}


@pytest.fixture(autouse=True)
def _kubectl() -> None:
    require(KUBECTL is not None, "kubectl is not on PATH")


def test_kubectl_against_the_admin_api(env: Env) -> None:
    cloud = make_cloud(env).start()
    kc = ["--kubeconfig", str(cloud.kubeconfig)]
    watcher = Watcher(env, "watch", *kc, "get", "pods", "-w")
    try:
        manifest = write_manifests(env.root / "pod.yaml", [pod("from-kubectl", "somewhere")])
        created = kubectl(*kc, "create", "-f", str(manifest), env=env)
        assert created.returncode == 0, created.stderr
        assert "pod/from-kubectl created" in created.stdout

        listed = kubectl(*kc, "get", "pods", env=env)
        assert listed.stdout.split()[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        assert "from-kubectl" in listed.stdout

        as_yaml = yaml.safe_load(kubectl(*kc, "get", "pod", "from-kubectl", "-o", "yaml",
                                         env=env).stdout)
        assert as_yaml["spec"]["nodeName"] == "somewhere"
        assert as_yaml["metadata"]["uid"]

        wait_for(lambda: "from-kubectl" in watcher.output(), what="kubectl -w to show it")
        again = kubectl(*kc, "create", "-f", str(manifest), env=env)
        assert again.returncode != 0 and "already exists" in again.stderr

        deleted = kubectl(*kc, "delete", "pod", "from-kubectl", env=env)
        assert deleted.returncode == 0 and 'pod "from-kubectl" deleted' in deleted.stdout
        missing = kubectl(*kc, "get", "pod", "from-kubectl", env=env)
        assert missing.returncode != 0 and "NotFound" in missing.stderr

        invalid = write_manifests(env.root / "bad.yaml", [{
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"},
            "spec": {"containers": [{"name": "c"}]}}])
        refused = kubectl(*kc, "create", "-f", str(invalid), env=env)
        assert refused.returncode != 0
        assert "spec.containers[0].image: required" in refused.stderr
        nodes = kubectl(*kc, "get", "nodes", env=env)
        assert nodes.returncode == 0

        # kubectl asks for strict field validation by default, and prints warnings.
        typo = pod("typo", "somewhere")
        typo["spec"]["containers"][0].update(  # type: ignore[index]
            imagee="busybox", imagePullPolicy="Always")
        typo_file = write_manifests(env.root / "typo.yaml", [typo])
        strict = kubectl(*kc, "create", "-f", str(typo_file), env=env)
        assert strict.returncode != 0
        assert "spec.containers[0].imagee: unknown field; did you mean image?" in strict.stderr
        warned = kubectl(*kc, "create", "-f", str(typo_file), "--validate=warn", env=env)
        assert warned.returncode == 0, warned.stderr
        assert "Warning: spec.containers[0].imagee: unknown field; did you mean image?" in \
            warned.stderr
        assert "Warning: spec.containers[0].imagePullPolicy: not supported by Moorage, " \
            "ignored" in warned.stderr
    finally:
        watcher.stop()


def test_kubectl_against_the_metaserver(env: Env) -> None:
    cloud = make_cloud(env).start()
    (edge,) = start_fleet(cloud, ["edgy"])
    server = ["--server", f"http://127.0.0.1:{edge.metaserver_port}"]
    watcher = Watcher(env, "edge-watch", *server, "get", "pods", "-w")
    try:
        cloud.moorage("apply", "-f", str(write_manifests(env.root / "p.yaml",
                                                         [pod("at-the-edge", "edgy")])))
        wait_for(lambda: "at-the-edge" in watcher.output(), what="kubectl -w at the edge")
        listed = kubectl(*server, "get", "pods", env=env)
        assert listed.returncode == 0 and "at-the-edge" in listed.stdout
        assert listed.stdout.split()[:2] == ["NAME", "READY"]
        got = yaml.safe_load(kubectl(*server, "get", "pod", "at-the-edge", "-o", "yaml",
                                     env=env).stdout)
        assert got["spec"]["nodeName"] == "edgy"
    finally:
        watcher.stop()


def test_metaserver_refuses_a_non_loopback_address(env: Env) -> None:
    cloud = make_cloud(env).start()
    from tests.support import edit_yaml, join

    edge = join(cloud, "exposed")
    enable_metaserver(edge)
    edit_yaml(edge.config, lambda d: d["modules"]["metaManager"]["metaServer"].update(
        server="0.0.0.0:10550"))
    result = env.run("edgecore", "--config", str(edge.config), check=False)
    assert result.returncode == 2
    assert "0.0.0.0 is not a loopback address" in result.stderr
    assert Path(edge.config).exists()


def test_kubectl_apply_updates_pods_by_strategic_merge(env: Env) -> None:
    """kubectl apply sends a strategic merge patch: containers merge by name, and what was
    dropped from the manifest is deleted."""
    cloud = make_cloud(env).start()
    kc = ["--kubeconfig", str(cloud.kubeconfig)]

    def apply(image: str, env_vars: list[dict[str, str]], sidecar: bool) -> None:
        manifest = pod("applied", "somewhere")
        app = manifest["spec"]["containers"][0]  # type: ignore[index]
        app.update(image=image, command=["sleep", "3600"], env=env_vars)
        if sidecar:
            manifest["spec"]["containers"].append(  # type: ignore[index]
                {"name": "sidecar", "image": "side:1"})
        path = write_manifests(env.root / "applied.yaml", [manifest])
        done = kubectl(*kc, "apply", "-f", str(path), env=env)
        assert done.returncode == 0, done.stderr

    def spec() -> dict[str, object]:
        return json.loads(cloud.moorage("get", "pod", "applied", "-o", "json").stdout)["spec"]

    apply("busybox:1", [{"name": "A", "value": "1"}], sidecar=True)
    apply("busybox:2", [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], sidecar=True)
    app, sidecar = spec()["containers"]  # type: ignore[misc]
    assert app == {"name": "c", "image": "busybox:2", "command": ["sleep", "3600"],
                   "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    assert sidecar == {"name": "sidecar", "image": "side:1"}

    apply("busybox:2", [{"name": "B", "value": "2"}], sidecar=False)
    (app,) = spec()["containers"]  # type: ignore[misc]
    assert app["env"] == [{"name": "B", "value": "2"}]
