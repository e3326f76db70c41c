"""Bad manifests get clear errors, through the CLI and straight at the API, and change nothing."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from moorage import kubeconfig
from tests.support import Cloud, Env, make_cloud

GOOD = """apiVersion: v1
kind: ConfigMap
metadata: {name: fine}
data: {a: "1"}
"""

CASES = {
    "missing field": ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n"
                      "  containers:\n  - name: c\n", "spec.containers[0].image: required"),
    "wrong type": ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n"
                   "  containers: lots\n", "spec.containers: expected a list, got str"),
    "unknown kind": ("apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n",
                     'no kind "Widget" is registered for version "v1"'),
    "bad name": ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Not_OK}\n",
                 'metadata.name: invalid value "Not_OK"'),
    "not yaml": ("apiVersion: v1\nkind: [unclosed\n", "invalid YAML at line"),
    "misspelled field": ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n"
                         "  containers:\n  - {name: c, image: x, imagePullPolciy: Always}\n",
                         "spec.containers[0].imagePullPolciy: unknown field; did you mean "
                         "imagePullPolicy?"),
    "alias bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a]\n"
                   "c: &c [*b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c]\n",
                   "YAML aliases (*a) are not accepted"),
}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    env = Env(tmp_path_factory.mktemp("manifests"))
    try:
        yield make_cloud(env).start()
    finally:
        env.close()


def _version(cloud: Cloud) -> str:
    listing = json.loads(cloud.moorage("get", "configmaps", "-A", "-o", "json").stdout)
    return str(listing["metadata"]["resourceVersion"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_refuses_with_the_reason_and_applies_nothing(cloud: Cloud, case: str) -> None:
    text, reason = CASES[case]
    path = cloud.env.root / f"{case.replace(' ', '-')}.yaml"
    path.write_text(GOOD + "---\n" + text)  # a good document first: it must not land either
    before = _version(cloud)
    result = cloud.moorage("apply", "-f", str(path), check=False)
    assert result.returncode == 1
    assert reason in result.stderr, result.stderr
    assert "nothing was applied" in result.stderr or "invalid YAML" in result.stderr \
        or "aliases" in result.stderr
    assert _version(cloud) == before
    assert cloud.moorage("get", "configmap", "fine", check=False).returncode == 1


def test_ten_megabyte_document_is_refused(cloud: Cloud) -> None:
    path = cloud.env.root / "huge.yaml"
    path.write_text(GOOD.replace('{a: "1"}', "{a: '" + "x" * (10 * 1024 * 1024) + "'}"))
    before = _version(cloud)
    result = cloud.moorage("apply", "-f", str(path), check=False)
    assert result.returncode == 1
    assert "more than the 8388608-byte limit" in result.stderr
    assert _version(cloud) == before


def _post(cloud: Cloud, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    access = kubeconfig.load(cloud.kubeconfig)
    conn = http.client.HTTPSConnection(access.host, access.port, context=access.ssl_context,
                                       timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    except (ConnectionError, http.client.HTTPException):
        return 413, {"message": "connection closed by the server"}
    finally:
        conn.close()


def test_api_refuses_bad_bodies_with_kubernetes_status(cloud: Cloud) -> None:
    before = _version(cloud)
    pods = "/api/v1/namespaces/default/pods"
    status, body = _post(cloud, pods, b"{not json")
    assert (status, body["reason"]) == (400, "BadRequest")

    invalid = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"containers": [{"name": "c"}]}}
    status, body = _post(cloud, pods, json.dumps(invalid).encode())
    assert (status, body["reason"], body["kind"]) == (422, "Invalid", "Status")
    causes = body["details"]["causes"]  # type: ignore[index]
    assert {"reason": "FieldValueInvalid", "message": "required",
            "field": "spec.containers[0].image"} in causes

    wrong_kind = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    status, body = _post(cloud, pods, json.dumps(wrong_kind).encode())
    assert status == 400 and "the path is for pods" in str(body["message"])

    status, body = _post(cloud, pods, b'{"a": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    assert status == 413
    assert _version(cloud) == before


def test_cli_warns_about_fields_moorage_ignores_and_can_be_told_to_warn_only(
        cloud: Cloud) -> None:
    path = cloud.env.root / "probe.yaml"
    path.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: probed}\nspec:\n"
                    "  nodeName: nowhere\n  containers:\n  - name: c\n    image: x\n"
                    "    livenessProbe: {exec: {command: [true]}}\n")
    applied = cloud.moorage("apply", "-f", str(path))
    assert "pod/probed created" in applied.stdout
    assert f"Warning: {path}#0: spec.containers[0].livenessProbe: not supported by Moorage, " \
           "ignored" in applied.stderr

    typo = cloud.env.root / "typo.yaml"
    typo.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndat: {a: b}\n")
    assert cloud.moorage("apply", "-f", str(typo), check=False).returncode == 1
    warned = cloud.moorage("apply", "-f", str(typo), "--validate=warn")
    assert "configmap/typo created" in warned.stdout
    assert "dat: unknown field; did you mean data?" in warned.stderr
    cloud.moorage("delete", "-f", str(typo))  # a delete does not care about fields
    cloud.moorage("delete", "-f", str(path))


def test_api_field_validation_strict_refuses_and_warn_answers_with_warnings(
        cloud: Cloud) -> None:
    access = kubeconfig.load(cloud.kubeconfig)
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "checked", "namespace": "default"},
                       "data": {"a": "b"}, "immutable": True, "dta": {}}).encode()

    def post(mode: str) -> tuple[int, list[str], dict[str, object]]:
        conn = http.client.HTTPSConnection(access.host, access.port,
                                           context=access.ssl_context, timeout=30)
        try:
            conn.request("POST", f"/api/v1/namespaces/default/configmaps?fieldValidation={mode}",
                         body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return (response.status, response.headers.get_all("Warning") or [],
                    json.loads(response.read()))
        finally:
            conn.close()

    status, warnings, answer = post("Strict")
    assert (status, answer["reason"]) == (422, "Invalid")
    assert {"reason": "FieldValueInvalid", "field": "dta",
            "message": "unknown field; did you mean data?"} in answer["details"]["causes"]
    status, _, answer = post("Bogus")
    assert status == 400 and "fieldValidation" in str(answer["message"])
    status, warnings, _ = post("Warn")
    assert status == 201
    assert warnings == ['299 - "dta: unknown field; did you mean data?"',
                        '299 - "immutable: not supported by Moorage, ignored"']
    # The unknown field was dropped, not stored, so it cannot trip a later strict update;
    # the Kubernetes field Moorage ignores is kept.
    stored = json.loads(cloud.moorage("get", "configmap", "checked", "-o", "json").stdout)
    assert "dta" not in stored and stored["immutable"] is True
    cloud.moorage("delete", "configmap", "checked")

    # A field name is the client's text: in a header it is reduced to printable ASCII.
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "checked", "namespace": "default"},
                       'x"\n\\y': 1}).encode()
    status, warnings, _ = post("Warn")
    assert status == 201 and warnings == ['299 - "x???y: unknown field"']
    cloud.moorage("delete", "configmap", "checked")
