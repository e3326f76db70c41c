"""EventBus: the edge's MQTT client of a broker on this machine (mosquitto), on KubeEdge's topics.

Apps on the node talk to their devices through the broker:

- an app sets a device property on ``$hw/events/device/<ns>/<name>/twin/update``; the bus
  parses it and hands ``{property: value}`` to ``on_twin_update``. A malformed update is
  answered on ``.../twin/update/result`` with code 400 and a reason, and nothing else happens;
- the bus publishes ``.../twin/update/document`` and ``.../twin/update/delta`` (built by the
  pure helpers below) through :meth:`EventBus.publish`;
- anything on ``$hw/events/upload/#`` is handed to ``on_upload`` as raw bytes.

The pure helpers (topics, payloads, parsing) do no I/O and never raise anything but
:class:`EventBusError` on bad input. :class:`EventBus` is the asyncio shell around them: it
connects with aiomqtt (MQTT 5, so the broker itself drops messages far over
``maxMessageBytes`` instead of sending them to us), subscribes, dispatches, and reconnects
with full-jitter backoff. Messages published while the broker is away wait in a bounded
queue (the newest are kept) and go out after the next connect, at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from certs import CertError
from certs.tls import client_context, describe_tls_error
from edgecore.config import EventBus as EventBusConfig
from moorage.aio import sleep_or_stop
from moorage.backoff import full_jitter
from moorage.ratelimit import TokenBucket

log = logging.getLogger("edgecore.eventbus")

DEVICE_PREFIX = "$hw/events/device/"
UPLOAD_PREFIX = "$hw/events/upload/"
UPLOAD_FILTER = "$hw/events/upload/#"
TWIN_UPDATE_FILTER = "$hw/events/device/+/+/twin/update"
TWIN_UPDATE = "twin/update"

MAX_TOPIC_CHARS = 1024
MAX_NAMESPACE_CHARS = 63    # a Kubernetes namespace is a DNS label
MAX_NAME_CHARS = 253        # a device name is a DNS subdomain
# Room for the fixed header, topic and MQTT 5 properties on top of the payload limit.
PACKET_HEADROOM = 4 * MAX_TOPIC_CHARS + 64
OUTBOX_SIZE = 1000
HEAD_ATTEMPTS = 3           # sessions a queued message may fail in before it is dropped

_FORBIDDEN_IN_SEGMENT = frozenset("+#/\x00")


class EventBusError(ValueError):
    """A topic or payload the event bus cannot use; the message says what was expected.

    ``event_id`` is the offending update's own event id when it could be read, so the error
    result can be matched to the request by the app."""

    def __init__(self, message: str, event_id: str = "") -> None:
        super().__init__(message)
        self.event_id = event_id


# --------------------------------------------------------------------------- topics


def _check_segment(value: str, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise EventBusError(f"{what}: expected a non-empty name, got {value!r}")
    if len(value) > limit:
        raise EventBusError(f"{what}: {len(value)} characters, at most {limit} allowed")
    if _FORBIDDEN_IN_SEGMENT.intersection(value):
        raise EventBusError(f"{what} {value!r}: '/', '+', '#' and NUL cannot be in a topic "
                            "segment")
    return value


def device_topic(namespace: str, name: str, rest: str) -> str:
    """``$hw/events/device/<ns>/<name>/<rest>``; rejects names that would change the topic's
    shape (a ``/`` or a wildcard in them)."""
    _check_segment(namespace, "namespace", MAX_NAMESPACE_CHARS)
    _check_segment(name, "device name", MAX_NAME_CHARS)
    return f"{DEVICE_PREFIX}{namespace}/{name}/{rest}"


def twin_update_topic(namespace: str, name: str) -> str:
    return device_topic(namespace, name, TWIN_UPDATE)


def twin_document_topic(namespace: str, name: str) -> str:
    return device_topic(namespace, name, "twin/update/document")


def twin_delta_topic(namespace: str, name: str) -> str:
    return device_topic(namespace, name, "twin/update/delta")


def twin_update_result_topic(namespace: str, name: str) -> str:
    return device_topic(namespace, name, "twin/update/result")


def parse_device_topic(topic: str) -> tuple[str, str, str] | None:
    """``(namespace, name, rest)`` of ``$hw/events/device/<ns>/<name>/<rest...>``, or None
    when the topic is anything else: another prefix, an empty segment, a wildcard, or
    longer than :data:`MAX_TOPIC_CHARS`."""
    if (not isinstance(topic, str) or len(topic) > MAX_TOPIC_CHARS
            or not topic.startswith(DEVICE_PREFIX)):
        return None
    parts = topic[len(DEVICE_PREFIX):].split("/")
    if len(parts) < 3:
        return None
    limits = [MAX_NAMESPACE_CHARS, MAX_NAME_CHARS] + [MAX_TOPIC_CHARS] * (len(parts) - 2)
    for part, limit in zip(parts, limits, strict=True):
        if not part or len(part) > limit or _FORBIDDEN_IN_SEGMENT.intersection(part):
            return None
    return parts[0], parts[1], "/".join(parts[2:])


def check_publish_topic(topic: str) -> str:
    if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_CHARS:
        raise EventBusError(f"topic: expected 1 to {MAX_TOPIC_CHARS} characters, got "
                            f"{topic!r:.80}")
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise EventBusError(f"topic {topic!r:.80}: wildcards and NUL cannot be published to")
    return topic


# --------------------------------------------------------------------------- payloads


def now_ms() -> int:
    return int(time.time() * 1000)


def _twin_value(side: Any, timestamp: int) -> dict[str, Any] | None:
    """One side (expected or actual) of a twin in KubeEdge's shape, or None when absent."""
    if side is None:
        return None
    if isinstance(side, Mapping):
        if side.get("value") is None:
            return None
        value = side["value"]
        metadata = side.get("metadata")
        stamp = metadata.get("timestamp") if isinstance(metadata, Mapping) else None
        if not isinstance(stamp, int) or isinstance(stamp, bool):
            stamp = timestamp
    else:  # a bare value
        value, stamp = side, timestamp
    return {"value": _scalar_text(value, "value"), "metadata": {"timestamp": stamp}}


