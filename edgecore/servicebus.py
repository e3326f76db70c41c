"""ServiceBus: a localhost HTTP bridge between the cloud and the apps on this node.

- Cloud -> app: the cloud's node proxy sends an HTTP request over the channel; we call
  ``http://127.0.0.1:<port>/<path>`` and send back status, headers and body. App down:
  502; app slow: 504; answer over the cap: 502. Nothing but 127.0.0.1 is ever called.
- App -> cloud: an app POSTs ``{"method", "targetURL", "payload"}`` (KubeEdge's shape)
  to our port; we forward it to the cloud, which calls the URL only if it is on the
  allowlist the cloud configures, and we return what it answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientSession, web

from edgecore.config import ServiceBus as ServiceBusConfig
from moorage import envelope
from moorage.envelope import Message
from moorage.errors import ConfigError, ProtocolError
from moorage.servicebus import (
    METHODS,
    HTTPRequest,
    HTTPResponse,
    clean_headers,
    perform,
    web_response,
)

log = logging.getLogger("edgecore.servicebus")

MAX_CONCURRENT = 16  # calls in flight to local apps; more wait


class ServiceBus:
    def __init__(self, cfg: ServiceBusConfig,
                 request: Callable[[Message, float], Awaitable[Message | None]]) -> None:
        self.cfg = cfg
        self.request = request  # EdgeHub.request: send upstream and wait for the answer
        self.session: ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.slots = asyncio.Semaphore(MAX_CONCURRENT)

    # ------------------------------------------------------------ cloud -> local app

    async def call_app(self, content: Any) -> dict[str, Any]:
        """Answer a node proxy request from the cloud (a channel query's content)."""
        try:
            req = HTTPRequest.from_content(content, self.cfg.max_body_bytes)
        except ProtocolError as exc:
            return HTTPResponse.error(400, f"bad proxy request: {exc}").to_content()
        if not 0 < req.port < 65536:
            return HTTPResponse.error(400, "bad proxy request: content.port: required").to_content()
        target = req.target if req.target.startswith("/") else "/" + req.target
        url = f"http://127.0.0.1:{req.port}{target}"
        async with self.slots:
            answer = await self._call(req, url)
        return answer.to_content()

    async def _call(self, req: HTTPRequest, url: str) -> HTTPResponse:
        if self.session is None:
            self.session = ClientSession(auto_decompress=False)
        return await perform(self.session, req, url, self.cfg.timeout, self.cfg.max_body_bytes,
                             f"the app on port {req.port}", "modules.serviceBus",
                             " (is it running and listening on 127.0.0.1?)")

    # ------------------------------------------------------------ local app -> cloud

    async def _from_app(self, request: web.Request) -> web.Response:
        cap = self.cfg.max_body_bytes
        if request.content_length is not None and request.content_length > cap * 2:
            return web.Response(status=413, text=f"request body over {cap} bytes\n")
        raw = await request.content.read(cap * 2 + 1)
        try:
            if len(raw) > cap * 2:
                raise ValueError(f"request body over {cap} bytes")
            call = json.loads(raw)
            if not isinstance(call, dict):
                raise ValueError("expected a JSON object {method, targetURL, payload}")
            method = str(call.get("method", "GET")).upper()
            target = call.get("targetURL")
            if method not in METHODS:
                raise ValueError(f"method: {method[:20]!r} is not one of {', '.join(METHODS)}")
            if not isinstance(target, str) or not target.startswith(("http://", "https://")):
                raise ValueError("targetURL: an http:// or https:// URL is required")
            payload = call.get("payload", "")
            body = payload.encode() if isinstance(payload, str) else \
                json.dumps(payload).encode()
            if len(body) > cap:
                return web.Response(status=413, text=f"payload over {cap} bytes "
                                                     "(modules.serviceBus.maxBodyBytes)\n")
        except ValueError as exc:
            return web.Response(status=400, text=f"expected {{method, targetURL, payload}}: "
                                                 f"{exc}\n")
        headers = clean_headers(request.headers.items())
        if not isinstance(payload, str):
            headers.append(("Content-Type", "application/json"))
        message = Message(source="servicebus", group=envelope.GROUP_USER,
                          operation=envelope.QUERY, resource="servicebus/request",
                          content=HTTPRequest(method, target, headers, body).to_content())
        answer = await self.request(message, self.cfg.timeout + 5)
        if answer is None:
            return web.Response(status=503, text="the cloud is not reachable now; try again "
                                                 "later\n")
        if answer.operation == envelope.ERROR:
            return web.Response(status=502, text=f"the cloud refused the request: "
                                                 f"{answer.content}\n")
        try:
            response = HTTPResponse.from_content(answer.content, cap)
        except ProtocolError as exc:
            return web.Response(status=502, text=f"malformed answer from the cloud: {exc}\n")
        return web_response(response)

    async def start(self) -> None:
        app = web.Application(client_max_size=self.cfg.max_body_bytes * 2 + 1024)
        app.router.add_post("/", self._from_app)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        try:
            await web.TCPSite(self.runner, self.cfg.server, self.cfg.port,
                              reuse_address=True).start()
        except OSError as exc:
            await self.runner.cleanup()
            raise ConfigError(f"modules.serviceBus: cannot listen on {self.cfg.server}:"
                              f"{self.cfg.port}: {exc.strerror or exc} (another process on "
                              "that port? set modules.serviceBus.port)") from None
        log.info("ServiceBus on http://%s:%d (apps -> allowlisted cloud URLs; cloud -> "
                 "apps on 127.0.0.1)", self.cfg.server, self.cfg.port)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()
