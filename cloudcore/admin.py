"""The admin API: Kubernetes-shaped REST over HTTPS, for holders of the admin certificate."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cloudcore.hub import Hub, NodeUnavailable
from cloudcore.identity import from_transport
from cloudcore.nodes import NodeRegistry
from cloudcore.store import Store
from moorage import __version__, envelope
from moorage.durations import parse_seconds
from moorage.errors import ConfigError
from moorage.token import JoinToken, sign_jwt

log = logging.getLogger("cloudcore.admin")

MAX_BODY_BYTES = 1024 * 1024
PROXY_TIMEOUT = 10.0
MAX_TOKEN_TTL = 7 * 86400.0


def status_body(code: int, reason: str, message: str, **details: Any) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure" if code >= 400 else "Success",
            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


def not_found(kind: str, name: str) -> web.Response:
    return status_body(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=kind)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminAPI:
    def __init__(self, store: Store, registry: NodeRegistry, hub: Hub, token_key: bytes,
                 ca_hash: str, default_token_ttl: float) -> None:
        self.store, self.registry, self.hub = store, registry, hub
        self.token_key, self.ca_hash, self.default_token_ttl = token_key, ca_hash, default_token_ttl

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._authorize])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.healthz)
        r.add_get("/livez", self.healthz)
        r.add_get("/version", self.version)
        r.add_get("/api", self.api_versions)
        r.add_get("/api/v1", self.api_v1)
        r.add_get("/apis", self.api_groups)
        r.add_get("/api/v1/nodes", self.list_nodes)
        r.add_get("/api/v1/nodes/{name}", self.get_node)
        r.add_delete("/api/v1/nodes/{name}", self.delete_node)
        r.add_route("*", "/api/v1/nodes/{name}/proxy/{path:.*}", self.proxy_node)
        r.add_post("/apis/moorage.io/v1/jointokens", self.create_token)
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
                                   f"request body larger than {MAX_BODY_BYTES} bytes")
            if exc.status in (404, 405):
                return status_body(exc.status, "NotFound" if exc.status == 404 else
                                   "MethodNotAllowed", f"{request.method} {request.path}: "
                                   f"{exc.reason}")
            raise

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def version(self, _: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "32",
                                  "gitVersion": f"v1.32.0-moorage.{__version__}",
                                  "platform": "linux/amd64"})

    async def api_versions(self, _: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": []})

    async def api_groups(self, _: web.Request) -> web.Response:
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

    async def api_v1(self, _: web.Request) -> web.Response:
        return web.json_response({
            "kind": "APIResourceList", "groupVersion": "v1",
            "resources": [{"name": "nodes", "singularName": "node", "namespaced": False,
                           "kind": "Node", "verbs": ["delete", "get", "list"],
                           "shortNames": ["no"]}],
        })

    async def list_nodes(self, _: web.Request) -> web.Response:
        return web.json_response({
            "kind": "NodeList", "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.store.resource_version())},
            "items": self.registry.list(),
        })

    async def get_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        node = self.registry.get(name)
        return web.json_response(node) if node else not_found("nodes", name)

    async def delete_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        serials = self.store.revoke_node(name)
        self.hub.revoked.update(serials)
        await self.hub.disconnect(name, "node deleted by the administrator")
        existed = self.registry.forget(name)
        if not existed and not serials:
            return not_found("nodes", name)
        log.info("node %s deleted: %d certificate(s) revoked, session closed", name, len(serials))
        return status_body(200, "", f'node "{name}" deleted; {len(serials)} certificate(s) '
                                    "revoked", name=name, kind="nodes")

    async def proxy_node(self, request: web.Request) -> web.Response:
        """Kubernetes' node proxy; this slice answers edgecore's own endpoints (healthz)."""
        name, path = request.match_info["name"], request.match_info["path"]
        if self.registry.get(name) is None:
            return not_found("nodes", name)
        query = envelope.Message(source="cloudhub", group=envelope.GROUP_HUB,
                                 operation=envelope.QUERY, resource=f"node/{name}/{path}",
                                 content={"method": request.method})
        try:
            answer = await self.hub.request(name, query, PROXY_TIMEOUT)
        except NodeUnavailable as exc:
            return status_body(503, "ServiceUnavailable", str(exc))
        except TimeoutError:
            return status_body(504, "Timeout", f"node {name} did not answer within "
                                               f"{PROXY_TIMEOUT:g}s")
        content = answer.content if isinstance(answer.content, dict) else {}
        code = content.get("status", 502)
        body = content.get("body", "")
        if not isinstance(code, int) or not isinstance(body, str):
            return status_body(502, "BadGateway", f"node {name} sent a malformed answer")
        return web.Response(status=code, text=body)

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
        self.store.add_token(token.digest, float(exp))
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


def bound_port(runner: web.AppRunner) -> int:
    server = runner.addresses
    return int(server[0][1]) if server else 0