def twin(expected: Any = None, actual: Any = None, timestamp: int | None = None
         ) -> dict[str, Any]:
    """A twin ``{"expected": {"value", "metadata": {"timestamp"}}, "actual": {...}}``;
    a side that is None is left out. Sides may be bare values or already in that shape."""
    stamp = now_ms() if timestamp is None else timestamp
    result: dict[str, Any] = {}
    for key, side in (("expected", expected), ("actual", actual)):
        value = _twin_value(side, stamp)
        if value is not None:
            result[key] = value
    return result


def _normalize(twins: Mapping[str, Mapping[str, Any]], timestamp: int
               ) -> dict[str, dict[str, Any]]:
    return {prop: twin(t.get("expected"), t.get("actual"), timestamp)
            for prop, t in twins.items()}


def twin_document(previous: Mapping[str, Mapping[str, Any]],
                  current: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """KubeEdge's ``twin/update/document`` payload: for every property, its twin before
    (``last``, null when it is new) and after (``current``, null when it was removed)."""
    stamp = now_ms()
    last, now = _normalize(previous, stamp), _normalize(current, stamp)
    return {
        "event_id": str(uuid.uuid4()),
        "timestamp": stamp,
        "twin": {prop: {"last": last.get(prop), "current": now.get(prop)}
                 for prop in sorted(last.keys() | now.keys())},
    }


def twin_delta(current: Mapping[str, Mapping[str, Any]], delta: Mapping[str, str]
               ) -> dict[str, Any]:
    """KubeEdge's ``twin/update/delta`` payload: the twins, and the desired value of each
    property whose actual value differs from it."""
    stamp = now_ms()
    return {
        "event_id": str(uuid.uuid4()),
        "timestamp": stamp,
        "twin": _normalize(current, stamp),
        "delta": {prop: _scalar_text(value, f"delta.{prop}") for prop, value in delta.items()},
    }


def twin_update_error(reason: str, event_id: str = "", code: int = 400) -> dict[str, Any]:
    """The ``twin/update/result`` answer to an update that was not applied."""
    return {"event_id": event_id or str(uuid.uuid4()), "timestamp": now_ms(), "code": code,
            "reason": reason}


def _scalar_text(value: Any, where: str) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise EventBusError(f"{where}: expected a string, number or boolean, got "
                        f"{type(value).__name__}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_twin_update(payload: bytes, max_bytes: int) -> dict[str, str]:
    """Parse an app's twin update into ``{property: actual value as a string}``.

    Expected: ``{"event_id": "...", "timestamp": 0, "twin": {"<prop>": {"actual":
    {"value": "23.5"}, "metadata": {"type": "Updated"}}}}``. Raises :class:`EventBusError`,
    and nothing else, for anything that is not that.
    """
    if len(payload) > max_bytes:
        raise EventBusError(f"update of {len(payload)} bytes is over the {max_bytes} byte "
                            "limit (modules.eventBus.maxMessageBytes)")
    try:
        doc = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise EventBusError(f"update is not valid UTF-8 JSON ({str(exc)[:120]}); expected "
                            '{"event_id": "...", "twin": {"<property>": {"actual": '
                            '{"value": "..."}}}}') from None
    if not isinstance(doc, dict):
        raise EventBusError(f"update is a JSON {type(doc).__name__}, expected an object like "
                            '{"event_id": "...", "twin": {...}}')
    event_id = doc.get("event_id")
    event_id = event_id[:128] if isinstance(event_id, str) else ""
    twins = doc.get("twin")
    if not isinstance(twins, dict) or not twins:
        raise EventBusError('update has no "twin" object with properties; expected "twin": '
                            '{"<property>": {"actual": {"value": "..."}}}', event_id)
    values: dict[str, str] = {}
    for prop, entry in twins.items():
        name = prop[:80]
        actual = entry.get("actual") if isinstance(entry, dict) else None
        if not prop or not isinstance(actual, dict) or actual.get("value") is None:
            raise EventBusError(f'property {name!r}: expected {{"actual": {{"value": ...}}}}',
                                event_id)
        try:
            values[prop] = _scalar_text(actual["value"], f"property {name!r}: actual.value")
        except EventBusError as exc:
            raise EventBusError(str(exc), event_id) from None
    return values


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def broker_address(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of ``tcp://HOST:PORT`` or ``ssl://HOST:PORT`` (checked by the
    config already)."""
    scheme, _, rest = url.partition("://")
    host, _, port = rest.rstrip("/").rpartition(":")
    return host.strip("[]"), int(port), scheme in ("ssl", "tls")


# --------------------------------------------------------------------------- the bus


class _PahoLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """paho logs every failed socket read at ERROR; the run loop reports failures itself,
    once, so those go to debug. The last one is kept: it is often the only place the real
    reason of a failed connect shows up (a TLS alert that arrives after the handshake)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.last_error = ""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR:
            with contextlib.suppress(Exception):
                self.last_error = str(msg) % args if args else str(msg)
            level = logging.DEBUG
        self.logger.log(level, msg, *args, **kwargs)


def _fail_connect(client: Any, reason: str) -> None:
    # A cancelled aiomqtt connect breaks its callbacks; failing its wait for CONNACK is what a
    # refused CONNACK does, and lets the connect end on its own.
    from aiomqtt import MqttError

    waiter = getattr(client, "_connected", None)
    if isinstance(waiter, asyncio.Future) and not waiter.done():
        waiter.set_exception(MqttError(reason))


def _settle(connecting: asyncio.Future[Any], client: Any) -> None:
    # A connect given up on (we were cancelled meanwhile): collect its error, free its socket.
    if not connecting.cancelled():
        connecting.exception()
    _release(client)


def _release(client: Any) -> None:
    # aiomqtt leaves the socket of a failed connect open, with a task polling it; paho's
    # disconnect closes both.
    with contextlib.suppress(Exception):
        client._client.disconnect()


class EventBus:
    """An MQTT client on KubeEdge's ``$hw/events/...`` topics; see the module docstring."""

    def __init__(self, cfg: EventBusConfig, node_name: str,
                 on_twin_update: Callable[[str, str, dict[str, Any]], None],
                 on_upload: Callable[[str, bytes], None]) -> None:
        self.cfg, self.node_name = cfg, node_name
        self.on_twin_update, self.on_upload = on_twin_update, on_upload
        self.host, self.port, self.use_tls = broker_address(cfg.mqtt_server_external)
        self.use_tls = self.use_tls or cfg.tls.enable
        self.address = f"{self.host}:{self.port}"
        self.connected = asyncio.Event()
        self.timeout = 10.0        # deadline for CONNACK, SUBACK and PUBACK, in seconds
        self.keepalive = 30
        self.attempts = 0          # connection attempts so far
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._in_flight: tuple[str, bytes] | None = None
        self._head_failures = 0
        self._bad_input_log = TokenBucket(rate_per_second=1.0, burst=10.0)

    # ------------------------------------------------------------ publishing

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Queue ``payload`` as JSON for ``topic``; never blocks. While the broker is away
        the newest :data:`OUTBOX_SIZE` messages are kept. Raises :class:`EventBusError` for
        a topic that cannot be published to or a payload that is not JSON."""
        check_publish_topic(topic)
        try:
            data = encode(payload)
        except (TypeError, ValueError) as exc:
            raise EventBusError(f"payload for {topic}: not JSON ({exc})") from None
        if len(data) > self.cfg.max_message_bytes:
            log.warning("not publishing %d bytes to %s: over the %d byte limit "
                        "(modules.eventBus.maxMessageBytes)", len(data), topic,
                        self.cfg.max_message_bytes)
            return
        if len(self._outbox) >= OUTBOX_SIZE:
            dropped, _ = self._outbox.popleft()
            self._head_failures = 0
            log.debug("event bus queue full (%d messages): dropped the oldest, for %s",
                      OUTBOX_SIZE, dropped)
        self._outbox.append((topic, data))
        self._wake.set()

    @property
    def queued(self) -> int:
        """Messages waiting to be sent."""
        return len(self._outbox)

    async def _send_queued(self, client: Any) -> None:
        while True:
            while self._outbox:
                item = self._in_flight = self._outbox[0]
                # Off the queue only once the broker has it: a message in flight when the
                # connection drops goes out again after the reconnect (at least once).
                await client.publish(item[0], item[1], qos=self.cfg.mqtt_qos,
                                     retain=self.cfg.mqtt_retain)
                self._in_flight = None
                self._head_failures = 0
                if self._outbox and self._outbox[0] is item:
                    self._outbox.popleft()
            self._wake.clear()
            if not self._outbox:
                await self._wake.wait()

    def _count_head_failure(self) -> None:
        # A message the broker will never take (too big for it, say) would hold the queue
        # forever, the connection dropping at each try: give it a few sessions, then drop it.
        item, self._in_flight = self._in_flight, None
        if item is None or not self._outbox or self._outbox[0] is not item:
            return
        self._head_failures += 1
        if self._head_failures >= HEAD_ATTEMPTS:
            self._outbox.popleft()
            self._head_failures = 0
            log.warning("dropped a message of %d bytes for %s: the connection was lost while "
                        "sending it %d times in a row", len(item[1]), item[0], HEAD_ATTEMPTS)

    # ------------------------------------------------------------ receiving

    def dispatch(self, topic: str, payload: bytes) -> None:
        """Handle one received message; never raises."""
        if topic.startswith(UPLOAD_PREFIX):
            if len(payload) > self.cfg.max_message_bytes:
                self._bad_input(topic, f"{len(payload)} bytes, over the "
                                f"{self.cfg.max_message_bytes} byte limit; dropped")
                return
            self._call(topic, self.on_upload, topic, payload)
            return
        device = parse_device_topic(topic)
        if device is None or device[2] != TWIN_UPDATE:
            log.debug("ignoring a message on %r: not a topic of the event bus", topic[:200])
            return
        namespace, name, _ = device
        try:
            values = parse_twin_update(payload, self.cfg.max_message_bytes)
        except EventBusError as exc:
            self._bad_input(topic, f"{exc}; answered with code 400")
            self.publish(twin_update_result_topic(namespace, name),
                         twin_update_error(str(exc), exc.event_id))
            return
        self._call(topic, self.on_twin_update, namespace, name, values)

    def _bad_input(self, topic: str, problem: str) -> None:
        # An app stuck in a loop must not flood the log: past a burst, the rest is debug.
        level = logging.WARNING if self._bad_input_log.allow() else logging.DEBUG
        log.log(level, "bad message on %s: %s", topic[:200], problem)

    @staticmethod
    def _call(topic: str, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("handling a message on %s failed; the event bus carries on",
                          topic[:200])

    async def _receive(self, client: Any) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = b"" if payload is None else str(payload).encode()
            self.dispatch(str(message.topic), bytes(payload))

    # ------------------------------------------------------------ connecting

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.cfg.tls
        ctx = client_context(ca_file=tls.tls_mqtt_ca_file or None,
                             cert_file=tls.tls_mqtt_cert_file or None,
                             key_file=tls.tls_mqtt_private_key_file or None)
        if not tls.tls_mqtt_ca_file:
            ctx.load_default_certs()  # no CA given: trust the system's
        return ctx

    def _client(self, paho_log: _PahoLog) -> Any:
        import aiomqtt  # here, not at module import: edgecore loads it only when enabled
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        # The broker drops what we would refuse anyway, instead of sending it to us.
        properties.MaximumPacketSize = min(self.cfg.max_message_bytes + PACKET_HEADROOM,
                                           268_435_455)
        return aiomqtt.Client(
            self.host, self.port, identifier=f"eventbus-{self.node_name}-{secrets.token_hex(3)}",
            logger=paho_log,  # type: ignore[arg-type]
            protocol=aiomqtt.ProtocolVersion.V5, properties=properties,
            timeout=self.timeout, keepalive=self.keepalive,
            max_queued_incoming_messages=OUTBOX_SIZE,
            tls_context=self._tls_context() if self.use_tls else None)

    def explain(self, exc: BaseException, paho_error: str = "") -> str:
        """A failed connect as a sentence that says what to do."""
        from aiomqtt.exceptions import MqttConnectError

        has_cert = bool(self.cfg.tls.enable and self.cfg.tls.tls_mqtt_cert_file)
        cause = exc.__context__ if exc.__context__ is not None else exc
        seen = f"{paho_error} {cause}".upper()
        if isinstance(cause, CertError):
            return f"{cause} (modules.eventBus.tls)"
        if "CERTIFICATE_REQUIRED" in seen or "CERTIFICATE REQUIRED" in seen or (
                self.use_tls and not has_cert and isinstance(cause, TimeoutError)):
            # With TLS 1.3 the broker's refusal comes after our side of the handshake is
            # done, so aiomqtt only sees no CONNACK: a timeout.
            detail = paho_error or f"no answer to the MQTT handshake within {self.timeout:g}s"
            return ("the broker may require a client certificate: set modules.eventBus.tls "
                    f"(enable, tlsMqttCAFile, tlsMqttCertFile, tlsMqttPrivateKeyFile) ({detail})")
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return f"TLS failed: {describe_tls_error(cause)} (modules.eventBus.tls)"
        if isinstance(cause, TimeoutError):
            hint = ("does the broker accept our client certificate?" if self.use_tls else
                    "if it is a TLS listener, use ssl://HOST:PORT and set modules.eventBus.tls")
            detail = f"; {paho_error}" if paho_error else ""
            return f"no answer to the MQTT handshake within {self.timeout:g}s ({hint}){detail}"
        if isinstance(exc, MqttConnectError):
            return f"the broker refused the connection: {exc}"
        if isinstance(cause, OSError):
            return cause.strerror or str(cause)
        return str(exc) or type(exc).__name__

    @staticmethod
    def _unreachable(exc: BaseException) -> bool:
        return isinstance(exc.__context__ or exc, ConnectionRefusedError)

    async def _connect(self, client: Any, stopping: asyncio.Event) -> None:
        from aiomqtt import MqttError

        connecting = asyncio.ensure_future(client.__aenter__())
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({connecting, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not connecting.done():
                _fail_connect(client, "stopping")
                connecting.add_done_callback(lambda done: _settle(done, client))
        try:
            await connecting
            if stopping.is_set():
                raise MqttError("stopping")
            await self._subscribe(client)
        except BaseException:
            _release(client)
            raise

    async def _subscribe(self, client: Any) -> None:
        qos = self.cfg.mqtt_qos
        codes = await client.subscribe([(UPLOAD_FILTER, qos), (TWIN_UPDATE_FILTER, qos)])
        refused = [str(code) for code in codes if int(getattr(code, "value", code)) >= 0x80]
        if refused:
            from aiomqtt import MqttError

            raise MqttError(f"the broker refused our subscriptions ({', '.join(refused)}): "
                            "check its ACL for $hw/events/#")

    async def _close(self, client: Any) -> None:
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)
        _release(client)
        # Why the connection ended is logged already; unread, asyncio would log it again.
        ended = getattr(client, "_disconnected", None)
        if isinstance(ended, asyncio.Future) and ended.done() and not ended.cancelled():
            ended.exception()

    async def run(self, stopping: asyncio.Event) -> None:
        """Connect, subscribe, dispatch and publish until ``stopping`` is set; reconnect with
        full-jitter backoff (capped at ``reconnectMax``) whenever the broker goes away."""
        from aiomqtt import MqttError

        def backoff() -> Iterator[float]:
            return full_jitter(min(0.5, self.cfg.reconnect_max), self.cfg.reconnect_max)

        delays = backoff()
        last_problem, failures = "", 0
        try:
            while not stopping.is_set():
                self.attempts += 1
                paho_log = _PahoLog(logging.getLogger("edgecore.eventbus.mqtt"))
                try:
                    client = self._client(paho_log)
                    await self._connect(client, stopping)
                except (MqttError, CertError, OSError) as exc:
                    if stopping.is_set():
                        return
                    problem, delay = self.explain(exc, paho_log.last_error), next(delays)
                    failures += 1
                    if problem != last_problem:  # say it once; the repeats go to debug
                        what = (f"no MQTT broker at {self.address} (is mosquitto running?)"
                                if self._unreachable(exc) else
                                f"cannot connect to the MQTT broker at {self.address}")
                        log.warning("%s: %s; retrying quietly with backoff", what, problem)
                    else:
                        log.debug("still cannot connect to the MQTT broker at %s: %s; "
                                  "retrying in %.1fs", self.address, problem, delay)
                    last_problem = problem
                    if await sleep_or_stop(delay, stopping):
                        return
                    continue
                log.info("connected to the MQTT broker at %s%s", self.address,
                         f" after {failures} failed attempts" if failures else "")
                last_problem, failures, delays = "", 0, backoff()
                try:
                    lost = await self._serve(client, stopping)
                finally:
                    await self._close(client)
                if lost is not None:
                    log.warning("connection to the MQTT broker at %s lost (%s); reconnecting",
                                self.address, lost)
                    if await sleep_or_stop(next(delays), stopping):
                        return
        finally:
            self.connected.clear()

    async def _serve(self, client: Any, stopping: asyncio.Event) -> str | None:
        """Run one connection; returns why it was lost, or None when stopping."""
        receiver = asyncio.create_task(self._receive(client))
        sender = asyncio.create_task(self._send_queued(client))
        stop = asyncio.create_task(stopping.wait())
        self.connected.set()
        try:
            await asyncio.wait({receiver, sender, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.connected.clear()
            await _cancel({receiver, sender, stop})
        if stopping.is_set():
            self._in_flight = None
            return None
        self._count_head_failure()
        for task in (receiver, sender):
            if task.done() and not task.cancelled() and task.exception() is not None:
                return _reason(task.exception())
        return "the broker closed the connection"


async def _cancel(tasks: set[asyncio.Task[Any]]) -> None:
    # Python 3.11's wait_for drops a cancellation that lands as its inner future completes
    # (aiomqtt waits for PUBACK with it): cancel again until every task has ended.
    pending = tasks
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    cause = exc.__cause__
    if "message iteration" in str(exc):  # aiomqtt's words for "the connection went away"
        return f"the connection closed: {cause}" if cause is not None else "the connection closed"
    return f"{exc}: {cause}" if cause is not None and str(cause) else str(exc)
