"""EdgeHub: the node's connection to the cloud hub.

Dials ``wss://HOST:PORT/<projectID>/<node>/events`` with the node certificate,
registers the Node, sends KubeEdge keepalives and node status, answers the
cloud's queries. WebSocket pings both ways with a deadline catch half-open TCP.
Reconnects with exponential backoff and full jitter. A certificate rotation
opens the new connection before the old one closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from certs import CertError
from certs.tls import describe_tls_error
from edgecore.config import EdgeHub as EdgeHubConfig
from edgecore.metamanager import MetaManager
from edgecore.store import StoreError
from moorage import envelope
from moorage.aio import sleep_or_stop, wait_any
from moorage.backoff import full_jitter
from moorage.envelope import Message
from moorage.errors import ProtocolError

log = logging.getLogger("edgecore.edgehub")


class EdgeHub:
    def __init__(self, cfg: EdgeHubConfig, node_name: str,
                 ssl_context: Callable[[], ssl.SSLContext],
                 node_object: Callable[[], dict[str, Any]], status_period: float,
                 meta: MetaManager, preflight: Callable[[], None] = lambda: None) -> None:
        self.cfg, self.node_name, self.status_period = cfg, node_name, status_period
        self.meta = meta
        # Cloud queries by the first path segment (node proxy and logs): (path, args) ->
        # (HTTP status, body).
        self.queries: dict[str, Callable[[str, dict[str, Any]], tuple[int, str]]] = {}
        # Queries answered asynchronously, off the reading loop (the ServiceBus's calls to
        # local apps): resource node/<node>/<name> -> handler(content) -> answer content.
        self.async_queries: dict[str, Callable[[Any], Awaitable[Any]]] = {}
        self._answering: set[asyncio.Task[None]] = set()
        self.outbox_wake = asyncio.Event()
        meta.changed = self.outbox_wake.set
        self.preflight = preflight  # raises CertError when our certificate cannot work
        self.ssl_context, self.node_object = ssl_context, node_object
        self.uri = f"wss://{cfg.websocket.server}/{cfg.project_id}/{node_name}/events"
        self.ws: ClientConnection | None = None
        self.connected = asyncio.Event()
        self.waiting: dict[str, asyncio.Future[Message]] = {}
        self.connects = 0
        self._switch_lock = asyncio.Lock()

    # ------------------------------------------------------------ connecting

    async def _dial(self) -> ClientConnection:
        self.preflight()
        host = self.cfg.websocket.server.rpartition(":")[0].strip("[]")
        ws = await connect(
            self.uri, ssl=self.ssl_context(), server_hostname=host,
            additional_headers={"node_id": self.node_name, "project_id": self.cfg.project_id},
            compression=None, max_size=self.cfg.max_message_bytes, max_queue=4,
            ping_interval=self.cfg.heartbeat, ping_timeout=self.cfg.heartbeat,
            open_timeout=self.cfg.websocket.handshake_timeout,
            close_timeout=min(5.0, self.cfg.heartbeat),
            user_agent_header="moorage-edgecore",
        )
        self.connects += 1
        log.info("connected to %s as node %s", self.cfg.websocket.server, self.node_name)
        return ws

    def _explain(self, exc: BaseException) -> str:
        # websockets wraps TLS failures seen while reading the HTTP response.
        cause = exc.__cause__ or exc.__context__
        if not isinstance(exc, ssl.SSLError) and isinstance(cause, ssl.SSLError):
            exc = cause
        if isinstance(exc, CertError):
            return str(exc)
        if isinstance(exc, InvalidStatus):
            body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
            return f"the cloud refused the connection ({exc.response.status_code}): {body}"
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            return f"TLS failed: {describe_tls_error(exc)}"
        if isinstance(exc, TimeoutError):
            return "no answer in time (is the hub address right and the port open?)"
        if isinstance(exc, OSError):
            return f"cannot reach {self.cfg.websocket.server}: {exc.strerror or exc}"
        return str(exc) or type(exc).__name__

    async def run(self, stopping: asyncio.Event) -> None:
        delays = full_jitter(self.cfg.reconnect_base, self.cfg.reconnect_max)
        tasks = [asyncio.create_task(self._heartbeat(stopping)),
                 asyncio.create_task(self._report_status(stopping)),
                 asyncio.create_task(self._pump_outbox(stopping))]
        last_error = ""
        try:
            while not stopping.is_set():
                try:
                    self.ws = await self._dial()
                except (OSError, WebSocketException, TimeoutError, ssl.SSLError,
                        CertError) as exc:
                    reason = self._explain(exc)
                    delay = next(delays)
                    # Same failure again: keep the log quiet (debug) until something changes.
                    level = logging.WARNING if reason != last_error else logging.DEBUG
                    log.log(level, "connecting to the cloud failed: %s; retrying in %.1fs",
                            reason, delay)
                    last_error = reason
                    if await sleep_or_stop(delay, stopping):
                        break
                    continue
                last_error = ""
                delays = full_jitter(self.cfg.reconnect_base, self.cfg.reconnect_max)
                await self._serve_until_lost(stopping)
        finally:
            for task in tasks:
                task.cancel()
            if self.ws is not None:
                await self.ws.close()

    async def _serve_until_lost(self, stopping: asyncio.Event) -> None:
        """Serve the current connection, and any that replaces it, until none is left."""
        while self.ws is not None and not stopping.is_set():
            ws = self.ws
            self.connected.set()
            self.outbox_wake.set()
            reader = asyncio.create_task(self._read(ws))
            registered = asyncio.create_task(self._register())
            stop_wait = asyncio.create_task(stopping.wait())
            await asyncio.wait({reader, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            registered.cancel()
            if stopping.is_set():
                reader.cancel()
                return
            async with self._switch_lock:
                pass  # a rotation in flight decides whether `ws` was replaced or lost
            if self.ws is ws:  # lost, not replaced
                self.ws = None
                self.connected.clear()
                log.warning("connection to the cloud lost (%s); reconnecting", _close_reason(ws))

    async def switch(self) -> None:
        """Move to a new connection (after a certificate rotation) without a gap."""
        async with self._switch_lock:
            try:
                new = await self._dial()
            except (OSError, WebSocketException, TimeoutError, ssl.SSLError, CertError) as exc:
                log.warning("could not open a connection with the new certificate (%s); "
                            "the current one stays up", self._explain(exc))
                return
            old, self.ws = self.ws, new
            if old is not None:
                # The reader of `old` ends when it closes; _serve_until_lost moves on to `new`.
                await old.close(1000, "certificate rotated")

    # ------------------------------------------------------------ messages

    async def send(self, message: Message) -> bool:
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send(envelope.encode(message))
            return True
        except ConnectionClosed:
            return False

    async def request(self, message: Message, timeout: float) -> Message | None:
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.waiting[message.msg_id] = future
        try:
            if not await self.send(message):
                return None
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self.waiting.pop(message.msg_id, None)

    async def _register(self) -> None:
        """Register the Node on this connection, again until the cloud answers (it does not
        when its store cannot take the write); then send the inventory."""
        delays = full_jitter(self.cfg.reconnect_base, self.cfg.reconnect_max)
        while True:
            message = Message(source="edged", group=envelope.GROUP_RESOURCE,
                              operation=envelope.INSERT,
                              resource=f"default/node/{self.node_name}",
                              content=self.node_object())
            answer = await self.request(message, self.cfg.websocket.handshake_timeout)
            if answer is not None:
                break
            delay = next(delays)
            log.warning("the cloud did not acknowledge the node registration; trying again "
                        "in %.1fs", delay)
            await asyncio.sleep(delay)  # cancelled with the connection
        if answer.operation == envelope.ERROR:
            log.error("the cloud refused the node registration: %s", answer.content)
            return
        await self._send_inventory()

    async def _send_inventory(self) -> None:
        """Tell the cloud what this node holds, so it sends what is missing and deletes what
        should be gone (its own record may be older: a restored backup, a lost ack)."""
        for page in self.meta.inventory_pages():
            message = Message(source="metamanager", group=envelope.GROUP_RESOURCE,
                              operation=envelope.UPDATE,
                              resource=f"default/inventory/{self.node_name}", content=page)
            answer = await self.request(message, self.cfg.websocket.handshake_timeout)
            if answer is None or answer.operation == envelope.ERROR:
                # An older cloud does not know inventories; it syncs from its own record.
                log.info("the cloud did not take this node's inventory (%s); it syncs from "
                         "its own record", "no answer" if answer is None else answer.content)
                return

    async def _heartbeat(self, stopping: asyncio.Event) -> None:
        while not await sleep_or_stop(self.cfg.heartbeat, stopping):
            await self.send(envelope.keepalive())

    async def _report_status(self, stopping: asyncio.Event) -> None:
        while not await sleep_or_stop(self.status_period, stopping):
            try:
                self.meta.report_node_status(self.node_name, self.node_object()["status"])
            except StoreError as exc:
                log.error("node status not recorded: %s", exc)

    async def _pump_outbox(self, stopping: asyncio.Event) -> None:
        """Send reports in order, one at a time; each leaves the outbox only once the
        cloud acknowledged it after its own commit."""
        while not stopping.is_set():
            entries = self.meta.store.pending(limit=1)
            if not entries or self.ws is None:
                self.outbox_wake.clear()
                await wait_any(1.0, self.outbox_wake, stopping)
                continue
            entry = entries[0]
            answer = await self.request(
                Message(source="edged", group=envelope.GROUP_RESOURCE,
                        operation=entry.operation, resource=entry.resource,
                        content=entry.content), timeout=max(2.0, self.cfg.heartbeat * 2))
            if answer is None:
                await sleep_or_stop(0.2, stopping)  # lost or slow: send it again
                continue
            if answer.operation == envelope.ERROR:
                log.warning("the cloud refused report %s (%s): %s; dropping it", entry.seq,
                            entry.resource, answer.content)
            try:
                self.meta.store.done(entry.seq)
            except StoreError as exc:
                log.error("%s", exc)
                await sleep_or_stop(1.0, stopping)

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    message = envelope.decode(raw, self.cfg.max_message_bytes)
                except ProtocolError as exc:
                    log.warning("malformed message from the cloud ignored: %s", exc)
                    continue
                await self._dispatch(ws, message)

    async def _dispatch(self, ws: ClientConnection, message: Message) -> None:
        log.debug("received %s %s %s", message.operation, message.resource, message.msg_id)
        if message.parent_msg_id:
            future = self.waiting.get(message.parent_msg_id)
            if future is not None and not future.done():
                future.set_result(message)
            return
        if message.group == envelope.GROUP_RESOURCE and message.operation in (
                envelope.INSERT, envelope.UPDATE, envelope.DELETE):
            reply = self.meta.handle(message)  # committed before this returns
        elif message.operation == envelope.QUERY and message.resource.startswith(
                f"node/{self.node_name}/") and message.resource.split("/", 2)[2] \
                in self.async_queries:
            handler = self.async_queries[message.resource.split("/", 2)[2]]
            task = asyncio.create_task(self._answer_later(ws, message, handler))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)
            return
        elif message.operation == envelope.QUERY and message.resource.startswith(
                f"node/{self.node_name}/"):
            path = message.resource.split("/", 2)[2]
            content = message.content if isinstance(message.content, dict) else {}
            handler = self.queries.get(path.split("/", 1)[0])
            if path in ("healthz", "readyz", "livez"):
                status, body = 200, "ok"
            elif handler is not None:
                status, body = handler(path, content)
            else:
                status, body = 404, f"edgecore serves no {path!r}"
            reply = message.reply({"status": status, "body": body}, source="edgehub")
        else:
            reply = message.reply(f"unsupported: {message.operation} {message.resource}",
                                  source="edgehub", operation=envelope.ERROR)
        await self._answer(ws, reply)

    async def _answer_later(self, ws: ClientConnection, message: Message,
                            handler: Callable[[Any], Awaitable[Any]]) -> None:
        try:
            content = await handler(message.content)
        except Exception as exc:  # a bug in a handler must not leave the cloud waiting
            log.exception("answering %s failed", message.resource)
            await self._answer(ws, message.reply(f"edgecore failed: {exc}", source="edgehub",
                                                 operation=envelope.ERROR))
            return
        await self._answer(ws, message.reply(content, source="edgehub"))

    async def _answer(self, ws: ClientConnection, reply: Message) -> None:
        # Answer on the current connection: after a rotation the one the query came on
        # may already be closing.
        if not await self.send(reply):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(envelope.encode(reply))


def _close_reason(ws: ClientConnection) -> str:
    rcvd = ws.protocol.close_rcvd
    if rcvd is not None:
        return f"closed by the cloud: code {rcvd.code} {rcvd.reason}".strip()
    return "no keepalive answer in time or network error"
