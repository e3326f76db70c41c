"""Strategic merge patches, as kubectl apply sends them for built-in kinds."""

from __future__ import annotations

from typing import Any

import pytest

from moorage.patch import PatchError, strategic_merge_patch


def live() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
            "spec": {"nodeName": "edge-1",
                     "containers": [
                         {"name": "app", "image": "app:1", "command": ["run"],
                          "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                          "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"}]},
                         {"name": "sidecar", "image": "side:1"}],
                     "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}}


def test_list_elements_merge_by_their_key() -> None:
    patched = strategic_merge_patch("Pod", live(), {"spec": {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
        "containers": [{"name": "app", "image": "app:2",
                        "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}]}})
    app, sidecar = patched["spec"]["containers"]
    assert app["image"] == "app:2" and app["command"] == ["run"]
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"},
                          {"name": "C", "value": "4"}]
    assert app["volumeMounts"] == [{"name": "cfg", "mountPath": "/etc/app"}]
    assert sidecar == {"name": "sidecar", "image": "side:1"}


def test_delete_directives_and_null_remove() -> None:
    patched = strategic_merge_patch("Pod", live(), {
        "metadata": {"labels": {"tier": None}},
        "spec": {"containers": [{"name": "sidecar", "$patch": "delete"},
                                {"name": "app", "$deleteFromPrimitiveList/command": ["run"],
                                 "env": [{"name": "A", "$patch": "delete"}]}]}})
    assert patched["metadata"]["labels"] == {"app": "web"}
    assert [c["name"] for c in patched["spec"]["containers"]] == ["app"]
    app = patched["spec"]["containers"][0]
    assert app["command"] == [] and app["env"] == [{"name": "B", "value": "2"}]


def test_set_element_order_reorders_and_keeps_unnamed_items_last() -> None:
    patched = strategic_merge_patch("Pod", live(), {"spec": {
        "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "new"}],
        "containers": [{"name": "new", "image": "new:1"}]}})
    assert [c["name"] for c in patched["spec"]["containers"]] == ["sidecar", "new", "app"]


def test_replace_directives_and_retain_keys() -> None:
    patched = strategic_merge_patch("Pod", live(), {"spec": {
        "volumes": [{"name": "cfg", "$retainKeys": ["name", "emptyDir"], "emptyDir": {}}],
        "containers": [{"$patch": "replace"}, {"name": "only", "image": "only:1"}]}})
    assert patched["spec"]["volumes"] == [{"name": "cfg", "emptyDir": {}}]
    assert patched["spec"]["containers"] == [{"name": "only", "image": "only:1"}]
    replaced = strategic_merge_patch("Pod", live(), {"metadata": {
        "labels": {"$patch": "replace", "new": "1"}}})
    assert replaced["metadata"]["labels"] == {"new": "1"}


def test_lists_without_a_merge_key_are_replaced() -> None:
    patched = strategic_merge_patch("Pod", live(), {"spec": {"containers": [
        {"name": "app", "command": ["serve", "--fast"]}]}})
    assert patched["spec"]["containers"][0]["command"] == ["serve", "--fast"]
    cm = strategic_merge_patch("ConfigMap", {"data": {"a": "1"}, "binaryData": {"b": "AA=="}},
                               {"data": {"a": None, "c": "3"}})
    assert cm == {"data": {"c": "3"}, "binaryData": {"b": "AA=="}}


@pytest.mark.parametrize("patch, complaint", [
    ([1, 2], "must be a JSON object"),
    ({"spec": {"containers": [{"image": "x"}]}}, r"spec.containers\[0\]: .* merge key 'name'"),
    ({"spec": {"$patch": "explode"}}, "spec: \\$patch 'explode'"),
    ({"spec": {"$retainKeys": "name"}}, r"spec.\$retainKeys: expected a list"),
])
def test_malformed_patches_are_refused_naming_the_place(patch: Any, complaint: str) -> None:
    with pytest.raises(PatchError, match=complaint):
        strategic_merge_patch("Pod", live(), patch)


def test_the_live_object_is_not_modified() -> None:
    original = live()
    strategic_merge_patch("Pod", original, {"spec": {"containers": [
        {"name": "app", "image": "app:9"}]}, "metadata": {"labels": {"app": None}}})
    assert original == live()
