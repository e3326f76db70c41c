"""The cloud<->edge message envelope (KubeEdge's beehive model) and its JSON codec."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moorage import envelope
from moorage.envelope import Message, decode, encode, keepalive
from moorage.errors import ProtocolError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)

messages = st.builds(
    Message,
    source=st.text(),
    group=st.text(),
    operation=st.text(min_size=1),
    resource=st.text(),
    content=json_values,
    msg_id=st.text(min_size=1),
    parent_msg_id=st.text(),
    timestamp=st.integers(min_value=0, max_value=2**53),
    resource_version=st.text(),
    sync=st.booleans(),
    destination=st.text(),
)


def wire(header: dict[str, Any] | None = None, route: dict[str, Any] | None = None,
         **extra: Any) -> str:
    obj: dict[str, Any] = {
        "header": {"msg_id": "m-1", "timestamp": 1} if header is None else header,
        "route": {"operation": "update"} if route is None else route,
        **extra,
    }
    return json.dumps(obj)


# ---------------------------------------------------------------- round trip


@given(messages)
def test_encode_decode_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


@given(messages)
def test_round_trip_through_bytes(message: Message) -> None:
    assert decode(encode(message).encode("utf-8")) == message


def test_kubeedge_field_names() -> None:
    message = Message(source="edged", group="resource", operation="update",
                      resource="default/pod/x", content={"a": 1}, msg_id="id-1",
                      parent_msg_id="id-0", timestamp=1700000000123, resource_version="42",
                      sync=True)
    obj = json.loads(encode(message))
    assert obj == {
        "header": {"msg_id": "id-1", "parent_msg_id": "id-0", "timestamp": 1700000000123,
                   "resourceversion": "42", "sync": True},
        "route": {"source": "edged", "group": "resource", "operation": "update",
                  "resource": "default/pod/x"},
        "content": {"a": 1},
    }


def test_optional_header_fields_are_left_out_when_empty() -> None:
    obj = json.loads(encode(Message("s", "g", "op", "r", msg_id="x", timestamp=5)))
    assert obj["header"] == {"msg_id": "x", "timestamp": 5}
    assert "destination" not in obj["route"]


def test_decode_a_kubeedge_message() -> None:
    raw = ('{"header":{"msg_id":"5c7d","parent_msg_id":"","timestamp":1700000000000,'
           '"resourceversion":"7","sync":false},"route":{"source":"edgecontroller",'
           '"group":"resource","operation":"query","resource":"default/node/n1"},'
           '"content":null}')
    message = decode(raw)
    assert message.msg_id == "5c7d"
    assert message.parent_msg_id == ""
    assert message.timestamp == 1700000000000
    assert message.resource_version == "7"
    assert message.sync is False
    assert (message.source, message.group, message.operation, message.resource) == (
        "edgecontroller", "resource", "query", "default/node/n1")
    assert message.content is None


def test_non_ascii_content_survives() -> None:
    message = Message("s", "g", "op", "r", content={"name": "Zürich ☃"}, msg_id="1")
    text = encode(message)
    assert "Zürich ☃" in text
    assert decode(text).content == {"name": "Zürich ☃"}


def test_float_timestamp_becomes_integer_milliseconds() -> None:
    assert decode(wire(header={"msg_id": "a", "timestamp": 1700000000123.9})).timestamp == (
        1700000000123)


def test_new_messages_get_unique_ids_and_a_timestamp() -> None:
    a, b = Message("s", "g", "op", "r"), Message("s", "g", "op", "r")
    assert a.msg_id and b.msg_id and a.msg_id != b.msg_id
    assert a.timestamp > 1_600_000_000_000  # milliseconds, not seconds


def test_reply_points_at_its_parent() -> None:
    request = Message("edged", "resource", "query", "default/node/n", msg_id="req-1")
    reply = request.reply({"ok": True}, source="cloudhub")
    assert reply.parent_msg_id == "req-1"
    assert reply.operation == envelope.RESPONSE
    assert (reply.group, reply.resource, reply.source) == ("resource", "default/node/n",
                                                          "cloudhub")
    assert reply.msg_id != request.msg_id
    assert request.reply().source == "edged"
    assert request.reply().content == "OK"


def test_keepalive_shape() -> None:
    obj = json.loads(encode(keepalive()))
    assert obj["route"] == {"source": "websocket", "group": "resource",
                            "operation": "keepalive", "resource": "node"}
    assert obj["content"] == "ping"
    assert obj["header"]["msg_id"]
    assert keepalive("edgehub").source == "edgehub"


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("not json", "JSON"),
        (b"\xff\xfe\x00garbage", "JSON"),
        ("", "JSON"),
        ("[1, 2]", "JSON object"),
        ('"header"', "JSON object"),
        ("null", "JSON object"),
        (json.dumps({"route": {"operation": "x"}}), "header"),
        (json.dumps({"header": [], "route": {"operation": "x"}}), "header"),
        (json.dumps({"header": {"msg_id": "a"}}), "route"),
        (json.dumps({"header": {"msg_id": "a"}, "route": "x"}), "route"),
        (wire(header={"msg_id": 5}), "header.msg_id"),
        (wire(header={"msg_id": ["a"]}), "header.msg_id"),
        (wire(header={}), "header.msg_id"),
        (wire(header={"msg_id": ""}), "header.msg_id"),
        (wire(route={}), "route.operation"),
        (wire(route={"operation": ""}), "route.operation"),
        (wire(route={"operation": 3}), "route.operation"),
        (wire(header={"msg_id": "a", "timestamp": True}), "header.timestamp"),
        (wire(header={"msg_id": "a", "timestamp": "1700000000000"}), "header.timestamp"),
        (wire(header={"msg_id": "a", "sync": "yes"}), "header.sync"),
        (wire(header={"msg_id": "a", "parent_msg_id": 1}), "header.parent_msg_id"),
        (wire(header={"msg_id": "a", "resourceversion": 7}), "header.resourceversion"),
        (wire(route={"operation": "x", "source": 1}), "route.source"),
        (wire(route={"operation": "x", "group": {}}), "route.group"),
        (wire(route={"operation": "x", "resource": False}), "route.resource"),
        (wire(route={"operation": "x", "destination": 0}), "route.destination"),
    ],
)
def test_decode_refusals_name_the_field(raw: str | bytes, field: str) -> None:
    with pytest.raises(ProtocolError, match=field.replace(".", r"\.")):
        decode(raw)


def test_oversize_is_refused_before_parsing() -> None:
    raw = wire(content="x" * 100)
    assert decode(raw, max_bytes=len(raw)).operation == "update"
    with pytest.raises(ProtocolError, match="limit"):
        decode(raw, max_bytes=len(raw) - 1)
    with pytest.raises(ProtocolError, match="limit"):
        decode(raw.encode(), max_bytes=len(raw) - 1)


def test_default_limit() -> None:
    with pytest.raises(ProtocolError, match="limit"):
        decode(" " * (envelope.DEFAULT_MAX_MESSAGE_BYTES + 1))


def test_nulls_fall_back_to_defaults() -> None:
    message = decode(wire(header={"msg_id": "a", "parent_msg_id": None, "sync": None},
                          route={"operation": "x", "source": None}))
    assert (message.timestamp, message.parent_msg_id, message.sync, message.source) == (
        0, "", False, "")


# ---------------------------------------------------------------- fuzzing


def decode_only_protocol_errors(data: str | bytes) -> None:
    try:
        message = decode(data)
    except ProtocolError:
        return
    assert isinstance(message, Message)
    assert message.msg_id and message.operation


@given(st.text())
def test_arbitrary_text_raises_only_protocol_error(text: str) -> None:
    decode_only_protocol_errors(text)


@given(st.binary())
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    decode_only_protocol_errors(data)


@given(st.dictionaries(st.sampled_from(["header", "route", "content", "x"]),
                       st.dictionaries(st.sampled_from(
                           ["msg_id", "timestamp", "sync", "operation", "source",
                            "parent_msg_id", "resourceversion", "group", "resource"]),
                           json_values) | json_values))
def test_arbitrary_envelope_shaped_json_raises_only_protocol_error(obj: dict[str, Any]) -> None:
    decode_only_protocol_errors(json.dumps(obj))


@pytest.mark.parametrize("timestamp", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_non_finite_timestamp_is_a_protocol_error(timestamp: str) -> None:
    # Python's json accepts these non-standard literals; a peer can send them. The codec
    # refuses NaN/Infinity as JSON and an out-of-range number as a timestamp.
    raw = '{"header":{"msg_id":"a","timestamp":' + timestamp + '},"route":{"operation":"x"}}'
    with pytest.raises(ProtocolError, match=r"timestamp|not valid JSON"):
        decode(raw)


def test_deeply_nested_content_is_a_protocol_error() -> None:
    # Well under the 4 MiB limit, but deeper than the JSON decoder's recursion limit.
    depth = 100_000
    raw = ('{"header":{"msg_id":"a"},"route":{"operation":"x"},"content":'
           + "[" * depth + "]" * depth + "}")
    assert len(raw) < envelope.DEFAULT_MAX_MESSAGE_BYTES
    with pytest.raises(ProtocolError):
        decode(raw)
