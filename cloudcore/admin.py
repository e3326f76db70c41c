"""The admin API: Kubernetes-shaped REST over HTTPS, for holders of the admin certificate.

Discovery (``/api``, ``/apis``, ...), namespaced and cluster-scoped paths,
GET/LIST/WATCH/POST/PUT/PATCH/DELETE, label and field selectors, ``Table``
output for kubectl, and Kubernetes ``Status`` bodies for every error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cloudcore.hub import Hub, NodeUnavailable
from cloudcore.identity import from_transport
from cloudcore.nodes import NodeRegistry
from cloudcore.objects import Conflict, NotFound, ObjectStore
from cloudcore.servicebus import ServiceBus, parse_proxy_path
from moorage import __version__, envelope, kubeapi
from moorage.durations import parse_seconds
from moorage.errors import ConfigError, ManifestError
from moorage.fields import check_fields
from moorage.kubeapi import not_found, status_body
from moorage.patch import merge_patch, strategic_merge_patch
from moorage.resources import KINDS, MAX_OBJECT_BYTES, Kind, ValidationError, validate
from moorage.token import JoinToken, sign_jwt

log = logging.getLogger("cloudcore.admin")

MAX_BODY_BYTES = MAX_OBJECT_BYTES
PROXY_TIMEOUT = 10.0
MAX_TOKEN_TTL = 7 * 86400.0


def invalid(exc: ValidationError, plural: str) -> web.Response:
    causes = [{"reason": "FieldValueInvalid", "message": message, "field": field}
              for field, message in exc.causes]
    return status_body(422, "Invalid", str(exc), name=exc.name, kind=plural, causes=causes)


def field_warnings(request: web.Request, kind: Kind, obj: dict[str, Any]) -> list[str]:
    """Kubernetes' ``fieldValidation``: Strict refuses unknown fields; Warn (the default)
    and Ignore drop them from ``obj`` before it is stored, Warn with a warning each
    (``Warning`` headers, which kubectl prints). Fields Kubernetes has but Moorage does not
    act on are kept, with a warning unless Ignore."""
    mode = request.query.get("fieldValidation", "Warn")
    if mode not in ("Strict", "Warn", "Ignore"):
        raise ManifestError(f"fieldValidation: {mode!r} is not Strict, Warn or Ignore")
    report = check_fields(kind.kind, obj, prune=mode != "Strict")
    if mode == "Strict" and report.unknown:
        raise ValidationError(kind.kind, str(obj["metadata"].get("name", "")), report.unknown)
    if mode == "Ignore":
        return []
    return report.warnings()


def with_warnings(response: web.Response, warnings: list[str]) -> web.Response:
    for text in warnings[:20]:
        # Printable ASCII only: a field name is the client's text, and a header is not.
        safe = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)
        response.headers.add("Warning", f'299 - "{safe}"')
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SyncLookup = Callable[[str, tuple[str, str, str]], str]


class AdminAPI:
    def __init__(self, store: ObjectStore, registry: NodeRegistry, hub: Hub, token_key: bytes,
                 ca_hash: str, default_token_ttl: float,
                 on_node_deleted: Callable[[str], Awaitable[None]] | None = None,
                 synced: SyncLookup = lambda node, key: "<unknown>",
                 servicebus: ServiceBus | None = None) -> None:
        self.store, self.registry, self.hub = store, registry, hub
        self.servicebus = servicebus
        self.token_key, self.ca_hash, self.default_token_ttl = token_key, ca_hash, default_token_ttl
        self.on_node_deleted, self.synced = on_node_deleted, synced

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._authorize])
        r = app.router
        kubeapi.add_discovery(r, ["create", "delete", "get", "list", "patch", "update",
                                  "watch"])
        r.add_get("/openapi/v3", self.openapi_index)
        r.add_get("/openapi/v3/{gv:.+}", self.openapi_group)
        r.add_route("*", "/api/v1/nodes/{name}/proxy/{path:.*}", self.proxy_node)
        r.add_post("/apis/moorage.io/v1/jointokens", self.create_token)
        r.add_route("*", "/api/{version}/{rest:.+}", self.resources)
        r.add_route("*", "/apis/{group}/{version}/{rest:.+}", self.resources)
        return app

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        identity = from_transport(request.transport)
        if identity is None or not identity.is_admin:
            who = identity.common_name if identity else "anonymous"
            log.warning("admin API: %s %s refused for %r (not an admin certificate)",
                        request.method, request.path, who)
            return status_body(403, "Forbidden",
                               f'user "{who}" may not use the admin API: use the admin '
                               "kubeconfig written by `moorage init`")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 413:
                return status_body(413, "RequestEntityTooLarge",
                                   f"request body larger than {MAX_BODY_BYTES} bytes: split the "
                                   "object or move bulk data out of it")
            if exc.status in (404, 405):
                return status_body(exc.status, "NotFound" if exc.status == 404 else
                                   "MethodNotAllowed", f"{request.method} {request.path}: "
                                   f"{exc.reason}")
            raise

    # ------------------------------------------------------------ discovery

    async def openapi_index(self, _: web.Request) -> web.Response:
        """OpenAPI v3 discovery, enough for kubectl to see that we validate server-side."""
        paths = {kind.base_path().lstrip("/"): {
            "serverRelativeURL": f"/openapi/v3{kind.base_path()}?hash={__version__}"}
            for kind in KINDS}
        return web.json_response({"paths": paths})

    async def openapi_group(self, request: web.Request) -> web.Response:
        base = "/" + request.match_info["gv"].strip("/")
        kinds = [k for k in KINDS if k.base_path() == base]
        if not kinds:
            return status_body(404, "NotFound", f"no OpenAPI document for {base}")
        validation = {"name": "fieldValidation", "in": "query", "schema": {"type": "string"},
                      "description": "Strict, Warn or Ignore: objects are always validated"}
        paths: dict[str, Any] = {}
        for kind in kinds:
            gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
            collection = (f"{base}/namespaces/{{namespace}}/{kind.plural}" if kind.namespaced
                          else f"{base}/{kind.plural}")

            def operation(action: str, gvk: dict[str, str] = gvk) -> dict[str, Any]:
                return {"parameters": [validation], "x-kubernetes-action": action,
                        "x-kubernetes-group-version-kind": gvk,
                        "responses": {"200": {"description": "OK"}}}

            paths[collection] = {"post": operation("post"), "get": operation("list")}
            paths[collection + "/{name}"] = {"put": operation("put"),
                                              "patch": operation("patch"),
                                              "get": operation("get"),
                                              "delete": operation("delete")}
        return web.json_response({"openapi": "3.0.0", "info": {"title": "Moorage",
                                                               "version": __version__},
                                  "paths": paths, "components": {"schemas": {}}})

    # ------------------------------------------------------------ generic resources

    async def resources(self, request: web.Request) -> web.StreamResponse:
        parsed = kubeapi.parse_path(request)
        if parsed is None:
            return status_body(404, "NotFound", "the server could not find the requested "
                                                f"resource ({request.method} {request.path})")
        kind, namespace, name, sub = parsed
        if kind.plural == "pods" and sub == "log" and request.method == "GET" and name:
            return await self._pod_log(request, namespace or "default", name)
        if sub and sub != "status":
            return status_body(404, "NotFound", f"subresource {sub!r} is not served")
        ns_key = (namespace or "default") if kind.namespaced else ""
        try:
            if request.method == "GET" and name is None:
                if request.query.get("watch") in ("1", "true"):
                    return await self._watch(request, kind, namespace)
                return self._list(request, kind, namespace)
            if request.method == "GET":
                obj = self.store.get((kind.plural, ns_key, name or ""))
                if obj is None:
                    return not_found(kind.plural, name or "")
                return kubeapi.respond(request, kind, [obj], self.store.resource_version,
                                       self.synced, single=True)
            if request.method == "POST" and name is None:
                return await self._create(request, kind, ns_key)
            if request.method == "PUT" and name:
                return await self._update(request, kind, ns_key, name, sub, patch=False)
            if request.method == "PATCH" and name:
                return await self._update(request, kind, ns_key, name, sub, patch=True)
            if request.method == "DELETE" and name:
                return await self._delete(kind, ns_key, name)
        except ValidationError as exc:
            return invalid(exc, kind.plural)
        except ManifestError as exc:
            return status_body(400, "BadRequest", str(exc))
        except Conflict as exc:
            reason = "AlreadyExists" if "already exists" in str(exc) else "Conflict"
            return status_body(409, reason, str(exc), kind=kind.plural, name=name or "")
        except NotFound:
            return not_found(kind.plural, name or "")
        return status_body(405, "MethodNotAllowed",
                           f"{request.method} is not supported on {request.path}")

    def _list(self, request: web.Request, kind: Kind, namespace: str | None) -> web.Response:
        keep = kubeapi.filters(request)
        items = [obj for obj in self.store.list(kind.plural, namespace) if keep(obj)]
        return kubeapi.respond(request, kind, items, self.store.resource_version, self.synced)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise ManifestError("the request body is not valid JSON") from None

    async def _create(self, request: web.Request, kind: Kind, namespace: str) -> web.Response:
        body = await self._body(request)
        if isinstance(body, dict) and isinstance(body.get("metadata"), dict) and kind.namespaced:
            body["metadata"].setdefault("namespace", namespace)
            if body["metadata"]["namespace"] != namespace:
                raise ManifestError(f"the namespace of the object ({body['metadata']['namespace']}"
                                    f") does not match the namespace on the request ({namespace})")
        found, obj = validate(body, namespace or "default")
        if found != kind:
            raise ManifestError(f"the body is a {found.kind}, but the path is for {kind.plural}")
        warnings = field_warnings(request, kind, obj)
        if kind.plural != "nodes":
            obj.pop("status", None)  # status is reported by nodes, not set by clients
        created = await self.store.create(kind.plural, obj)
        return with_warnings(web.json_response(created, status=201), warnings)

    async def _update(self, request: web.Request, kind: Kind, namespace: str, name: str,
                      sub: str, patch: bool) -> web.Response:
        key = (kind.plural, namespace, name)
        current = self.store.get(key)
        if current is None:
            return not_found(kind.plural, name)
        body = await self._body(request)
        if patch:
            if "json-patch" in request.content_type:
                return status_body(415, "UnsupportedMediaType",
                                   "JSON patch is not supported: use a merge patch "
                                   "(--type merge) or a strategic merge patch")
            if "strategic-merge-patch" in request.content_type:
                body = strategic_merge_patch(kind.kind, current, body)
            else:
                body = merge_patch(current, body)
        if not isinstance(body, dict):
            raise ManifestError("the request body must be a JSON object")
        body.setdefault("apiVersion", kind.api_version)
        body.setdefault("kind", kind.kind)
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict) or meta.get("name", name) != name:
            raise ManifestError("metadata.name must match the name in the path")
        meta["name"] = name
        if kind.namespaced:
            meta["namespace"] = namespace
        _, obj = validate(body, namespace or "default")
        warnings = field_warnings(request, kind, obj)
        if sub == "status":
            new = {**current, "status": obj.get("status", {})}
        else:
            new = {**obj, "status": current.get("status", {})} if "status" in current else obj
        expected = meta.get("resourceVersion") if not patch else None
        updated = await self.store.replace(kind.plural, new, expected, status_only=sub == "status")
        return with_warnings(web.json_response(updated), warnings)

    async def _delete(self, kind: Kind, namespace: str, name: str) -> web.Response:
        if kind.plural == "nodes":
            return await self._delete_node(name)
        gone = await self.store.delete((kind.plural, namespace, name))
        return web.json_response(gone)

    async def _delete_node(self, name: str) -> web.Response:
        serials = await self.store.revoke_node(name)
        self.hub.revoked.update(serials)
        await self.hub.disconnect(name, "node deleted by the administrator")
        existed = await self.registry.forget(name)
        if self.on_node_deleted is not None:
            await self.on_node_deleted(name)
        if not existed and not serials:
            return not_found("nodes", name)
        log.info("node %s deleted: %d certificate(s) revoked, session closed", name, len(serials))
        return status_body(200, "", f'node "{name}" deleted; {len(serials)} certificate(s) '
                                    "revoked", name=name, kind="nodes")

    async def _watch(self, request: web.Request, kind: Kind,
                     namespace: str | None) -> web.StreamResponse:
        return await kubeapi.watch(
            request, kind, namespace, current=lambda: self.store.list(kind.plural, namespace),
            since=self.store.changes_since, listeners=self.store.listeners,
            synced=self.synced)

    # ------------------------------------------------------------ nodes and tokens

    async def _pod_log(self, request: web.Request, namespace: str, name: str) -> web.Response:
        """Kubernetes' pods/log: fetched from the pod's node over the channel."""
        pod = self.store.get(("pods", namespace, name))
        if pod is None:
            return not_found("pods", name)
        node = pod.get("spec", {}).get("nodeName")
        if not node:
            return status_body(400, "BadRequest", f"pod {name} is not bound to a node yet")
        args: dict[str, Any] = {}
        if request.query.get("container"):
            args["container"] = request.query["container"]
        if request.query.get("tailLines", "").isdigit():
            args["tailLines"] = int(request.query["tailLines"])
        return await self._ask_node(node, f"logs/{namespace}/{name}", args)

    async def _ask_node(self, node: str, path: str, args: dict[str, Any]) -> web.Response:
        query = envelope.Message(source="cloudhub", group=envelope.GROUP_HUB,
                                 operation=envelope.QUERY, resource=f"node/{node}/{path}",
                                 content=args)
        try:
            answer = await self.hub.request(node, query, PROXY_TIMEOUT)
        except NodeUnavailable as exc:
            return status_body(503, "ServiceUnavailable", f"{exc}: it cannot be asked now")
        except TimeoutError:
            return status_body(504, "Timeout", f"node {node} did not answer within "
                                               f"{PROXY_TIMEOUT:g}s")
        content = answer.content if isinstance(answer.content, dict) else {}
        code, body = content.get("status", 502), content.get("body", "")
        if not isinstance(code, int) or not isinstance(body, str):
            return status_body(502, "BadGateway", f"node {node} sent a malformed answer")
        if code >= 400:
            return status_body(code, "NotFound" if code == 404 else "BadRequest", body)
        return web.Response(status=code, text=body)

    async def proxy_node(self, request: web.Request) -> web.Response:
        """Kubernetes' node proxy: ``{port}/{path}`` (or ``nodes/{name}:{port}``) reaches an
        app on the node through the ServiceBus; other paths are edgecore's own (healthz)."""
        name, port, path = parse_proxy_path(request.match_info["name"],
                                            request.match_info["path"])
        if self.registry.get(name) is None:
            return not_found("nodes", name)
        if port is None:
            return await self._ask_node(name, path, {"method": request.method})
        if not 0 < port < 65536 or self.servicebus is None:
            return status_body(400, "BadRequest", "expected /api/v1/nodes/{node}/proxy/"
                                                  "{port}/{path} with a port 1-65535")
        return await self.servicebus.proxy(request, name, port, path)

    async def create_token(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json() if request.can_read_body else {}
            ttl_text = spec.get("ttl") if isinstance(spec, dict) else None
            ttl = parse_seconds(ttl_text, "ttl") if ttl_text else self.default_token_ttl
        except (ValueError, ConfigError) as exc:
            return status_body(422, "Invalid", f"ttl: {exc}")
        if ttl > MAX_TOKEN_TTL:
            return status_body(422, "Invalid", "ttl: at most 7 days (168h)")
        jwt, exp = sign_jwt(self.token_key, ttl)
        token = JoinToken(self.ca_hash, jwt)
        await self.store.add_token(token.digest, float(exp))
        log.info("join token issued, expires in %gs", ttl)
        return web.json_response({"kind": "JoinToken", "apiVersion": "moorage.io/v1",
                                  "status": {"token": str(token), "expires": exp}}, status=201)


async def start_site(app: web.Application, host: str, port: int, ssl_context: Any
                     ) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024,
                       reuse_address=True)
    await site.start()
    return runner
