"""The event bus's pure helpers: KubeEdge's device topics and twin payloads, and the parsing of
apps' twin updates (fuzzed: bad input only ever raises EventBusError)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecore.config import EventBus as EventBusConfig
from edgecore.eventbus import (
    OUTBOX_SIZE,
    EventBus,
    EventBusError,
    broker_address,
    parse_device_topic,
    parse_twin_update,
    twin,
    twin_delta,
    twin_delta_topic,
    twin_document,
    twin_document_topic,
    twin_update_error,
    twin_update_result_topic,
    twin_update_topic,
)

LIMIT = 1024 * 1024


def update(twins: Any, **extra: Any) -> bytes:
    return json.dumps({"event_id": "e-1", "timestamp": 0, "twin": twins, **extra}).encode()


class TestTopics:
    def test_builders_follow_kubeedge_since_v1_16(self) -> None:
        assert twin_document_topic("default", "thermo") == \
            "$hw/events/device/default/thermo/twin/update/document"
        assert twin_delta_topic("ns", "d") == "$hw/events/device/ns/d/twin/update/delta"
        assert twin_update_result_topic("ns", "d") == "$hw/events/device/ns/d/twin/update/result"
        assert twin_update_topic("ns", "d") == "$hw/events/device/ns/d/twin/update"

    @pytest.mark.parametrize("namespace, name", [("", "d"), ("ns", ""), ("a/b", "d"),
                                                 ("ns", "d+"), ("ns", "#"), ("x" * 64, "d"),
                                                 ("ns", "d" * 254)])
    def test_builders_refuse_names_that_change_the_topic(self, namespace: str,
                                                          name: str) -> None:
        with pytest.raises(EventBusError):
            twin_document_topic(namespace, name)

    def test_parse_device_topic(self) -> None:
        assert parse_device_topic("$hw/events/device/default/thermo/twin/update") == \
            ("default", "thermo", "twin/update")
        assert parse_device_topic("$hw/events/device/ns/d/twin/update/result") == \
            ("ns", "d", "twin/update/result")

    @pytest.mark.parametrize("topic", [
        "$hw/events/device/ns/d",                  # no rest
        "$hw/events/device//d/twin/update",        # empty namespace
        "$hw/events/device/ns//twin/update",       # empty name
        "$hw/events/device/ns/d/twin//update",     # empty segment in the rest
        "$hw/events/device/ns/d/twin/update/",     # trailing slash
        "$hw/events/device/+/+/twin/update",       # wildcards
        "$hw/events/device/ns/d/twin/#",
        "$hw/events/upload/x",                     # another prefix
        "hw/events/device/ns/d/twin/update",
        "$hw/events/device/ns/d/" + "x" * 1100,    # too long
        "$hw/events/device/" + "n" * 64 + "/d/twin/update",
    ])
    def test_parse_device_topic_is_strict(self, topic: str) -> None:
        assert parse_device_topic(topic) is None

    @given(st.text(max_size=300))
    def test_parse_device_topic_fuzz(self, topic: str) -> None:
        found = parse_device_topic(topic)
        if found is not None:
            namespace, name, rest = found
            assert all(p and "+" not in p and "#" not in p for p in (namespace, name))
            assert "/".join(("$hw/events/device", namespace, name, rest)) == topic

    @given(st.lists(st.text(alphabet=st.characters(blacklist_characters="/+#\x00"),
                            min_size=1, max_size=20), min_size=3, max_size=6))
    def test_parse_device_topic_round_trip(self, parts: list[str]) -> None:
        topic = "$hw/events/device/" + "/".join(parts)
        assert parse_device_topic(topic) == (parts[0], parts[1], "/".join(parts[2:]))

    def test_broker_address(self) -> None:
        assert broker_address("tcp://127.0.0.1:1883") == ("127.0.0.1", 1883, False)
        assert broker_address("ssl://broker.local:8883/") == ("broker.local", 8883, True)
        assert broker_address("tcp://[::1]:1883") == ("::1", 1883, False)


class TestPayloads:
    def test_twin_omits_absent_sides(self) -> None:
        assert twin(actual="23.5", timestamp=7) == \
            {"actual": {"value": "23.5", "metadata": {"timestamp": 7}}}
        assert twin(expected=25, actual=None, timestamp=7) == \
            {"expected": {"value": "25", "metadata": {"timestamp": 7}}}
        assert twin(expected=True, timestamp=1)["expected"]["value"] == "true"

    def test_document_has_last_and_current(self) -> None:
        before = {"temp": twin(expected="20", actual="19.5", timestamp=1)}
        after = {"temp": twin(expected="22", actual="19.5", timestamp=2),
                 "mode": twin(actual="auto", timestamp=2)}
        doc = twin_document(before, after)
        uuid.UUID(doc["event_id"])
        assert isinstance(doc["timestamp"], int) and doc["timestamp"] > 1_600_000_000_000
        assert doc["twin"]["temp"] == {"last": before["temp"], "current": after["temp"]}
        assert doc["twin"]["mode"] == {"last": None, "current": after["mode"]}
        assert doc["twin"]["temp"]["current"] == {
            "expected": {"value": "22", "metadata": {"timestamp": 2}},
            "actual": {"value": "19.5", "metadata": {"timestamp": 2}}}
        json.dumps(doc)  # it goes on the wire as is

    def test_document_of_a_removed_property(self) -> None:
        doc = twin_document({"gone": twin(actual="1", timestamp=1)}, {})
        assert doc["twin"]["gone"]["current"] is None

    def test_delta(self) -> None:
        current = {"temp": twin(expected="22", actual="19.5", timestamp=2)}
        delta = twin_delta(current, {"temp": "22"})
        assert set(delta) == {"event_id", "timestamp", "twin", "delta"}
        assert delta["twin"] == current and delta["delta"] == {"temp": "22"}

    def test_error_result(self) -> None:
        result = twin_update_error("bad", "e-9")
        assert result["event_id"] == "e-9" and result["code"] == 400
        assert result["reason"] == "bad" and isinstance(result["timestamp"], int)
        uuid.UUID(twin_update_error("bad")["event_id"])


class TestParseTwinUpdate:
    def test_kubeedge_update(self) -> None:
        payload = update({"temperature": {"actual": {"value": "23.5"},
                                          "metadata": {"type": "Updated"}},
                          "on": {"actual": {"value": True}},
                          "count": {"actual": {"value": 3}},
                          "ratio": {"actual": {"value": 0.25}}})
        assert parse_twin_update(payload, LIMIT) == {"temperature": "23.5", "on": "true",
                                                     "count": "3", "ratio": "0.25"}

    @pytest.mark.parametrize("payload, problem", [
        (b"x" * 2000, "over the 1000 byte limit"),
        (b"{not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe{}", "not valid UTF-8 JSON"),
        (b'{"twin": {"t": {"actual": {"value": NaN}}}}', "not valid UTF-8 JSON"),
        (b"[1, 2]", "is a JSON list, expected an object"),
        (b'"twin"', "is a JSON str"),
        (b'{"event_id": "e"}', 'no "twin" object'),
        (b'{"twin": {}}', 'no "twin" object'),
        (b'{"twin": []}', 'no "twin" object'),
        (b'{"twin": {"t": {"expected": {"value": "1"}}}}', "property 't': expected"),
        (b'{"twin": {"t": {"actual": {}}}}', "property 't'"),
        (b'{"twin": {"t": {"actual": {"value": null}}}}', "property 't'"),
        (b'{"twin": {"t": 5}}', "property 't'"),
        (b'{"twin": {"t": {"actual": {"value": {"a": 1}}}}}', "expected a string, number"),
        (b'{"twin": {"t": {"actual": {"value": [1]}}}}', "expected a string, number"),
        (b'{"twin": {"t": {"actual": {"value": 1e999}}}}', "expected a string, number"),
        (b"[" * 100_000, "not valid UTF-8 JSON"),
    ])
    def test_bad_updates_say_what_is_wrong(self, payload: bytes, problem: str) -> None:
        with pytest.raises(EventBusError, match=re.escape(problem)):
            parse_twin_update(payload, 1000 if problem.startswith("over") else LIMIT)

    def test_error_keeps_the_event_id(self) -> None:
        with pytest.raises(EventBusError) as caught:
            parse_twin_update(update({"t": {"actual": {}}}), LIMIT)
        assert caught.value.event_id == "e-1"

    @settings(max_examples=300)
    @given(st.binary(max_size=400))
    def test_fuzz_bytes(self, payload: bytes) -> None:
        with contextlib.suppress(EventBusError):
            parse_twin_update(payload, 300)

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["twin", "actual", "value", "t", "event_id", ""]),
                          inner, max_size=4),
        max_leaves=20)

    @settings(max_examples=300)
    @given(json_values)
    def test_fuzz_json(self, doc: Any) -> None:
        payload = json.dumps(doc).encode()
        try:
            values = parse_twin_update(payload, LIMIT)
        except EventBusError:
            return
        assert values and all(isinstance(k, str) and isinstance(v, str)
                              for k, v in values.items())


class TestOutbox:
    """publish() without a broker: bounded, newest kept, bad topics refused at once."""

    def bus(self) -> EventBus:
        return EventBus(EventBusConfig(max_message_bytes=200), "n1", lambda *a: None,
                        lambda *a: None)

    def test_keeps_the_newest(self, caplog: pytest.LogCaptureFixture) -> None:
        async def scenario() -> None:
            bus = self.bus()
            for i in range(OUTBOX_SIZE + 5):
                bus.publish("a/b", {"i": i})
            assert bus.queued == OUTBOX_SIZE
            assert json.loads(bus._outbox[0][1]) == {"i": 5}
            assert json.loads(bus._outbox[-1][1]) == {"i": OUTBOX_SIZE + 4}

        with caplog.at_level(logging.DEBUG, "edgecore.eventbus"):
            asyncio.run(scenario())
        assert "dropped the oldest" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    def test_refuses_bad_topics_and_payloads(self, caplog: pytest.LogCaptureFixture) -> None:
        bus = self.bus()
        for topic in ("", "a/+", "a/#"):
            with pytest.raises(EventBusError, match="topic"):
                bus.publish(topic, {})
        with pytest.raises(EventBusError, match="not JSON"):
            bus.publish("a", {"x": object()})
        bus.publish("a", {"x": "y" * 300})
        assert bus.queued == 0 and "over the 200 byte limit" in caplog.text

    def test_bad_update_is_answered_not_raised(self, caplog: pytest.LogCaptureFixture) -> None:
        seen: list[tuple[str, str, dict[str, Any]]] = []
        bus = EventBus(EventBusConfig(), "n1", lambda *a: seen.append(a), lambda *a: None)
        bus.dispatch("$hw/events/device/ns/d/twin/update", b"{oops")
        assert not seen and bus.queued == 1
        topic, data = bus._outbox[0]
        assert topic == "$hw/events/device/ns/d/twin/update/result"
        assert json.loads(data)["code"] == 400
        assert "bad message on $hw/events/device/ns/d/twin/update" in caplog.text
        bus.dispatch("$hw/events/device/ns/d/twin/update", update({"t": {"actual":
                                                                          {"value": 1}}}))
        assert seen == [("ns", "d", {"t": "1"})]

    def test_failing_handler_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        def boom(topic: str, payload: bytes) -> None:
            raise RuntimeError("handler bug")

        bus = EventBus(EventBusConfig(), "n1", lambda *a: None, boom)
        bus.dispatch("$hw/events/upload/x", b"1")
        assert "handler bug" in caplog.text and "carries on" in caplog.text
