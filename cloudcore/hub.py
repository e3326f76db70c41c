"""CloudHub: the mTLS WebSocket server that edge nodes dial.

The node's identity is its client certificate (CN ``system:node:<name>``,
O ``system:nodes``). The path must name the same node, and every message the
node sends may speak only about itself. A newer connection for a node replaces
the older one; requests the cloud sent and the edge has not answered are sent
again on the new connection, so a certificate rotation loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from cloudcore.identity import PeerIdentity, from_transport
from cloudcore.nodes import NodeRegistry
from moorage import envelope
from moorage.envelope import Message
from moorage.errors import ProtocolError

log = logging.getLogger("cloudcore.hub")

REPORT_KINDS = ("podstatus", "devicestatus")
REFUSAL_LOG_PERIOD = 600.0
CLOSE_REPLACED = 4000  # private-use close code: a newer connection took over


class NodeUnavailable(Exception):
    pass


@dataclass(eq=False)
class Session:
    node: str
    identity: PeerIdentity
    ws: ServerConnection
    started: float = field(default_factory=time.time)


@dataclass
class HubSettings:
    host: str
    port: int
    node_limit: int
    max_message_bytes: int
    keepalive_interval: float
    handshake_timeout: float


class Hub:
    def __init__(self, settings: HubSettings, ssl_context: ssl.SSLContext,
                 registry: NodeRegistry, revoked: set[str]) -> None:
        self.settings, self.ssl_context, self.registry = settings, ssl_context, registry
        self.revoked = revoked
        self.sessions: dict[str, Session] = {}
        # Nodes admitted whose WebSocket handshake is still finishing, with the time:
        # counted against the node limit so that a burst of handshakes cannot overshoot it.
        self.admitting: dict[str, float] = {}
        # Cloud-to-edge requests awaiting the edge's response, per node, by msg_id.
        self.pending: dict[str, dict[str, tuple[Message, asyncio.Future[Message]]]] = {}
        self.server: Server | None = None
        # Connections refused at admission, by reason (cloudcore_handshake_failures_total).
        self.refusals: Counter[str] = Counter()
        self._refusals_logged: dict[tuple[str, str], float] = {}
        # Hooks for the desired-state dispatcher (set by cloudcore.main).
        self.on_connect: Callable[[str], Awaitable[None]] | None = None
        self.on_disconnect: Callable[[str, bool], None] | None = None
        self.on_ack: Callable[[str, Message], Awaitable[None]] | None = None
        self.on_report: Callable[[str, str, str, str, Message], Awaitable[None]] | None = None
        # Messages edge apps published on $hw/events/upload/#: (node, content).
        self.on_upload: Callable[[str, Any], Awaitable[None]] | None = None
        # A page of what a node holds, sent on connecting (Dispatcher.inventory).
        self.on_inventory: Callable[[str, Any], Awaitable[None]] | None = None
        # An edge app's HTTP request through the ServiceBus: answered off the reading loop.
        self.on_servicebus: Callable[[str, Message], Awaitable[Message]] | None = None
        self._answering: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        s = self.settings
        hub = self

        class Connection(ServerConnection):
            async def handshake(self, *args: Any, **kwargs: Any) -> None:
                started = time.monotonic()
                try:
                    await super().handshake(*args, **kwargs)
                except asyncio.CancelledError:
                    # websockets cancels the handshake at open_timeout and drops the
                    # connection without a word: say so, and count it.
                    if time.monotonic() - started >= s.handshake_timeout * 0.9:
                        hub._note_refusal(
                            self, f"dropped: no WebSocket upgrade request within "
                            f"{s.handshake_timeout:g}s after the TLS handshake (not an "
                            "edgecore, or a proxy in between holding the request?)", "timeout")
                    raise

        self.server = await serve(
            self._handle, s.host, s.port, ssl=self.ssl_context, create_connection=Connection,
            process_request=self._check_request,
            compression=None,
            max_size=s.max_message_bytes,
            # Room for a node's keepalives while one of its messages waits on the store, so
            # the ping replies behind them are still read (else the node is dropped).
            max_queue=32,
            write_limit=64 * 1024,
            ping_interval=s.keepalive_interval,
            ping_timeout=s.keepalive_interval,
            open_timeout=s.handshake_timeout,
            close_timeout=min(5.0, s.keepalive_interval),
            server_header=None,
            backlog=4096,
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()

    def is_connected(self, node: str) -> bool:
        return node in self.sessions

    # ------------------------------------------------------------ admission

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, why: str,
                reason: str) -> Response:
        self._note_refusal(connection, f"refused ({status.value}): {why}", reason)
        return Response(status.value, status.phrase, Headers([("Content-Type", "text/plain")]),
                        (why + "\n").encode())

    def _note_refusal(self, connection: ServerConnection, what: str, reason: str) -> None:
        self.refusals[reason] += 1
        peer = connection.remote_address
        where = f"{peer[0]}:{peer[1]}" if peer else "?"
        # A refused node retries for ever (a revoked one, say): the same refusal of the
        # same host is a warning once per REFUSAL_LOG_PERIOD, debug in between.
        now = time.monotonic()
        seen_key = (peer[0] if peer else "?", what)
        if len(self._refusals_logged) > 10_000:
            self._refusals_logged.clear()
        quiet = now - self._refusals_logged.get(seen_key, -REFUSAL_LOG_PERIOD) < \
            REFUSAL_LOG_PERIOD
        if not quiet:
            self._refusals_logged[seen_key] = now
        log.log(logging.DEBUG if quiet else logging.WARNING, "connection from %s %s%s", where,
                what, "" if quiet else " (repeats of this are logged at debug level for "
                "10 minutes)")

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        identity = from_transport(connection.transport)
        if identity is None or identity.node_name is None:
            cn = identity.common_name if identity else "none"
            return self._refuse(connection, HTTPStatus.FORBIDDEN,
                                f"certificate {cn!r} is not a node certificate "
                                "(CN system:node:<name>, O system:nodes): enroll with "
                                "`moorage join`", "identity")
        node = identity.node_name
        if identity.serial in self.revoked:
            return self._refuse(connection, HTTPStatus.FORBIDDEN,
                                f"node {node}: certificate {identity.serial} has been revoked; "
                                "enroll again with `moorage join --force` and a fresh token",
                                "revoked")
        parts = request.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 3 or parts[2] != "events":
            return self._refuse(connection, HTTPStatus.NOT_FOUND,
                                f"node {node}: unknown path {request.path!r}; "
                                "expected /<projectID>/<node>/events", "other")
        header_node = request.headers.get("node_id")
        if parts[1] != node or (header_node and header_node != node):
            named = parts[1] if parts[1] != node else header_node
            return self._refuse(connection, HTTPStatus.FORBIDDEN,
                                f"the certificate is for node {node!r} but the request names "
                                f"node {named!r}", "identity")
        now = time.monotonic()
        for name, since in list(self.admitting.items()):
            if now - since > self.settings.handshake_timeout:
                del self.admitting[name]  # that handshake never completed
        if node not in self.sessions and node not in self.admitting and \
                len(self.sessions) + len(self.admitting) >= self.settings.node_limit:
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE,
                                f"node {node}: the node limit of {self.settings.node_limit} "
                                "connected nodes is reached (modules.cloudHub.nodeLimit)",
                                "node_limit")
        self.admitting[node] = now
        return None

    # ------------------------------------------------------------ sessions

    async def _handle(self, ws: ServerConnection) -> None:
        identity = from_transport(ws.transport)
        assert identity is not None and identity.node_name is not None  # checked at admission
        node = identity.node_name
        self.admitting.pop(node, None)
        session = Session(node, identity, ws)
        previous = self.sessions.get(node)
        self.sessions[node] = session
        if previous is not None:
            log.info("node %s opened a new connection; closing the previous one", node)
            asyncio.get_running_loop().create_task(
                previous.ws.close(CLOSE_REPLACED, "replaced by a newer connection"))
        log.info("node %s connected from %s (certificate %s)", node, ws.remote_address[0],
                 identity.serial)
        await self.registry.heard(node)
        for message, _ in list(self.pending.get(node, {}).values()):
            await self._send(session, message)
        if self.on_connect is not None:
            await self.on_connect(node)
        try:
            async for raw in ws:
                # One message at a time per connection: a node's reports apply in order.
                await self._receive(session, raw)
        except ConnectionClosed:
            pass
        finally:
            self._closed(session)
        successor = self.sessions.get(node)
        if self.on_disconnect is not None:
            self.on_disconnect(node, successor is not None)
        if successor is not None:
            # Requests may have gone out on this connection after the successor's own
            # resend; their answers died with it. Send them again (the edge answers by id).
            for message, _ in list(self.pending.get(node, {}).values()):
                await self._send(successor, message)

    def _closed(self, session: Session) -> None:
        ws = session.ws
        if self.sessions.get(session.node) is session:
            del self.sessions[session.node]
        sent = ws.protocol.close_sent
        if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:
            log.warning("node %s sent a frame larger than %d bytes: its connection was closed "
                        "(code 1009)", session.node, self.settings.max_message_bytes)
        elif sent is not None and sent.code == CLOSE_REPLACED:
            log.info("node %s: previous connection closed (replaced)", session.node)
        else:
            rcvd = ws.protocol.close_rcvd
            reason = (f"code {rcvd.code} {rcvd.reason}".strip() if rcvd else
                      f"code {sent.code} {sent.reason}".strip() if sent else "connection lost")
            log.info("node %s disconnected (%s)", session.node, reason)

    async def send_to(self, node: str, text: str) -> bool:
        session = self.sessions.get(node)
        if session is None:
            return False
        try:
            await session.ws.send(text)
            return True
        except ConnectionClosed:
            return False

    async def _send(self, session: Session, message: Message) -> None:
        with contextlib.suppress(ConnectionClosed):
            await session.ws.send(envelope.encode(message))

    async def _receive(self, session: Session, raw: str | bytes) -> None:
        node = session.node
        self.registry.last_seen[node] = self.registry.clock()
        try:
            message = envelope.decode(raw, self.settings.max_message_bytes)
        except ProtocolError as exc:
            log.warning("node %s sent a malformed message, ignored: %s", node, exc)
            return
        if message.operation == envelope.KEEPALIVE:
            await self.registry.heard(node)
            return
        if message.operation in (envelope.RESPONSE, envelope.ERROR) or message.parent_msg_id:
            waiting = self.pending.get(node, {}).pop(message.parent_msg_id, None)
            if waiting is not None and not waiting[1].done():
                waiting[1].set_result(message)
            elif self.on_ack is not None:
                try:
                    await self.on_ack(node, message)
                except Exception:  # the store failed: the record heals at the next inventory
                    log.error("node %s: recording an ack failed", node, exc_info=True)
            return
        if message.source == "servicebus" and message.operation == envelope.QUERY and \
                self.on_servicebus is not None:
            task = asyncio.create_task(self._answer_later(node, message, self.on_servicebus))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)
            return
        try:
            reply = await self._apply(node, message)
        except PermissionError as exc:
            log.warning("node %s: message refused: %s", node, exc)
            reply = message.reply(str(exc), source="cloudhub", operation=envelope.ERROR)
        except ProtocolError as exc:
            log.warning("node %s: invalid message: %s", node, exc)
            reply = message.reply(str(exc), source="cloudhub", operation=envelope.ERROR)
        except Exception:
            # The store failed (disk full, locked): no answer, so the node keeps the report
            # in its outbox and sends it again; its connection stays up.
            log.error("node %s: %s could not be stored; the node will send it again", node,
                      message.resource, exc_info=True)
            return
        await self._send(session, reply)  # after the commit: this is the ack

    async def _answer_later(self, node: str, message: Message,
                            handler: Callable[[str, Message], Awaitable[Message]]) -> None:
        try:
            reply = await handler(node, message)
        except Exception as exc:  # a bug must not leave the edge app waiting
            log.exception("node %s: answering %s failed", node, message.resource)
            reply = message.reply(f"cloudcore failed: {exc}", source="cloudhub",
                                  operation=envelope.ERROR)
        session = self.sessions.get(node)  # the current one: the asking one may be gone
        if session is not None:
            await self._send(session, reply)

    async def _apply(self, node: str, message: Message) -> Message:
        """Upstream messages about resources: ``<namespace>/<type>/<name>``."""
        parts = message.resource.split("/")
        if len(parts) != 3:
            raise ProtocolError(f"resource {message.resource!r}: expected <ns>/<type>/<name>")
        _, kind, name = parts
        if kind in ("node", "nodestatus"):
            if name != node:
                raise PermissionError(f"node {node!r} may not report about node {name!r}")
            content = message.content if isinstance(message.content, dict) else {}
            if kind == "node" and message.operation in (envelope.INSERT, envelope.UPDATE):
                await self.registry.register(node, content)
            elif kind == "nodestatus":
                status = content.get("status", content)
                await self.registry.update_status(node, status if isinstance(status, dict)
                                                  else {})
            else:
                raise ProtocolError(f"operation {message.operation!r} on {kind} not supported")
            return message.reply("OK", source="cloudhub")
        if kind == "inventory" and self.on_inventory is not None:
            if name != node:
                raise PermissionError(f"node {node!r} may not send the inventory of {name!r}")
            await self.on_inventory(node, message.content)
            return message.reply("OK", source="cloudhub")
        if kind == "upload" and self.on_upload is not None:
            if name != node:
                raise PermissionError(f"node {node!r} may not send uploads as {name!r}")
            await self.on_upload(node, message.content)  # queued in the store: then the ack
            return message.reply("OK", source="cloudhub")
        if self.on_report is not None and kind in REPORT_KINDS:
            await self.on_report(node, kind, parts[0], name, message)
            return message.reply("OK", source="cloudhub")
        raise ProtocolError(f"resource type {kind!r} is not accepted from edge nodes")

    # ------------------------------------------------------------ requests to nodes

    async def request(self, node: str, message: Message, timeout: float) -> Message:
        """Send ``message`` to ``node`` and wait for its response, resending on reconnect."""
        if node not in self.sessions:
            raise NodeUnavailable(f"node {node} is not connected")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        waiting = self.pending.setdefault(node, {})
        waiting[message.msg_id] = (message, future)
        try:
            await self._send(self.sessions[node], message)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            log.warning("node %s did not answer request %s (%s) within %gs", node,
                        message.msg_id, message.resource, timeout)
            raise
        finally:
            waiting.pop(message.msg_id, None)
            # Drop the node's table when empty, but only if it is still the current one:
            # another request may already have started a new table for this node.
            if not waiting and self.pending.get(node) is waiting:
                del self.pending[node]

    async def disconnect(self, node: str, reason: str) -> None:
        session = self.sessions.pop(node, None)
        if session is not None:
            await session.ws.close(CloseCode.POLICY_VIOLATION, reason[:120])

    def expire_sessions(self) -> None:
        """Close connections whose client certificate has expired since the handshake."""
        now = time.time()
        for node, session in list(self.sessions.items()):
            if session.identity.not_after <= now:
                log.warning("node %s: certificate %s expired during the session; closing it",
                            node, session.identity.serial)
                asyncio.get_running_loop().create_task(
                    self.disconnect(node, "client certificate expired"))
