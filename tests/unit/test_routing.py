"""Router: which node holds which object (pods, their ConfigMaps/Secrets, devices, models)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudcore.routing import Router, pod_references


def pod(name: str, node: str | None = None, ns: str | None = "default",
        **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    body: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}], **spec}
    if node is not None:
        body["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def device(name: str, node: str | None, model: str | None,
           ns: str = "default") -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if node is not None:
        spec["nodeName"] = node
    if model is not None:
        spec["deviceModelRef"] = {"name": model}
    return {"kind": "Device", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def pkey(name: str, ns: str = "default") -> tuple[str, str, str]:
    return ("pods", ns, name)


def secret_volume(name: str) -> dict[str, Any]:
    return {"volumes": [{"name": "v", "secret": {"secretName": name}}]}


# ------------------------------------------------------------ pod_references


REFERENCE_STYLES: dict[str, Any] = {
    "configMap volume": (
        {"volumes": [{"name": "v", "configMap": {"name": "cfg"}}]}, ("configmaps", "cfg")),
    "secret volume": (
        {"volumes": [{"name": "v", "secret": {"secretName": "sec"}}]}, ("secrets", "sec")),
    "env configMapKeyRef": (
        {"containers": [{"name": "c", "env": [
            {"name": "E", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}]},
        ("configmaps", "cfg")),
    "env secretKeyRef": (
        {"containers": [{"name": "c", "env": [
            {"name": "E", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}}}]}]},
        ("secrets", "sec")),
    "envFrom configMapRef": (
        {"containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}}]}]},
        ("configmaps", "cfg")),
    "envFrom secretRef": (
        {"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "sec"}}]}]},
        ("secrets", "sec")),
    "initContainer env secretKeyRef": (
        {"initContainers": [{"name": "i", "env": [
            {"name": "E", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}}}]}]},
        ("secrets", "sec")),
    "initContainer envFrom configMapRef": (
        {"initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "cfg"}}]}]},
        ("configmaps", "cfg")),
}


@pytest.mark.parametrize("style", sorted(REFERENCE_STYLES))
def test_pod_references_finds_each_reference_style(style: str) -> None:
    spec, (kind, name) = REFERENCE_STYLES[style]
    assert pod_references(pod("p", ns="prod", **spec)) == {(kind, "prod", name)}


def test_pod_references_ignores_plain_values_and_other_volumes() -> None:
    spec = {
        "volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "hostPath": {"path": "/x"}},
                    {"name": "c", "configMap": {}}, {"name": "d", "secret": {"secretName": ""}}],
        "containers": [{"name": "c", "env": [
            {"name": "PLAIN", "value": "1"},
            {"name": "FIELD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NONAME", "valueFrom": {"secretKeyRef": {"key": "k"}}}],
            "envFrom": [{"prefix": "X_"}]}],
    }
    assert pod_references(pod("p", **spec)) == set()


def test_pod_references_collects_all_and_defaults_the_namespace() -> None:
    spec = {
        "volumes": [{"name": "v", "configMap": {"name": "vol-cm"}},
                    {"name": "w", "secret": {"secretName": "vol-sec"}}],
        "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "from-sec"}}]}],
        "initContainers": [{"name": "i", "env": [
            {"name": "E", "valueFrom": {"configMapKeyRef": {"name": "init-cm", "key": "k"}}}]}],
    }
    assert pod_references(pod("p", ns=None, **spec)) == {
        ("configmaps", "default", "vol-cm"), ("secrets", "default", "vol-sec"),
        ("secrets", "default", "from-sec"), ("configmaps", "default", "init-cm")}


# ------------------------------------------------------------ pods


def test_pod_goes_to_its_node_name_only() -> None:
    router = Router()
    assert router.update("pods", pkey("web"), pod("web", "edge-a")) == {"edge-a"}
    assert router.nodes_for(pkey("web")) == {"edge-a"}
    assert pkey("web") in router.keys_for("edge-a")
    assert pkey("web") not in router.keys_for("edge-b")


def test_unscheduled_pod_goes_nowhere() -> None:
    router = Router()
    assert router.update("pods", pkey("web"), pod("web", None)) == set()
    assert router.nodes_for(pkey("web")) == set()
    assert router.keys_for("edge-a") == {("nodes", "", "edge-a")}


def test_pod_move_reports_old_and_new_node_and_moves_references() -> None:
    router = Router()
    router.update("pods", pkey("web"), pod("web", "edge-a", **secret_volume("tls")))
    affected = router.update("pods", pkey("web"), pod("web", "edge-b", **secret_volume("tls")))
    assert affected == {"edge-a", "edge-b"}
    sec = ("secrets", "default", "tls")
    assert router.keys_for("edge-a") == {("nodes", "", "edge-a")}
    assert router.keys_for("edge-b") == {("nodes", "", "edge-b"), pkey("web"), sec}
    assert router.nodes_for(sec) == {"edge-b"}


def test_pod_delete_reports_old_node_and_drops_its_references() -> None:
    router = Router()
    router.update("pods", pkey("web"), pod("web", "edge-a", **secret_volume("tls")))
    assert router.update("pods", pkey("web"), None) == {"edge-a"}
    assert router.keys_for("edge-a") == {("nodes", "", "edge-a")}
    assert router.nodes_for(("secrets", "default", "tls")) == set()
    assert router.nodes_for(pkey("web")) == set()


def test_pod_unscheduled_again_reports_the_old_node() -> None:
    router = Router()
    router.update("pods", pkey("web"), pod("web", "edge-a"))
    assert router.update("pods", pkey("web"), pod("web", None)) == {"edge-a"}
    assert pkey("web") not in router.keys_for("edge-a")


def test_deleting_an_unknown_pod_affects_nothing() -> None:
    assert Router().update("pods", pkey("ghost"), None) == set()


def test_pod_reference_change_on_same_node_updates_keys() -> None:
    router = Router()
    router.update("pods", pkey("web"), pod("web", "edge-a", **secret_volume("old")))
    assert router.update("pods", pkey("web"),
                         pod("web", "edge-a", **secret_volume("new"))) == {"edge-a"}
    keys = router.keys_for("edge-a")
    assert ("secrets", "default", "new") in keys
    assert ("secrets", "default", "old") not in keys


# ------------------------------------------------------------ configmaps / secrets


def test_secret_goes_only_to_nodes_whose_pods_reference_it() -> None:
    router = Router()
    router.update("pods", pkey("a-pod"), pod("a-pod", "edge-a", **secret_volume("db-pass")))
    router.update("pods", pkey("b-pod"), pod("b-pod", "edge-b"))
    sec = ("secrets", "default", "db-pass")
    assert sec in router.keys_for("edge-a")
    assert sec not in router.keys_for("edge-b")
    assert router.nodes_for(sec) == {"edge-a"}
    assert router.update("secrets", sec, {"metadata": {"name": "db-pass"}}) == {"edge-a"}


def test_secret_in_another_namespace_is_a_different_object() -> None:
    router = Router()
    router.update("pods", pkey("p", "prod"), pod("p", "edge-a", ns="prod", **secret_volume("s")))
    assert router.nodes_for(("secrets", "prod", "s")) == {"edge-a"}
    assert router.nodes_for(("secrets", "default", "s")) == set()


def test_configmap_shared_by_pods_on_two_nodes_goes_to_both() -> None:
    router = Router()
    env_from = {"containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}}]}]}
    router.update("pods", pkey("p1"), pod("p1", "edge-a", **env_from))
    router.update("pods", pkey("p2"), pod("p2", "edge-b", **env_from))
    cm = ("configmaps", "default", "cfg")
    assert router.nodes_for(cm) == {"edge-a", "edge-b"}
    router.update("pods", pkey("p1"), None)
    assert router.nodes_for(cm) == {"edge-b"}
    assert cm not in router.keys_for("edge-a")


def test_unreferenced_configmap_goes_nowhere() -> None:
    router = Router()
    router.update("pods", pkey("p"), pod("p", "edge-a"))
    assert router.nodes_for(("configmaps", "default", "lonely")) == set()


# ------------------------------------------------------------ devices, models, nodes


def test_device_goes_to_its_node_and_model_follows_devices_in_namespace() -> None:
    router = Router()
    dev = ("devices", "default", "thermo")
    assert router.update("devices", dev, device("thermo", "edge-a", "sensor")) == {"edge-a"}
    model = ("devicemodels", "default", "sensor")
    assert router.nodes_for(dev) == {"edge-a"}
    assert router.nodes_for(model) == {"edge-a"}
    assert {dev, model} <= router.keys_for("edge-a")
    assert model not in router.keys_for("edge-b")
    # Same model name in another namespace is another model.
    router.update("devices", ("devices", "lab", "t2"), device("t2", "edge-b", "sensor", "lab"))
    assert router.nodes_for(model) == {"edge-a"}
    assert router.nodes_for(("devicemodels", "lab", "sensor")) == {"edge-b"}
    assert model not in router.keys_for("edge-b")


def test_device_move_and_delete_report_old_node() -> None:
    router = Router()
    dev = ("devices", "default", "thermo")
    router.update("devices", dev, device("thermo", "edge-a", "sensor"))
    assert router.update("devices", dev, device("thermo", "edge-b", "sensor")) == {
        "edge-a", "edge-b"}
    assert router.nodes_for(("devicemodels", "default", "sensor")) == {"edge-b"}
    assert router.update("devices", dev, None) == {"edge-b"}
    assert router.nodes_for(("devicemodels", "default", "sensor")) == set()
    assert router.keys_for("edge-b") == {("nodes", "", "edge-b")}


def test_device_model_change_moves_model_routing() -> None:
    router = Router()
    dev = ("devices", "default", "d")
    router.update("devices", dev, device("d", "edge-a", "m1"))
    router.update("devices", dev, device("d", "edge-a", "m2"))
    assert router.nodes_for(("devicemodels", "default", "m1")) == set()
    assert router.nodes_for(("devicemodels", "default", "m2")) == {"edge-a"}


def test_device_without_node_goes_nowhere() -> None:
    router = Router()
    dev = ("devices", "default", "d")
    assert router.update("devices", dev, device("d", None, "m")) == set()
    assert router.nodes_for(("devicemodels", "default", "m")) == set()


def test_node_object_goes_to_itself() -> None:
    router = Router()
    assert router.nodes_for(("nodes", "", "edge-a")) == {"edge-a"}
    assert router.update("nodes", ("nodes", "", "edge-a"), {"metadata": {}}) == {"edge-a"}
    assert router.keys_for("edge-a") == {("nodes", "", "edge-a")}
    assert ("nodes", "", "edge-a") not in router.keys_for("edge-b")


def test_unknown_kind_goes_nowhere() -> None:
    assert Router().nodes_for(("widgets", "default", "w")) == set()


# ------------------------------------------------------------ property

NODES = ["n0", "n1", "n2"]
NAMESPACES = ["default", "prod"]
REF_NAMES = ["r0", "r1"]
STYLES = ["volume", "env", "envFrom", "initEnv", "initEnvFrom"]

refs_strategy = st.lists(
    st.tuples(st.sampled_from(["configmaps", "secrets"]), st.sampled_from(REF_NAMES),
              st.sampled_from(STYLES)), max_size=3)


def build_spec(refs: list[tuple[str, str, str]]) -> dict[str, Any]:
    volumes, env, env_from, init_env, init_env_from = [], [], [], [], []
    for i, (kind, name, style) in enumerate(refs):
        cm = kind == "configmaps"
        if style == "volume":
            volumes.append({"name": f"v{i}", **({"configMap": {"name": name}} if cm
                                                 else {"secret": {"secretName": name}})})
        elif style in ("env", "initEnv"):
            field = "configMapKeyRef" if cm else "secretKeyRef"
            item = {"name": f"E{i}", "valueFrom": {field: {"name": name, "key": "k"}}}
            (env if style == "env" else init_env).append(item)
        else:
            field = "configMapRef" if cm else "secretRef"
            (env_from if style == "envFrom" else init_env_from).append({field: {"name": name}})
    return {"volumes": volumes,
            "containers": [{"name": "c", "image": "x", "env": env, "envFrom": env_from}],
            "initContainers": [{"name": "i", "image": "x", "env": init_env,
                                "envFrom": init_env_from}]}


pod_ops = st.lists(
    st.tuples(st.sampled_from(["p0", "p1", "p2", "p3"]), st.sampled_from(NAMESPACES),
              st.none() | st.sampled_from(NODES),  # None: delete (or unscheduled, below)
              st.booleans(), refs_strategy),
    max_size=30)


@settings(max_examples=150, deadline=None)
@given(pod_ops)
def test_keys_for_matches_brute_force_after_random_pod_changes(ops: list[Any]) -> None:
    router = Router()
    final: dict[tuple[str, str, str], tuple[str, set[tuple[str, str, str]]]] = {}
    for name, ns, node, unscheduled_not_deleted, refs in ops:
        key = ("pods", ns, name)
        old = final.get(key)
        if node is None and not unscheduled_not_deleted:
            affected = router.update("pods", key, None)
            final.pop(key, None)
        else:
            affected = router.update("pods", key, {"metadata": {"name": name, "namespace": ns},
                                                    "spec": {**build_spec(refs),
                                                             **({"nodeName": node} if node
                                                                else {})}})
            if node is None:
                final.pop(key, None)
            else:
                final[key] = (node, {(kind, ns, ref) for kind, ref, _ in refs})
        expected_affected = {n for n in (old[0] if old else None, node) if n}
        assert affected == expected_affected

    for node in [*NODES, "elsewhere"]:
        expected = {("nodes", "", node)}
        for key, (where, refs) in final.items():
            if where == node:
                expected |= {key, *refs}
        assert router.keys_for(node) == expected
    for kind in ("configmaps", "secrets"):
        for ns in NAMESPACES:
            for ref in REF_NAMES:
                ref_key = (kind, ns, ref)
                assert router.nodes_for(ref_key) == {
                    where for where, refs in final.values() if ref_key in refs}
    for key in {("pods", ns, f"p{i}") for ns in NAMESPACES for i in range(4)}:
        assert router.nodes_for(key) == ({final[key][0]} if key in final else set())
