"""The cloud's half of the ServiceBus.

- :meth:`ServiceBus.proxy`: the admin API's ``/api/v1/nodes/{node}/proxy/{port}/{path}``
  (and ``/api/v1/nodes/{node}:{port}/proxy/{path}``, Kubernetes' other spelling): the
  request travels to the node, which calls the app on its 127.0.0.1.
- :meth:`ServiceBus.upstream`: an edge app's request to a cloud URL, made here only when
  the URL is on ``modules.serviceBus.targetURLAllowlist``.

Every request leaves one audit line: node, direction, method, target, status, sizes.
"""

from __future__ import annotations

import logging
import time

from aiohttp import ClientSession, web

from cloudcore.config import ServiceBus as ServiceBusConfig
from cloudcore.hub import Hub, NodeUnavailable
from moorage import envelope
from moorage.envelope import Message
from moorage.errors import ProtocolError
from moorage.servicebus import (
    METHODS,
    HTTPRequest,
    HTTPResponse,
    allowed,
    clean_headers,
    perform,
    web_response,
)

log = logging.getLogger("cloudcore.servicebus")
audit = logging.getLogger("cloudcore.audit")

PER_NODE_CONCURRENCY = 8  # upstream calls in flight per node; more are refused (429)


class ServiceBus:
    def __init__(self, cfg: ServiceBusConfig, hub: Hub, frame_bytes: int) -> None:
        self.cfg, self.hub = cfg, hub
        # A body travels base64-encoded inside one channel frame: it must fit.
        self.max_body = min(cfg.max_body_bytes, (frame_bytes - 64 * 1024) * 3 // 4)
        self.session: ClientSession | None = None
        self.in_flight: dict[str, int] = {}

    # ------------------------------------------------------------ cloud -> node app

    async def proxy(self, request: web.Request, node: str, port: int, path: str
                    ) -> web.Response:
        started = time.monotonic()
        if request.method not in METHODS:
            return self._done(node, "proxy", request.method, port, path, 405, 0, 0, started,
                              web.Response(status=405, text="method not allowed\n"))
        if request.content_length is not None and request.content_length > self.max_body:
            return self._too_big(node, request, port, path, started)
        body = await request.content.read(self.max_body + 1)
        if len(body) > self.max_body:
            return self._too_big(node, request, port, path, started)
        target = "/" + path + (f"?{request.query_string}" if request.query_string else "")
        call = HTTPRequest(request.method, target,
                           clean_headers(request.headers.items(), credentials=False), body,
                           port)
        message = Message(source="servicebus", group=envelope.GROUP_USER,
                          operation=envelope.QUERY, resource=f"node/{node}/servicebus",
                          content=call.to_content())
        try:
            answer = await self.hub.request(node, message, self.cfg.timeout + 5)
        except NodeUnavailable:
            return self._done(node, "proxy", request.method, port, path, 503, len(body), 0,
                              started, web.Response(status=503, text=f"node {node} is not "
                                                    "connected now; try again later\n"))
        except TimeoutError:
            return self._done(node, "proxy", request.method, port, path, 504, len(body), 0,
                              started, web.Response(status=504, text=f"node {node} did not "
                                                    "answer in time\n"))
        try:
            if answer.operation == envelope.ERROR:
                raise ProtocolError(str(answer.content))
            response = HTTPResponse.from_content(answer.content, self.max_body)
        except ProtocolError as exc:
            return self._done(node, "proxy", request.method, port, path, 502, len(body), 0,
                              started, web.Response(status=502, text=f"node {node} sent a bad "
                                                    f"answer: {exc}\n"))
        return self._done(node, "proxy", request.method, port, path, response.status,
                          len(body), len(response.body), started, web_response(response))

    def _too_big(self, node: str, request: web.Request, port: int, path: str,
                 started: float) -> web.Response:
        return self._done(node, "proxy", request.method, port, path, 413,
                          request.content_length or 0, 0, started, web.Response(
                              status=413, text=f"request body over {self.max_body} bytes "
                                               "(modules.serviceBus.maxBodyBytes)\n"))

    @staticmethod
    def _done(node: str, direction: str, method: str, port: int | str, path: str, status: int,
              sent: int, received: int, started: float, response: web.Response
              ) -> web.Response:
        audit.info("servicebus %s node=%s method=%s target=%s:%s status=%d request_bytes=%d "
                   "response_bytes=%d ms=%.0f", direction, node, method, port, path[:200],
                   status, sent, received, (time.monotonic() - started) * 1000)
        return response

    # ------------------------------------------------------------ node app -> cloud URL

    async def upstream(self, node: str, message: Message) -> Message:
        """Answer an edge app's request (the message's content): call the URL if allowed."""
        started = time.monotonic()
        try:
            call = HTTPRequest.from_content(message.content, self.max_body)
        except ProtocolError as exc:
            return message.reply(str(exc), source="servicebus", operation=envelope.ERROR)
        if not allowed(call.target, self.cfg.target_url_allowlist):
            response = HTTPResponse.error(403, f"{call.target[:200]} is not on the cloud's "
                                               "allowlist (modules.serviceBus."
                                               "targetURLAllowlist in cloudcore.yaml)")
        elif self.in_flight.get(node, 0) >= PER_NODE_CONCURRENCY:
            response = HTTPResponse.error(429, f"node {node} has {PER_NODE_CONCURRENCY} "
                                               "requests in flight already; retry later")
        else:
            self.in_flight[node] = self.in_flight.get(node, 0) + 1
            try:
                response = await self._call(call)
            finally:
                self.in_flight[node] -= 1
                if not self.in_flight[node]:
                    del self.in_flight[node]
        audit.info("servicebus upstream node=%s method=%s target=%s status=%d "
                   "request_bytes=%d response_bytes=%d ms=%.0f", node, call.method,
                   call.target[:200], response.status, len(call.body), len(response.body),
                   (time.monotonic() - started) * 1000)
        return message.reply(response.to_content(), source="servicebus")

    async def _call(self, call: HTTPRequest) -> HTTPResponse:
        if self.session is None:
            self.session = ClientSession(auto_decompress=False)
        return await perform(self.session, call, call.target, self.cfg.timeout, self.max_body,
                             call.target[:200])

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def parse_proxy_path(name: str, path: str) -> tuple[str, int | None, str]:
    """``nodes/{name}/proxy/{path}`` -> (node, app port or None, path on the app).

    ``{port}/{rest}`` and ``{node}:{port}`` address an app through the ServiceBus;
    anything else is edgecore's own endpoint (healthz)."""
    node, _, port_text = name.partition(":")
    if port_text:
        return node, int(port_text) if port_text.isdigit() else -1, path
    head, _, rest = path.partition("/")
    if head.isdigit():
        return node, int(head), rest
    return node, None, path
