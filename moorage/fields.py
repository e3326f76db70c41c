"""Which fields of a manifest Moorage knows: unknown ones are typos, ignored ones do nothing.

Kubernetes refuses a field its schema does not have (kubectl's default
``--validate=strict``) and only warns through the API by default. Moorage serves
a subset of Kubernetes, so there are three cases for each field of a manifest:

- *used*: Moorage acts on it;
- *ignored*: a real Kubernetes (or KubeEdge) field that Moorage does not act on,
  such as ``livenessProbe``. Accepted, with a warning that says so;
- *unknown*: in neither list, most often a typo (``imagee``). With the field it
  most resembles, when there is one.

Pure: :func:`check_fields` walks a decoded manifest and returns what it found.
Maps whose keys are data (labels, ConfigMap data, Modbus configData) are not
walked.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Fields:
    used: tuple[str, ...]
    ignored: tuple[str, ...] = ()
    # The schema of a used field holding an object, or a list of objects.
    nested: dict[str, Fields] = field(default_factory=dict)


@dataclass
class FieldReport:
    unknown: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    ignored: list[str] = field(default_factory=list)  # paths

    def warnings(self) -> list[str]:
        """One line per field, as kubectl and moorage print them after ``Warning:``."""
        return [f"{path}: {message}" for path, message in self.unknown] + \
            [f"{path}: not supported by Moorage, ignored" for path in self.ignored]


META = Fields(
    used=("name", "namespace", "labels", "annotations", "uid", "resourceVersion",
          "creationTimestamp"),
    ignored=("generateName", "generation", "finalizers", "ownerReferences", "managedFields",
             "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"))

_KEY_REF = Fields(used=("name", "key"), ignored=("optional",))
ENV = Fields(used=("name", "value", "valueFrom"), nested={"valueFrom": Fields(
    used=("configMapKeyRef", "secretKeyRef"), ignored=("fieldRef", "resourceFieldRef"),
    nested={"configMapKeyRef": _KEY_REF, "secretKeyRef": _KEY_REF})})
_REF = Fields(used=("name",), ignored=("optional",))
ENV_FROM = Fields(used=("configMapRef", "secretRef"), ignored=("prefix",),
                  nested={"configMapRef": _REF, "secretRef": _REF})
MOUNT = Fields(used=("name", "mountPath", "readOnly"),
               ignored=("subPath", "subPathExpr", "mountPropagation", "recursiveReadOnly"))
CONTAINER = Fields(
    used=("name", "image", "command", "args", "workingDir", "env", "envFrom", "volumeMounts",
          "resources"),
    ignored=("imagePullPolicy", "ports", "livenessProbe", "readinessProbe", "startupProbe",
             "lifecycle", "securityContext", "stdin", "stdinOnce", "tty",
             "terminationMessagePath", "terminationMessagePolicy", "volumeDevices",
             "resizePolicy", "restartPolicy"),
    nested={"env": ENV, "envFrom": ENV_FROM, "volumeMounts": MOUNT,
            "resources": Fields(used=("limits",), ignored=("requests", "claims"))})
VOLUME = Fields(
    used=("name", "configMap", "secret", "emptyDir", "hostPath"),
    # Other volume sources are refused by validation ("exactly one of ..."), not here.
    ignored=("persistentVolumeClaim", "projected", "downwardAPI", "nfs", "csi", "ephemeral",
             "iscsi", "image"),
    nested={
        "configMap": Fields(used=("name",), ignored=("items", "defaultMode", "optional")),
        "secret": Fields(used=("secretName",), ignored=("items", "defaultMode", "optional")),
        "emptyDir": Fields(used=(), ignored=("medium", "sizeLimit")),
        "hostPath": Fields(used=("path",), ignored=("type",)),
    })
POD_SPEC = Fields(
    used=("containers", "volumes", "restartPolicy", "nodeName", "hostNetwork"),
    ignored=("initContainers", "ephemeralContainers", "activeDeadlineSeconds", "affinity",
             "automountServiceAccountToken", "dnsConfig", "dnsPolicy", "enableServiceLinks",
             "hostAliases", "hostIPC", "hostPID", "hostUsers", "hostname", "imagePullSecrets",
             "nodeSelector", "os", "overhead", "preemptionPolicy", "priority",
             "priorityClassName", "readinessGates", "resourceClaims", "resources",
             "runtimeClassName", "schedulerName", "schedulingGates", "securityContext",
             "serviceAccount", "serviceAccountName", "setHostnameAsFQDN",
             "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds",
             "tolerations", "topologySpreadConstraints"),
    nested={"containers": CONTAINER, "volumes": VOLUME})

_CONFIG = Fields(used=("protocolName", "configData"))
DEVICE_PROPERTY = Fields(
    used=("name", "desired", "visitors", "collectCycle", "reportCycle"),
    ignored=("reportToCloud", "pushMethod"),
    nested={"desired": Fields(used=("value",), ignored=("metadata",)), "visitors": _CONFIG})
DEVICE_SPEC = Fields(used=("deviceModelRef", "nodeName", "protocol", "properties"),
                     ignored=("methods",),
                     nested={"deviceModelRef": Fields(used=("name",)), "protocol": _CONFIG,
                             "properties": DEVICE_PROPERTY})
MODEL_SPEC = Fields(used=("properties",), ignored=("protocol",), nested={
    # Descriptive fields are kept and shown, so they count as used.
    "properties": Fields(used=("name", "type", "accessMode", "description", "minimum",
                               "maximum", "unit"))})

_TOP = ("apiVersion", "kind", "metadata")
KIND_FIELDS = {
    "Pod": Fields(used=(*_TOP, "spec", "status"), nested={"metadata": META, "spec": POD_SPEC}),
    "ConfigMap": Fields(used=(*_TOP, "data", "binaryData"), ignored=("immutable",),
                        nested={"metadata": META}),
    "Secret": Fields(used=(*_TOP, "data", "stringData", "type"), ignored=("immutable",),
                     nested={"metadata": META}),
    "Device": Fields(used=(*_TOP, "spec", "status"),
                     nested={"metadata": META, "spec": DEVICE_SPEC}),
    "DeviceModel": Fields(used=(*_TOP, "spec"), nested={"metadata": META, "spec": MODEL_SPEC}),
    "Node": Fields(used=(*_TOP, "spec", "status"), nested={"metadata": META}),
}


def check_fields(kind: str, obj: Any, prune: bool = False) -> FieldReport:
    """Unknown and ignored fields of ``obj``, a manifest of ``kind`` (Kubernetes' Kind).
    With ``prune``, unknown fields are also removed from ``obj`` (in place), as the
    Kubernetes API server drops fields its schema does not have when it only warns."""
    report = FieldReport()
    schema = KIND_FIELDS.get(kind)
    if schema is not None and isinstance(obj, dict):
        _walk(obj, schema, "", report, prune)
    return report


def _walk(obj: dict[str, Any], schema: Fields, path: str, report: FieldReport,
          prune: bool) -> None:
    for name, value in list(obj.items()):
        here = f"{path}.{name}" if path else str(name)
        if name in schema.used:
            inner = schema.nested.get(name)
            if inner is None:
                continue
            if isinstance(value, dict):
                _walk(value, inner, here, report, prune)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        _walk(item, inner, f"{here}[{i}]", report, prune)
        elif name in schema.ignored:
            report.ignored.append(here)
        else:
            if prune:
                del obj[name]
            if len(report.unknown) < 50:
                known = (*schema.used, *schema.ignored)
                text = str(name)
                near = [k for k in known if k.lower() == text.lower()] or \
                    difflib.get_close_matches(text, known, n=1, cutoff=0.75)
                report.unknown.append((here, f"unknown field; did you mean {near[0]}?"
                                       if near else "unknown field"))
