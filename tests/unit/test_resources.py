"""Resource kinds: lookup by any kubectl name, and schema validation with field paths."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from moorage.errors import ManifestError
from moorage.resources import KINDS, ValidationError, lookup, validate


@pytest.mark.parametrize(("name", "kind"), [
    ("pods", "Pod"), ("pod", "Pod"), ("Pod", "Pod"), ("po", "Pod"), ("PODS", "Pod"),
    ("nodes", "Node"), ("no", "Node"),
    ("configmaps", "ConfigMap"), ("ConfigMap", "ConfigMap"), ("cm", "ConfigMap"),
    ("secret", "Secret"),
    ("devices", "Device"), ("dev", "Device"), ("devices.devices.kubeedge.io", "Device"),
    ("DeviceModel", "DeviceModel"), ("dm", "DeviceModel"),
])
def test_lookup_by_any_name(name: str, kind: str) -> None:
    assert lookup(name).kind == kind


def test_lookup_unknown_resource_type() -> None:
    with pytest.raises(ManifestError,
                       match='doesn\'t have a resource type "widgets"; known: nodes, pods'):
        lookup("widgets")


def test_every_kind_is_found_by_its_own_names() -> None:
    for kind in KINDS:
        for name in (kind.plural, kind.singular, kind.kind, *kind.short_names):
            assert lookup(name) is kind


# ------------------------------------------------------------ helpers


def make_pod(**spec: Any) -> dict[str, Any]:
    body = {"containers": [{"name": "app", "image": "nginx:1.27"}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": body}


def causes(obj: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        validate(obj)
    return info.value.causes


def fields(obj: Any) -> dict[str, str]:
    return dict(causes(obj))


# ------------------------------------------------------------ normalisation


def test_valid_pod_gets_the_default_namespace_without_mutating_input() -> None:
    pod = make_pod()
    before = copy.deepcopy(pod)
    kind, normalised = validate(pod)
    assert kind.kind == "Pod"
    assert normalised["metadata"]["namespace"] == "default"
    assert pod == before


def test_namespace_defaults_to_the_given_one_but_an_explicit_one_wins() -> None:
    _, obj = validate(make_pod(), default_namespace="team-a")
    assert obj["metadata"]["namespace"] == "team-a"
    pod = make_pod()
    pod["metadata"]["namespace"] = "prod"
    _, obj = validate(pod, default_namespace="team-a")
    assert obj["metadata"]["namespace"] == "prod"


def test_cluster_scoped_node_loses_its_namespace() -> None:
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "edge-1", "namespace": "default"}}
    kind, obj = validate(node)
    assert kind.kind == "Node"
    assert "namespace" not in obj["metadata"]
    assert node["metadata"]["namespace"] == "default"


def test_invalid_namespace_is_reported() -> None:
    pod = make_pod()
    pod["metadata"]["namespace"] = "Bad_NS"
    assert fields(pod)["metadata.namespace"].startswith('invalid value "Bad_NS"')


# ------------------------------------------------------------ identification


def test_missing_api_version_and_kind() -> None:
    with pytest.raises(ManifestError, match="the manifest has no apiVersion"):
        validate({"kind": "Pod", "metadata": {"name": "x"}})
    with pytest.raises(ManifestError, match="the manifest has no kind"):
        validate({"apiVersion": "v1", "metadata": {"name": "x"}})


def test_not_a_mapping() -> None:
    with pytest.raises(ManifestError, match="must be a mapping"):
        validate(["not", "a", "mapping"])


@pytest.mark.parametrize(("api_version", "kind"), [
    ("v1", "Deployment"), ("apps/v1", "Pod"), ("v1", "Device"),
])
def test_unknown_kind_or_version_lists_the_known_kinds(api_version: str, kind: str) -> None:
    with pytest.raises(ManifestError) as info:
        validate({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}})
    message = str(info.value)
    assert f'no kind "{kind}" is registered for version "{api_version}"' in message
    for known in ("v1 Node", "v1 Pod", "v1 ConfigMap", "v1 Secret",
                  "devices.kubeedge.io/v1beta1 Device", "devices.kubeedge.io/v1beta1 DeviceModel"):
        assert known in message


def test_missing_metadata() -> None:
    with pytest.raises(ValidationError) as info:
        validate({"apiVersion": "v1", "kind": "Pod"})
    assert info.value.causes == [("metadata", "required")]


# ------------------------------------------------------------ pods


def test_missing_image_is_reported_with_its_path() -> None:
    pod = make_pod(containers=[{"name": "app"}])
    with pytest.raises(ValidationError) as info:
        validate(pod)
    assert info.value.causes == [("spec.containers[0].image", "required")]
    assert str(info.value) == 'Pod "web" is invalid: spec.containers[0].image: required'
    assert (info.value.kind, info.value.name) == ("Pod", "web")


@pytest.mark.parametrize("name", ["Web", "web_1", "-web", "web-", "a" * 254, ""])
def test_invalid_metadata_name(name: str) -> None:
    pod = make_pod()
    pod["metadata"]["name"] = name
    message = fields(pod)["metadata.name"]
    if name:
        assert message.startswith(f'invalid value "{name}"')
    else:
        assert message == "required"


def test_every_problem_is_listed() -> None:
    pod = make_pod(containers=[{"name": "a"}, {"name": "a", "image": "x"}],
                   restartPolicy="Sometimes")
    pod["metadata"]["name"] = "Bad"
    found = causes(pod)
    assert [path for path, _ in found] == [
        "metadata.name", "spec.containers[0].image", "spec.containers[1].name",
        "spec.restartPolicy"]


def test_duplicate_container_names() -> None:
    pod = make_pod(containers=[{"name": "app", "image": "a"}, {"name": "app", "image": "b"}])
    assert causes(pod) == [("spec.containers[1].name", 'duplicate container name "app"')]


def test_containers_required() -> None:
    assert fields(make_pod(containers=[])) == {"spec.containers": "required"}
    assert "spec" in fields({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})


def test_volume_mount_must_name_a_defined_volume() -> None:
    pod = make_pod(
        volumes=[{"name": "data", "emptyDir": {}}],
        containers=[{"name": "app", "image": "x", "volumeMounts": [
            {"name": "data", "mountPath": "/data"}, {"name": "config", "mountPath": "/etc/x"}]}])
    assert causes(pod) == [("spec.containers[0].volumeMounts[1].name",
                            'volume "config" is not defined in spec.volumes')]


def test_volume_mount_needs_a_mount_path() -> None:
    pod = make_pod(volumes=[{"name": "data", "emptyDir": {}}],
                   containers=[{"name": "app", "image": "x",
                                "volumeMounts": [{"name": "data"}]}])
    assert causes(pod) == [("spec.containers[0].volumeMounts[0].mountPath", "required")]


@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_valid_restart_policies(policy: str) -> None:
    validate(make_pod(restartPolicy=policy))


def test_invalid_restart_policy() -> None:
    assert causes(make_pod(restartPolicy="always")) == [
        ("spec.restartPolicy", 'unsupported value "always": use Always, OnFailure or Never')]


def test_host_path_must_be_absolute() -> None:
    pod = make_pod(volumes=[{"name": "logs", "hostPath": {"path": "var/log"}}])
    assert causes(pod) == [("spec.volumes[0].hostPath.path", "must be an absolute path")]
    validate(make_pod(volumes=[{"name": "logs", "hostPath": {"path": "/var/log"}}]))


def test_volume_needs_exactly_one_source_and_a_unique_name() -> None:
    pod = make_pod(volumes=[{"name": "v"}, {"name": "v", "emptyDir": {}},
                            {"name": "w", "emptyDir": {}, "secret": {"secretName": "s"}},
                            {"name": "c", "configMap": {}}])
    found = fields(pod)
    assert found["spec.volumes[0]"].startswith("exactly one of")
    assert found["spec.volumes[1].name"] == 'duplicate volume "v"'
    assert found["spec.volumes[2]"].startswith("exactly one of")
    assert found["spec.volumes[3].configMap.name"] == "required"


def test_env_value_must_be_a_string() -> None:
    pod = make_pod(containers=[{"name": "app", "image": "x",
                                "env": [{"name": "N", "value": 3}, {"value": "x"}]}])
    assert causes(pod) == [("spec.containers[0].env[0].value", "expected a string, got int"),
                           ("spec.containers[0].env[1].name", "required")]


def test_invalid_node_name_in_pod() -> None:
    assert "spec.nodeName" in fields(make_pod(nodeName="Edge_1"))


def test_invalid_label_value() -> None:
    pod = make_pod()
    pod["metadata"]["labels"] = {"app": "has space", "ok": "fine"}
    assert causes(pod) == [("metadata.labels.app", 'invalid label value "has space"')]


# ------------------------------------------------------------ configmaps and secrets


def configmap(**body: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, **body}


def secret(**body: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"}, **body}


def test_configmap_data_must_be_strings() -> None:
    assert causes(configmap(data={"port": 8080, "host": "x"})) == [
        ("data.port", "expected a string value")]
    validate(configmap(data={"port": "8080", "app.conf": "x=1"}))


def test_configmap_keys_are_checked() -> None:
    assert causes(configmap(data={"bad key": "x"})) == [("data.bad key", "invalid key")]


def test_configmap_binary_data_must_be_base64() -> None:
    assert causes(configmap(binaryData={"blob": "not base64!"})) == [
        ("binaryData.blob", "invalid base64")]


@pytest.mark.parametrize("value", ["not base64!", "abc", "aGVsbG8"])
def test_secret_data_must_be_base64(value: str) -> None:
    assert causes(secret(data={"password": value})) == [("data.password", "invalid base64")]


def test_valid_secret() -> None:
    kind, obj = validate(secret(data={"password": "aGVsbG8="}, stringData={"user": "admin"},
                                type="Opaque"))
    assert kind.kind == "Secret"
    assert obj["metadata"]["namespace"] == "default"


def test_secret_type_must_be_a_string() -> None:
    assert causes(secret(type=3)) == [("type", "expected a string, got int")]


def test_configmap_payload_size_is_limited() -> None:
    assert fields(configmap(data={"big": "x" * (1024 * 1024)}))["data"].startswith("total size")


# ------------------------------------------------------------ devices


def device(spec: Any) -> dict[str, Any]:
    return {"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "thermo"}, "spec": spec}


def model(properties: list[Any]) -> dict[str, Any]:
    return {"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
            "metadata": {"name": "sensor"}, "spec": {"properties": properties}}


@pytest.mark.parametrize("spec", [{}, {"deviceModelRef": {}}, {"deviceModelRef": {"name": ""}}])
def test_device_needs_a_model_ref_name(spec: dict[str, Any]) -> None:
    assert causes(device(spec)) == [("spec.deviceModelRef.name", "required")]


def test_valid_device() -> None:
    kind, obj = validate(device({"deviceModelRef": {"name": "sensor"}, "nodeName": "edge-1",
                                 "protocol": {"protocolName": "modbus"},
                                 "properties": [{"name": "temp", "collectCycle": 1000}]}))
    assert kind.kind == "Device"
    assert obj["metadata"]["namespace"] == "default"


def test_device_property_checks() -> None:
    found = fields(device({"deviceModelRef": {"name": "m"},
                           "properties": [{"name": "t", "collectCycle": 0},
                                          {"name": "t", "reportCycle": -5}]}))
    assert found["spec.properties[0].collectCycle"] == "must be a positive number of milliseconds"
    assert found["spec.properties[1].name"] == 'duplicate property "t"'
    assert found["spec.properties[1].reportCycle"] == "must be a positive number of milliseconds"


def test_device_model_property_type_and_access_mode() -> None:
    validate(model([{"name": "temp", "type": "FLOAT", "accessMode": "ReadOnly"}]))
    assert causes(model([{"name": "temp", "type": "float", "accessMode": "WriteOnly"}])) == [
        ("spec.properties[0].type",
         'unsupported value "float": use one of INT, FLOAT, DOUBLE, STRING, BOOLEAN, BYTES'),
        ("spec.properties[0].accessMode",
         'unsupported value "WriteOnly": use ReadWrite or ReadOnly'),
    ]


def test_device_model_property_needs_a_name() -> None:
    assert causes(model([{"type": "INT"}])) == [("spec.properties[0].name", "required")]


def test_validation_error_is_a_manifest_error_with_causes() -> None:
    with pytest.raises(ManifestError) as info:
        validate(model([{"type": "INT"}, {"name": "x", "type": "NOPE"}]))
    assert isinstance(info.value, ValidationError)
    assert info.value.causes == [
        ("spec.properties[0].name", "required"),
        ("spec.properties[1].type",
         'unsupported value "NOPE": use one of INT, FLOAT, DOUBLE, STRING, BOOLEAN, BYTES')]
    assert str(info.value).startswith('DeviceModel "sensor" is invalid: '
                                      "spec.properties[0].name: required; spec.properties[1].type")
