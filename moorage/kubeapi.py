"""Pieces of a Kubernetes-shaped REST API shared by the cloud's admin API and the edge's
MetaServer: Status bodies, discovery, path parsing, lists, tables and watch streams.

Both serve the same kinds from a store that keeps objects in memory or SQLite;
this module knows nothing of either, only of the shapes kubectl expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from moorage import __version__, tables
from moorage.events import Event, TooOld
from moorage.resources import KINDS, Kind, by_plural
from moorage.selectors import field_selector, label_selector

MAX_WATCH_SECONDS = 1800.0
WATCH_QUEUE = 10_000
Key = tuple[str, str, str]


def status_body(code: int, reason: str, message: str, **details: Any) -> web.Response:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure" if code >= 400 else "Success",
                            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


def not_found(kind: str, name: str) -> web.Response:
    return status_body(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=kind)


# ---------------------------------------------------------------- discovery

def add_discovery(router: web.UrlDispatcher, verbs: list[str]) -> None:
    async def version(_: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "32",
                                  "gitVersion": f"v1.32.0-moorage.{__version__}",
                                  "platform": "linux/amd64"})

    async def api_versions(_: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": []})

    async def api_groups(_: web.Request) -> web.Response:
        groups = []
        for group in sorted({k.group for k in KINDS if k.group}):
            versions = sorted({k.version for k in KINDS if k.group == group})
            entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
            groups.append({"name": group, "versions": entries, "preferredVersion": entries[0]})
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    async def resource_list(request: web.Request) -> web.Response:
        group, ver = request.match_info.get("group", ""), request.match_info["version"]
        kinds = [k for k in KINDS if (k.group, k.version) == (group, ver)]
        if not kinds:
            return status_body(404, "NotFound", "the server could not find the requested "
                                                f"resource {request.path}")
        return web.json_response({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{ver}" if group else ver,
            "resources": [{"name": k.plural, "singularName": k.singular,
                           "namespaced": k.namespaced, "kind": k.kind, "verbs": verbs,
                           "shortNames": list(k.short_names)} for k in kinds]})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    for path in ("/healthz", "/readyz", "/livez"):
        router.add_get(path, healthz)
    router.add_get("/version", version)
    router.add_get("/api", api_versions)
    router.add_get("/apis", api_groups)
    router.add_get("/api/{version}", resource_list)
    router.add_get("/apis/{group}/{version}", resource_list)


def parse_path(request: web.Request) -> tuple[Kind, str | None, str | None, str] | None:
    """(kind, namespace, name, subresource) for ``/api{s}/.../{rest}``, or None."""
    group, version = request.match_info.get("group", ""), request.match_info["version"]
    parts = request.match_info["rest"].strip("/").split("/")
    namespace = None
    if parts[0] == "namespaces" and len(parts) >= 3:
        namespace, parts = parts[1], parts[2:]
    kind = by_plural(group, version, parts[0])
    if kind is None or len(parts) > 3 or (namespace is not None and not kind.namespaced):
        return None
    name = parts[1] if len(parts) > 1 else None
    return kind, namespace, name, parts[2] if len(parts) > 2 else ""


def filters(request: web.Request) -> Callable[[dict[str, Any]], bool]:
    labels = label_selector(request.query.get("labelSelector"))
    fields = field_selector(request.query.get("fieldSelector"))
    return lambda obj: labels(obj) and fields(obj)


def respond(request: web.Request, kind: Kind, items: list[dict[str, Any]],
            resource_version: int, synced: tables.SyncLookup,
            single: bool = False) -> web.Response:
    rv = str(resource_version)
    if tables.wants_table(request.headers.get("Accept", "")):
        return web.json_response(tables.table(kind.plural, items, rv, synced))
    if single:
        return web.json_response(items[0])
    return web.json_response({"kind": kind.list_kind, "apiVersion": kind.api_version,
                              "metadata": {"resourceVersion": rv}, "items": items})


# ---------------------------------------------------------------- watch

async def watch(request: web.Request, kind: Kind, namespace: str | None, *,
                current: Callable[[], Iterable[dict[str, Any]]],
                since: Callable[[int], list[Event]],
                listeners: list[Callable[[Event], None]],
                synced: tables.SyncLookup) -> web.StreamResponse:
    """A Kubernetes watch: newline-delimited events until the timeout or the client leaves.

    Without a resourceVersion the current objects come first as ADDED; with one,
    the kept history after it (or a 410 Expired error event when it is gone).
    """
    keep = filters(request)
    as_table = tables.wants_table(request.headers.get("Accept", ""))
    timeout = MAX_WATCH_SECONDS
    with contextlib.suppress(ValueError):
        timeout = min(MAX_WATCH_SECONDS, float(request.query.get("timeoutSeconds", timeout)))
    rv_text = request.query.get("resourceVersion", "")
    try:
        start = int(rv_text) if rv_text not in ("", "0") else None
    except ValueError:
        return status_body(400, "BadRequest", f"invalid resourceVersion {rv_text!r}")
    queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def listener(event: Event) -> None:
        # A reader too slow to keep up is ended, and re-lists (as Kubernetes does).
        queue.put_nowait(event if queue.qsize() < WATCH_QUEUE else None)

    def wanted(event: Event) -> bool:
        ns = event.obj.get("metadata", {}).get("namespace", "")
        return event.kind == kind.plural and (namespace is None or ns == namespace) \
            and keep(event.obj)

    async def send(response: web.StreamResponse, event: Event) -> None:
        obj: Any = event.obj
        if as_table:
            obj = tables.table(kind.plural, [event.obj], str(event.resource_version), synced)
        line = json.dumps({"type": event.type, "object": obj}, separators=(",", ":"))
        await response.write(line.encode() + b"\n")

    listeners.append(listener)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    try:
        try:
            backlog = ([Event("ADDED", kind.plural, obj,
                              int(obj["metadata"].get("resourceVersion", 0)))
                        for obj in current()] if start is None else since(start))
        except TooOld as exc:
            await response.prepare(request)
            gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": str(exc), "reason": "Expired", "code": 410}
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        await response.prepare(request)
        for event in backlog:
            if wanted(event):
                await send(response, event)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            if event is None:
                break
            if wanted(event):
                await send(response, event)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        listeners.remove(listener)
    return response
