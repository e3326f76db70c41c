"""Unknown fields are typos (with the field they resemble); Kubernetes fields Moorage does
not act on are reported as ignored; data maps are never walked."""

from __future__ import annotations

from typing import Any

from moorage.fields import check_fields


def pod(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec}}


def test_a_clean_manifest_has_nothing_to_report() -> None:
    report = check_fields("Pod", pod(restartPolicy="Never", volumes=[
        {"name": "cfg", "configMap": {"name": "cfg"}}]))
    assert report.unknown == [] and report.ignored == []


def test_typos_name_the_field_they_resemble_at_any_depth() -> None:
    manifest = pod(nodeNmae="edge-1", volumes=[{"name": "v", "hostPath": {"paht": "/x"}}])
    manifest["metadata"]["lables"] = {"a": "b"}
    manifest["spec"]["containers"][0]["Image"] = "busybox"
    manifest["spec"]["containers"][0]["env"] = [{"name": "A", "vaule": "1"}]
    assert check_fields("Pod", manifest).unknown == [
        ("metadata.lables", "unknown field; did you mean labels?"),
        ("spec.containers[0].Image", "unknown field; did you mean image?"),
        ("spec.containers[0].env[0].vaule", "unknown field; did you mean value?"),
        ("spec.nodeNmae", "unknown field; did you mean nodeName?"),
        ("spec.volumes[0].hostPath.paht", "unknown field; did you mean path?"),
    ]


def test_a_field_like_nothing_known_is_unknown_without_a_guess() -> None:
    assert check_fields("ConfigMap", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "c"}, "zzz": 1}).unknown == [
        ("zzz", "unknown field")]


def test_kubernetes_fields_moorage_does_not_act_on_are_ignored_not_unknown() -> None:
    manifest = pod(tolerations=[], initContainers=[{"name": "i", "image": "x"}])
    manifest["spec"]["containers"][0].update(livenessProbe={"exec": {}}, ports=[])
    report = check_fields("Pod", manifest)
    assert report.unknown == []
    assert report.ignored == ["spec.containers[0].livenessProbe", "spec.containers[0].ports",
                              "spec.tolerations", "spec.initContainers"]


def test_data_maps_and_config_data_are_not_walked() -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "c", "labels": {"lables": "x"}, "annotations": {"imagee": "y"}},
        "data": {"nodeNmae": "anything"}}
    assert check_fields("ConfigMap", config).unknown == []
    device = {"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
              "metadata": {"name": "d"},
              "spec": {"deviceModelRef": {"name": "m"}, "protocol": {
                  "protocolName": "modbus", "configData": {"whatever": 1}},
                  "properties": [{"name": "t", "desired": {"value": "1"}, "reportToCloud": True,
                                  "visitors": {"protocolName": "modbus",
                                               "configData": {"anything": 2}},
                                  "colectCycle": 1000}]},
              "status": {"twins": [{"any": "thing"}]}}
    report = check_fields("Device", device)
    assert report.unknown == [("spec.properties[0].colectCycle",
                               "unknown field; did you mean collectCycle?")]
    assert report.ignored == ["spec.properties[0].reportToCloud"]


def test_node_spec_and_status_are_free_form_and_odd_values_do_not_crash() -> None:
    assert check_fields("Node", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
                                 "spec": {"taints": []}, "status": {"x": 1}}).unknown == []
    assert check_fields("Pod", {"kind": "Pod", "spec": {"containers": ["x", 3, None]},
                                "metadata": None}).unknown == []
    assert check_fields("Nothing", {"a": 1}).unknown == []


def test_pruning_drops_unknown_fields_and_keeps_the_rest() -> None:
    manifest = pod(tolerations=[], nodeNmae="x")
    manifest["spec"]["containers"][0]["imagee"] = "y"
    report = check_fields("Pod", manifest, prune=True)
    assert sorted(path for path, _ in report.unknown) == ["spec.containers[0].imagee",
                                                          "spec.nodeNmae"]
    assert "nodeNmae" not in manifest["spec"] and "tolerations" in manifest["spec"]
    assert manifest["spec"]["containers"][0] == {"name": "c", "image": "busybox"}
    assert check_fields("Pod", manifest).unknown == []
