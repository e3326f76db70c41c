"""The enrollment service (KubeEdge's :10002 cert service, wire-compatible).

- ``GET /ca.crt``: the CA certificate, DER.
- ``GET`` or ``POST /edge.crt``: body a DER (or PEM) CSR; headers ``NodeName`` and
  either ``Authorization: Bearer <jwt>`` (first enrollment) or, for renewal, the
  node's current certificate presented in the TLS handshake. Answers the signed
  certificate, DER.

Request sizes are capped and every client address is rate limited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from certs import pki
from certs.errors import CSRError
from cloudcore.authority import Authority, check_node_name
from cloudcore.identity import from_transport
from cloudcore.objects import ObjectStore
from moorage.errors import TokenError
from moorage.ratelimit import KeyedLimiter, TokenBucket
from moorage.token import jwt_digest, verify_jwt

log = logging.getLogger("cloudcore.enrollment")

MAX_REQUEST_BYTES = pki.MAX_CSR_BYTES


class Enrollment:
    def __init__(self, authority: Authority, store: ObjectStore, token_key: bytes,
                 per_client_per_minute: int, total_per_minute: int,
                 is_connected: Callable[[str], bool],
                 on_revoke: Callable[[list[str]], None]) -> None:
        self.authority, self.store, self.token_key = authority, store, token_key
        self.is_connected, self.on_revoke = is_connected, on_revoke
        self.per_client = KeyedLimiter(per_client_per_minute)
        self.total = TokenBucket(total_per_minute / 60.0, max(1.0, total_per_minute / 2.0))
        self.ca_der = pki.cert_to_der(authority.ca.cert)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_get("/ca.crt", self.ca_crt)
        app.router.add_route("GET", "/edge.crt", self.edge_crt)
        app.router.add_route("POST", "/edge.crt", self.edge_crt)
        return app

    async def ca_crt(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return _refuse(429, "too many requests: retry in a minute")
        return web.Response(body=self.ca_der, content_type="application/octet-stream")

    def _allowed(self, request: web.Request) -> bool:
        return self.per_client.allow(request.remote or "?") and self.total.allow()

    async def edge_crt(self, request: web.Request) -> web.Response:
        peer = request.remote or "?"
        if not self._allowed(request):
            log.warning("enrollment from %s refused: rate limit exceeded", peer)
            return _refuse(429, "too many enrollment requests: retry in a minute")
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            log.warning("enrollment from %s refused: body of %d bytes", peer,
                        request.content_length)
            return _refuse(413, f"CSR larger than {MAX_REQUEST_BYTES} bytes")
        node = request.headers.get("NodeName", "")
        try:
            body = await request.read()
            check_node_name(node)
            await self._authorize(request, node)
            cert = await self.authority.sign_node_csr(body, node)
        except web.HTTPRequestEntityTooLarge:
            log.warning("enrollment from %s refused: body too large", peer)
            return _refuse(413, f"CSR larger than {MAX_REQUEST_BYTES} bytes")
        except (TokenError, PermissionError) as exc:
            log.warning("enrollment of node %r from %s refused: %s", node, peer, exc)
            return _refuse(401, str(exc))
        except CSRError as exc:
            log.warning("enrollment of node %r from %s refused: %s", node, peer, exc)
            return _refuse(400, str(exc))
        return web.Response(body=pki.cert_to_der(cert), content_type="application/octet-stream")

    async def _authorize(self, request: web.Request, node: str) -> None:
        identity = from_transport(request.transport)
        if identity is not None:
            # Renewal over the node's current, TLS-verified certificate.
            if identity.node_name != node:
                raise PermissionError(
                    f"the client certificate belongs to {identity.common_name!r}, "
                    f"not to node {node!r}")
            if identity.serial in await self.store.revoked_serials():
                raise PermissionError("the client certificate has been revoked: "
                                      "enroll again with a fresh token")
            return
        auth = request.headers.get("Authorization", "")
        scheme, _, jwt = auth.partition(" ")
        if scheme.lower() != "bearer" or not jwt:
            raise TokenError("no join token: send `Authorization: Bearer <token>` "
                             "(moorage join does) or present the node's current certificate")
        verify_jwt(self.token_key, jwt.strip())
        if not await self.store.token_valid(jwt_digest(jwt.strip())):
            raise TokenError("unknown or revoked token: get a new one with `moorage gettoken`")
        if self.is_connected(node):
            raise PermissionError(
                f"node {node!r} is connected right now with a valid certificate: stop it, or "
                f"delete it (`moorage delete node {node}`), before enrolling a machine under "
                "that name")
        superseded = await self.store.revoke_node(node)
        if superseded:
            self.on_revoke(superseded)
            log.info("node %s re-enrolled with a token: revoked its %d earlier certificate(s)",
                     node, len(superseded))


def _refuse(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")
