"""The resource kinds Moorage serves, in Kubernetes shapes, and their validation.

Validation is pure: it takes a decoded manifest and either returns it
normalised (namespace defaulted) or raises :class:`ValidationError` listing
every problem as ``field.path: what is wrong`` (``spec.containers[0].image:
required``), the way the Kubernetes API server reports them.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from moorage.errors import ManifestError

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_OBJECT_BYTES = 1024 * 1024  # like etcd's default request limit
MAX_DATA_BYTES = 1024 * 1024  # ConfigMap/Secret payload, as Kubernetes


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    group: str
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def base_path(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection_path(self, namespace: str | None = None) -> str:
        if self.namespaced and namespace:
            return f"{self.base_path()}/namespaces/{namespace}/{self.plural}"
        return f"{self.base_path()}/{self.plural}"

    def object_path(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection_path(namespace)}/{name}"


DEVICES_GROUP = "devices.kubeedge.io"
KINDS: tuple[Kind, ...] = (
    Kind("Node", "nodes", "node", "", "v1", False, ("no",)),
    Kind("Pod", "pods", "pod", "", "v1", True, ("po",)),
    Kind("ConfigMap", "configmaps", "configmap", "", "v1", True, ("cm",)),
    Kind("Secret", "secrets", "secret", "", "v1", True, ()),
    Kind("Device", "devices", "device", DEVICES_GROUP, "v1beta1", True, ("dev",)),
    Kind("DeviceModel", "devicemodels", "devicemodel", DEVICES_GROUP, "v1beta1", True, ("dm",)),
)
_BY_NAME = {alias: k for k in KINDS
            for alias in (k.plural, k.singular, k.kind.lower(), *k.short_names)}
_BY_TYPE = {(k.api_version, k.kind): k for k in KINDS}


def lookup(name: str) -> Kind:
    """A kind by any name kubectl accepts: plural, singular, Kind or short name."""
    found = _BY_NAME.get(name.lower().split(".", 1)[0])
    if found is None:
        raise ManifestError(f'the server doesn\'t have a resource type "{name}"; known: '
                            f"{', '.join(k.plural for k in KINDS)}")
    return found


def by_plural(group: str, version: str, plural: str) -> Kind | None:
    for kind in KINDS:
        if (kind.group, kind.version, kind.plural) == (group, version, plural):
            return kind
    return None


class ValidationError(ManifestError):
    """An object that breaks the schema; ``causes`` lists (field, message) pairs."""

    def __init__(self, kind: str, name: str, causes: list[tuple[str, str]]) -> None:
        self.kind, self.name, self.causes = kind, name, causes
        detail = "; ".join(f"{field}: {message}" for field, message in causes)
        super().__init__(f'{kind} "{name}" is invalid: {detail}')


class _Checker:
    def __init__(self) -> None:
        self.causes: list[tuple[str, str]] = []

    def fail(self, path: str, message: str) -> None:
        if len(self.causes) < 50:
            self.causes.append((path, message))

    def typed(self, value: Any, kind: type | tuple[type, ...], path: str, what: str) -> bool:
        if value is None:
            return False
        if isinstance(value, bool) and kind is not bool and bool not in (
                kind if isinstance(kind, tuple) else (kind,)):
            self.fail(path, f"expected {what}, got a boolean")
            return False
        if not isinstance(value, kind):
            self.fail(path, f"expected {what}, got {type(value).__name__}")
            return False
        return True

    def required(self, obj: dict[str, Any], key: str, path: str, kind: type = str,
                 what: str = "a string") -> Any:
        value = obj.get(key)
        if value is None or value == "" or value == []:
            self.fail(f"{path}.{key}" if path else key, "required")
            return None
        return value if self.typed(value, kind, f"{path}.{key}" if path else key, what) else None

    def string_map(self, value: Any, path: str, keys: re.Pattern[str] | None = None) -> None:
        if value is None:
            return
        if not self.typed(value, dict, path, "a map of strings"):
            return
        for key, item in value.items():
            if not isinstance(item, str):
                self.fail(f"{path}.{key}", "expected a string value")
            if keys is not None and not keys.match(str(key)):
                self.fail(f"{path}.{key}", "invalid key")

    def string_list(self, value: Any, path: str) -> None:
        if value is None:
            return
        if not self.typed(value, list, path, "a list of strings"):
            return
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{path}[{i}]", "expected a string")

    def name(self, value: Any, path: str, pattern: re.Pattern[str] = DNS_SUBDOMAIN,
             limit: int = 253) -> None:
        if value is None or value == "":
            self.fail(path, "required")
        elif not isinstance(value, str):
            self.fail(path, f"expected a string, got {type(value).__name__}")
        elif len(value) > limit or not pattern.match(value):
            self.fail(path, f'invalid value "{value}": must be lowercase letters, digits, '
                            f"'-' (and '.'), starting and ending with a letter or digit, "
                            f"at most {limit} characters")


def _labels(check: _Checker, meta: dict[str, Any]) -> None:
    labels = meta.get("labels")
    check.string_map(labels, "metadata.labels")
    if isinstance(labels, dict):
        for key, value in labels.items():
            if isinstance(value, str) and (len(value) > 63 or not LABEL_VALUE.match(value)):
                check.fail(f"metadata.labels.{key}", f'invalid label value "{value}"')
    check.string_map(meta.get("annotations"), "metadata.annotations")


def _pod(check: _Checker, spec: Any) -> None:
    if not check.typed(spec, dict, "spec", "an object"):
        check.fail("spec", "required")
        return
    volumes: set[str] = set()
    raw_volumes = spec.get("volumes") or []
    if check.typed(raw_volumes, list, "spec.volumes", "a list"):
        for i, vol in enumerate(raw_volumes):
            path = f"spec.volumes[{i}]"
            if not check.typed(vol, dict, path, "an object"):
                continue
            check.name(vol.get("name"), f"{path}.name", DNS_LABEL, 63)
            if vol.get("name") in volumes:
                check.fail(f"{path}.name", f'duplicate volume "{vol.get("name")}"')
            volumes.add(vol.get("name"))
            sources = [s for s in ("configMap", "secret", "emptyDir", "hostPath") if s in vol]
            if len(sources) != 1:
                check.fail(path, "exactly one of configMap, secret, emptyDir or hostPath "
                                 "is required")
            elif sources[0] == "configMap":
                source = vol["configMap"]
                if check.typed(source, dict, f"{path}.configMap", "an object"):
                    check.required(source, "name", f"{path}.configMap")
            elif sources[0] == "secret":
                source = vol["secret"]
                if check.typed(source, dict, f"{path}.secret", "an object"):
                    check.required(source, "secretName", f"{path}.secret")
            elif sources[0] == "hostPath":
                source = vol["hostPath"]
                if check.typed(source, dict, f"{path}.hostPath", "an object"):
                    host_path = check.required(source, "path", f"{path}.hostPath")
                    if isinstance(host_path, str) and not host_path.startswith("/"):
                        check.fail(f"{path}.hostPath.path", "must be an absolute path")
    containers = check.required(spec, "containers", "spec", list, "a list")
    names: set[str] = set()
    for i, container in enumerate(containers or []):
        path = f"spec.containers[{i}]"
        if not check.typed(container, dict, path, "an object"):
            continue
        check.name(container.get("name"), f"{path}.name", DNS_LABEL, 63)
        if container.get("name") in names:
            check.fail(f"{path}.name", f'duplicate container name "{container.get("name")}"')
        names.add(container.get("name"))
        check.required(container, "image", path)
        check.string_list(container.get("command"), f"{path}.command")
        check.string_list(container.get("args"), f"{path}.args")
        env = container.get("env") or []
        if check.typed(env, list, f"{path}.env", "a list"):
            for j, item in enumerate(env):
                if check.typed(item, dict, f"{path}.env[{j}]", "an object"):
                    check.required(item, "name", f"{path}.env[{j}]")
                    if "value" in item:
                        check.typed(item["value"], str, f"{path}.env[{j}].value", "a string")
        mounts = container.get("volumeMounts") or []
        if check.typed(mounts, list, f"{path}.volumeMounts", "a list"):
            for j, mount in enumerate(mounts):
                mpath = f"{path}.volumeMounts[{j}]"
                if not check.typed(mount, dict, mpath, "an object"):
                    continue
                name = check.required(mount, "name", mpath)
                check.required(mount, "mountPath", mpath)
                if name and name not in volumes:
                    check.fail(f"{mpath}.name", f'volume "{name}" is not defined in '
                                                "spec.volumes")
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        check.fail("spec.restartPolicy", f'unsupported value "{policy}": use Always, '
                                         "OnFailure or Never")
    if "nodeName" in spec:
        check.name(spec["nodeName"], "spec.nodeName")


def _data_size(check: _Checker, obj: dict[str, Any]) -> int:
    total = 0
    for key in ("data", "binaryData", "stringData"):
        section = obj.get(key)
        if isinstance(section, dict):
            total += sum(len(str(k)) + len(str(v)) for k, v in section.items())
    if total > MAX_DATA_BYTES:
        check.fail("data", f"total size {total} bytes exceeds {MAX_DATA_BYTES}")
    return total


def _b64_map(check: _Checker, value: Any, path: str) -> None:
    check.string_map(value, path, CONFIG_KEY)
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                try:
                    base64.b64decode(item, validate=True)
                except (binascii.Error, ValueError):
                    check.fail(f"{path}.{key}", "invalid base64")


def _configmap(check: _Checker, obj: dict[str, Any]) -> None:
    check.string_map(obj.get("data"), "data", CONFIG_KEY)
    _b64_map(check, obj.get("binaryData"), "binaryData")
    _data_size(check, obj)


def _secret(check: _Checker, obj: dict[str, Any]) -> None:
    _b64_map(check, obj.get("data"), "data")
    check.string_map(obj.get("stringData"), "stringData", CONFIG_KEY)
    if "type" in obj:
        check.typed(obj["type"], str, "type", "a string")
    _data_size(check, obj)


DEVICE_PROPERTY_TYPES = ("INT", "FLOAT", "DOUBLE", "STRING", "BOOLEAN", "BYTES")


def _device(check: _Checker, spec: Any) -> None:
    if not check.typed(spec, dict, "spec", "an object"):
        check.fail("spec", "required")
        return
    ref = spec.get("deviceModelRef")
    if check.typed(ref, dict, "spec.deviceModelRef", "an object"):
        check.required(ref, "name", "spec.deviceModelRef")
    else:
        check.fail("spec.deviceModelRef.name", "required")
    if spec.get("nodeName") is not None:
        check.name(spec["nodeName"], "spec.nodeName")
    protocol = spec.get("protocol")
    if protocol is not None and check.typed(protocol, dict, "spec.protocol", "an object"):
        check.required(protocol, "protocolName", "spec.protocol")
        if protocol.get("configData") is not None:
            check.typed(protocol["configData"], dict, "spec.protocol.configData", "an object")
    props = spec.get("properties") or []
    if check.typed(props, list, "spec.properties", "a list"):
        seen: set[str] = set()
        for i, prop in enumerate(props):
            path = f"spec.properties[{i}]"
            if not check.typed(prop, dict, path, "an object"):
                continue
            name = check.required(prop, "name", path)
            if name in seen:
                check.fail(f"{path}.name", f'duplicate property "{name}"')
            seen.add(name)
            for cycle in ("collectCycle", "reportCycle"):
                if prop.get(cycle) is not None and (
                        not check.typed(prop[cycle], int, f"{path}.{cycle}", "milliseconds")
                        or prop[cycle] <= 0):
                    check.fail(f"{path}.{cycle}", "must be a positive number of milliseconds")
            visitors = prop.get("visitors")
            if visitors is not None and check.typed(visitors, dict, f"{path}.visitors",
                                                    "an object"):
                config = visitors.get("configData")
                if config is not None:
                    check.typed(config, dict, f"{path}.visitors.configData", "an object")


def _devicemodel(check: _Checker, spec: Any) -> None:
    if not check.typed(spec, dict, "spec", "an object"):
        check.fail("spec", "required")
        return
    props = spec.get("properties") or []
    if check.typed(props, list, "spec.properties", "a list"):
        for i, prop in enumerate(props):
            path = f"spec.properties[{i}]"
            if not check.typed(prop, dict, path, "an object"):
                continue
            check.required(prop, "name", path)
            kind = prop.get("type")
            if kind is not None and kind not in DEVICE_PROPERTY_TYPES:
                check.fail(f"{path}.type", f'unsupported value "{kind}": use one of '
                                           f"{', '.join(DEVICE_PROPERTY_TYPES)}")
            mode = prop.get("accessMode")
            if mode is not None and mode not in ("ReadWrite", "ReadOnly"):
                check.fail(f"{path}.accessMode", f'unsupported value "{mode}": use ReadWrite '
                                                 "or ReadOnly")


def identify(obj: Any) -> Kind:
    if not isinstance(obj, dict):
        raise ManifestError("a manifest must be a mapping with apiVersion, kind and metadata")
    api_version, kind_name = obj.get("apiVersion"), obj.get("kind")
    if not api_version or not kind_name:
        raise ManifestError("the manifest has no " + ("apiVersion" if not api_version
                                                        else "kind") + ": every object needs "
                            "apiVersion and kind (for example apiVersion: v1, kind: Pod)")
    kind = _BY_TYPE.get((str(api_version), str(kind_name)))
    if kind is None:
        known = ", ".join(f"{k.api_version} {k.kind}" for k in KINDS)
        raise ManifestError(f'no kind "{kind_name}" is registered for version "{api_version}": '
                            f"known kinds are {known}")
    return kind


def validate(obj: Any, default_namespace: str = "default") -> tuple[Kind, dict[str, Any]]:
    """Check ``obj`` against its kind's schema; returns the kind and a normalised copy."""
    kind = identify(obj)
    check = _Checker()
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise ValidationError(kind.kind, "", [("metadata", "required")])
    name = meta.get("name")
    check.name(name, "metadata.name")
    obj = {**obj, "metadata": dict(meta)}
    if kind.namespaced:
        namespace = meta.get("namespace") or default_namespace
        check.name(namespace, "metadata.namespace", DNS_LABEL, 63)
        obj["metadata"]["namespace"] = namespace
    else:
        obj["metadata"].pop("namespace", None)
    _labels(check, meta)
    if kind.kind == "Pod":
        _pod(check, obj.get("spec"))
    elif kind.kind == "ConfigMap":
        _configmap(check, obj)
    elif kind.kind == "Secret":
        _secret(check, obj)
    elif kind.kind == "Device":
        _device(check, obj.get("spec"))
    elif kind.kind == "DeviceModel":
        _devicemodel(check, obj.get("spec"))
    if check.causes:
        raise ValidationError(kind.kind, str(name or ""), check.causes)
    return kind, obj
