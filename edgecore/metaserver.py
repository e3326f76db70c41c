"""MetaServer: the node's desired state as Kubernetes-shaped list/watch on localhost.

Served from the edge store, so it answers while the cloud is away. Edge apps
(and kubectl) may read everything this node holds, and report a pod's status
(``PUT``/``PATCH .../pods/NAME/status``), which goes to the cloud through the
outbox. Plain HTTP on loopback only: anything on the machine could already
read the store.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from edgecore.metamanager import MetaManager
from moorage import kubeapi
from moorage.errors import ManifestError
from moorage.kubeapi import not_found, status_body
from moorage.patch import merge_patch

log = logging.getLogger("edgecore.metaserver")

MAX_BODY_BYTES = 1024 * 1024


class MetaServer:
    def __init__(self, meta: MetaManager) -> None:
        self.meta = meta

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        kubeapi.add_discovery(app.router, ["get", "list", "watch"])
        app.router.add_route("*", "/api/{version}/{rest:.+}", self.resources)
        app.router.add_route("*", "/apis/{group}/{version}/{rest:.+}", self.resources)
        return app

    @staticmethod
    def _synced(_node: str, _key: tuple[str, str, str]) -> str:
        return "<unknown>"  # the cloud knows; the node only has what it holds

    async def resources(self, request: web.Request) -> web.StreamResponse:
        parsed = kubeapi.parse_path(request)
        if parsed is None:
            return status_body(404, "NotFound", f"the server could not find the requested "
                                                f"resource ({request.path})")
        kind, namespace, name, sub = parsed
        store = self.meta.store
        if request.method == "GET" and name is None:
            if request.query.get("watch") in ("1", "true"):
                return await kubeapi.watch(
                    request, kind, namespace, current=lambda: store.list(kind.plural, namespace),
                    since=self.meta.since, listeners=self.meta.listeners, synced=self._synced)
            keep = kubeapi.filters(request)
            items = [o for o in store.list(kind.plural, namespace) if keep(o)]
            return kubeapi.respond(request, kind, items, self.meta.resource_version,
                                   self._synced)
        key = (kind.plural, (namespace or "default") if kind.namespaced else "", name or "")
        obj = store.get(key)
        if obj is None:
            return not_found(kind.plural, name or "")
        if request.method == "GET" and not sub:
            return kubeapi.respond(request, kind, [obj], self.meta.resource_version,
                                   self._synced, single=True)
        if kind.plural == "pods" and sub == "status" and request.method in ("PUT", "PATCH"):
            return await self._pod_status(request, key, obj)
        return status_body(405, "MethodNotAllowed", "the MetaServer is read-only except for "
                                                    "pods/NAME/status")

    async def _pod_status(self, request: web.Request, key: tuple[str, str, str],
                          pod: dict[str, Any]) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError):
            return status_body(400, "BadRequest", "the request body is not valid JSON")
        if request.method == "PATCH":
            body = merge_patch(pod, body)
        status = body.get("status") if isinstance(body, dict) else None
        if not isinstance(status, dict):
            return status_body(422, "Invalid", "status: expected an object")
        try:
            self.meta.report_pod_status(key[1], key[2], status)
        except ManifestError as exc:
            return status_body(404, "NotFound", str(exc))
        return web.json_response({**pod, "status": status})
