"""The cloud<->edge message envelope (KubeEdge's beehive model), and its JSON codec.

One message per WebSocket text frame::

    {"header": {"msg_id", "parent_msg_id", "timestamp", "resourceversion", "sync"},
     "route":  {"source", "group", "operation", "resource"},
     "content": <any JSON>}

Decoding never trusts the peer: size, JSON shape and field types are checked
and every problem raises :class:`ProtocolError` naming the field.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from moorage.errors import ProtocolError

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# Operations (KubeEdge's names).
INSERT, UPDATE, DELETE, QUERY, PATCH = "insert", "update", "delete", "query", "patch"
UPLOAD, RESPONSE, ERROR, KEEPALIVE = "upload", "response", "error", "keepalive"

# Groups.
GROUP_RESOURCE, GROUP_HUB, GROUP_USER = "resource", "hub", "user"


def _new_id() -> str:
    return str(uuid.uuid4())


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Message:
    source: str
    group: str
    operation: str
    resource: str
    content: Any = None
    msg_id: str = field(default_factory=_new_id)
    parent_msg_id: str = ""
    timestamp: int = field(default_factory=_now_ms)
    resource_version: str = ""
    sync: bool = False
    destination: str = ""

    def reply(self, content: Any = "OK", *, source: str = "", operation: str = RESPONSE) -> Message:
        """A response (an ack) to this message, KubeEdge-style: ``parent_msg_id`` is our id."""
        return Message(
            source=source or self.source,
            group=self.group,
            operation=operation,
            resource=self.resource,
            content=content,
            parent_msg_id=self.msg_id,
        )

    def to_dict(self) -> dict[str, Any]:
        header: dict[str, Any] = {"msg_id": self.msg_id, "timestamp": self.timestamp}
        if self.parent_msg_id:
            header["parent_msg_id"] = self.parent_msg_id
        if self.resource_version:
            header["resourceversion"] = self.resource_version
        if self.sync:
            header["sync"] = True
        route = {"source": self.source, "group": self.group, "operation": self.operation,
                 "resource": self.resource}
        if self.destination:
            route["destination"] = self.destination
        return {"header": header, "route": route, "content": self.content}


def encode(message: Message) -> str:
    return json.dumps(message.to_dict(), separators=(",", ":"), ensure_ascii=False)


def _field(obj: dict[str, Any], name: str, kind: type, where: str, default: Any) -> Any:
    value = obj.get(name, default)
    if value is None:
        return default
    if kind is int and isinstance(value, bool):
        raise ProtocolError(f"{where}.{name}: expected an integer, got a boolean")
    if not isinstance(value, kind):
        raise ProtocolError(f"{where}.{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


MAX_TIMESTAMP_MS = 2**63 - 1  # KubeEdge sends an int64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode(data: str | bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError("message is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message must be a JSON object with header, route and content")
    header, route = obj.get("header"), obj.get("route")
    if not isinstance(header, dict):
        raise ProtocolError("header: missing or not an object")
    if not isinstance(route, dict):
        raise ProtocolError("route: missing or not an object")
    msg_id = _field(header, "msg_id", str, "header", "")
    if not msg_id:
        raise ProtocolError("header.msg_id: required")
    operation = _field(route, "operation", str, "route", "")
    if not operation:
        raise ProtocolError("route.operation: required")
    timestamp = header.get("timestamp", 0)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float) or \
            not math.isfinite(timestamp) or abs(timestamp) > MAX_TIMESTAMP_MS:
        raise ProtocolError("header.timestamp: expected milliseconds since the epoch")
    return Message(
        source=_field(route, "source", str, "route", ""),
        group=_field(route, "group", str, "route", ""),
        operation=operation,
        resource=_field(route, "resource", str, "route", ""),
        destination=_field(route, "destination", str, "route", ""),
        content=obj.get("content"),
        msg_id=msg_id,
        parent_msg_id=_field(header, "parent_msg_id", str, "header", ""),
        timestamp=int(timestamp),
        resource_version=_field(header, "resourceversion", str, "header", ""),
        sync=_field(header, "sync", bool, "header", False),
    )


def keepalive(source: str = "websocket") -> Message:
    """The edge's heartbeat, as KubeEdge's edgehub sends it."""
    return Message(source=source, group=GROUP_RESOURCE, operation=KEEPALIVE, resource="node",
                   content="ping")
