"""Patches the admin API accepts: JSON merge patch (RFC 7386) and Kubernetes' strategic
merge patch, which ``kubectl apply`` sends for built-in kinds (Pod, ConfigMap, Secret,
Node).

A strategic merge patch is a merge patch whose lists of objects merge element by
element, matched on a merge key (a container by ``name``, a volume mount by
``mountPath``), with directives: ``$patch: delete|replace|merge`` in a map or list
element, ``$setElementOrder/<field>`` (the order of a merged list),
``$deleteFromPrimitiveList/<field>`` and ``$retainKeys``. Lists without a merge key
are replaced, as in a merge patch. Pure functions; a malformed patch raises
:class:`PatchError` naming the field.
"""

from __future__ import annotations

from typing import Any

from moorage.errors import ManifestError

# Merge keys of the lists that merge, by path (list items are "[]"), per Kubernetes'
# patchMergeKey tags for the fields Moorage serves.
_CONTAINER = {"env": "name", "volumeMounts": "mountPath", "ports": "containerPort",
              "volumeDevices": "devicePath"}
MERGE_KEYS: dict[str, dict[str, Any]] = {
    "Pod": {"metadata": {"ownerReferences": "uid"},
            "spec": {"containers": ("name", _CONTAINER), "initContainers": ("name", _CONTAINER),
                     "ephemeralContainers": ("name", _CONTAINER), "volumes": "name",
                     "imagePullSecrets": "name", "hostAliases": "ip"}},
    "Node": {"metadata": {"ownerReferences": "uid"}, "spec": {"taints": "key"},
             "status": {"conditions": "type", "addresses": "type"}},
    "ConfigMap": {"metadata": {"ownerReferences": "uid"}},
    "Secret": {"metadata": {"ownerReferences": "uid"}},
}


class PatchError(ManifestError):
    """A patch that cannot be applied."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(kind: str, target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to ``target``, an object of ``kind``."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    return _merge_map(target if isinstance(target, dict) else {}, patch,
                      MERGE_KEYS.get(kind, {}), "")


def _merge_map(target: dict[str, Any], patch: dict[str, Any], keys: dict[str, Any],
               path: str) -> Any:
    directive = patch.get("$patch", "merge")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: v for k, v in patch.items() if not k.startswith("$")}
    if directive != "merge":
        raise PatchError(f"{path or '.'}: $patch {directive!r} is not merge, replace or delete")
    result = dict(target)
    for name, value in patch.items():
        if name.startswith("$setElementOrder/") or name.startswith(
                "$deleteFromPrimitiveList/") or name in ("$patch", "$retainKeys"):
            continue
        here = f"{path}.{name}" if path else name
        if value is None:
            result.pop(name, None)
            continue
        spec = keys.get(name)
        key, inner = (spec if isinstance(spec, tuple) else (spec, {})) \
            if not isinstance(spec, dict) else (None, spec)
        current = result.get(name)
        if isinstance(value, dict):
            merged = _merge_map(current if isinstance(current, dict) else {}, value,
                                inner, here)
            if merged is None:
                result.pop(name, None)
            else:
                result[name] = merged
        elif isinstance(value, list) and key is not None:
            result[name] = _merge_list(current if isinstance(current, list) else [], value,
                                       key, inner, here)
        else:
            result[name] = value
    for name, value in patch.items():
        if name.startswith("$deleteFromPrimitiveList/"):
            field = name.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [item for item in result[field] if item not in value]
        elif name.startswith("$setElementOrder/"):
            field = name.split("/", 1)[1]
            spec = keys.get(field)
            key = spec[0] if isinstance(spec, tuple) else spec if isinstance(spec, str) \
                else None
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = _ordered(result[field], value, key)
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError(f"{path or '.'}.$retainKeys: expected a list of field names")
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(target: list[Any], patch: list[Any], key: str, inner: dict[str, Any],
                path: str) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [item for item in patch if not (isinstance(item, dict) and "$patch" in item)]
    result = list(target)
    for i, item in enumerate(patch):
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"{path}[{i}]: a list element needs its merge key {key!r}")
        at = next((j for j, old in enumerate(result)
                   if isinstance(old, dict) and old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if at is not None:
                del result[at]
            continue
        merged = _merge_map(result[at] if at is not None else {}, item, inner, f"{path}[{i}]")
        if at is None:
            result.append(merged)
        else:
            result[at] = merged
    return result


def _ordered(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    """``items`` in the order of ``order`` (merge-key maps, or values); items not named
    there (added by the server) keep their relative order after them."""
    def ident(item: Any) -> str | int | None:
        value = item.get(key) if key is not None and isinstance(item, dict) else item
        return value if isinstance(value, str | int) else None
    wanted = [ident(o) for o in order]
    rank = {value: i for i, value in enumerate(wanted) if value is not None}
    def position(item: Any) -> int | None:
        found = ident(item)
        return None if found is None else rank.get(found)
    named = sorted((item for item in items if position(item) is not None),
                   key=lambda item: position(item) or 0)
    return named + [item for item in items if position(item) is None]
