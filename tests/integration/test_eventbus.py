"""The event bus against a real mosquitto: twin documents out, apps' twin updates and uploads
in, no broker at start, a broker restart, and a TLS listener that requires client
certificates. The apps are plain aiomqtt clients."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from certs import pki
from edgecore.config import EventBus as EventBusConfig
from edgecore.config import EventBusTLS
from edgecore.eventbus import (
    EventBus,
    twin,
    twin_document,
    twin_document_topic,
    twin_update_result_topic,
    twin_update_topic,
)
from tests.mqtt import Mosquitto, TLSFiles, eventually, require_mosquitto
from tests.support import SCALE, free_port

WAIT = 5.0 * SCALE
DOCUMENTS = "$hw/events/device/default/+/twin/update/document"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    require_mosquitto()
    with Mosquitto(tmp_path) as running:
        yield running


@pytest.fixture
def caplog_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="edgecore.eventbus")
    return caplog


def config(url: str, **extra: Any) -> EventBusConfig:
    return EventBusConfig(enable=True, mqtt_server_external=url, reconnect_max=0.3, **extra)


class Recorder:
    """The callbacks edgecore would pass in."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, str, dict[str, Any]]] = []
        self.uploads: list[tuple[str, bytes]] = []

    def on_twin_update(self, namespace: str, name: str, values: dict[str, Any]) -> None:
        if name == "broken":
            raise RuntimeError("a bug in the twin handler")
        self.updates.append((namespace, name, values))

    def on_upload(self, topic: str, payload: bytes) -> None:
        self.uploads.append((topic, payload))

    def bus(self, cfg: EventBusConfig) -> EventBus:
        return EventBus(cfg, "edge-1", self.on_twin_update, self.on_upload)


@asynccontextmanager
async def running(bus: EventBus, connect: bool = True) -> AsyncIterator[EventBus]:
    stopping = asyncio.Event()
    task = asyncio.create_task(bus.run(stopping))
    try:
        if connect:
            await asyncio.wait_for(bus.connected.wait(), WAIT)
        yield bus
    finally:
        stopping.set()
        await asyncio.wait_for(task, WAIT)  # returns promptly, whatever state it is in
    assert not bus.connected.is_set()


@asynccontextmanager
async def app(broker: Mosquitto, *topics: str) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port, timeout=WAIT) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


async def receive(client: aiomqtt.Client) -> tuple[str, Any]:
    message = await asyncio.wait_for(anext(client.messages), WAIT)
    assert isinstance(message.payload, bytes)
    return str(message.topic), json.loads(message.payload)


def update(**values: Any) -> bytes:
    return json.dumps({"event_id": "app-1", "timestamp": 0, "twin": {
        prop: {"actual": {"value": value}, "metadata": {"type": "Updated"}}
        for prop, value in values.items()}}).encode()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("edgecore.eventbus") and r.levelno >= logging.WARNING]


def test_twin_document_reaches_a_subscriber(broker: Mosquitto) -> None:
    async def scenario() -> None:
        bus = Recorder().bus(config(broker.url))
        topic = twin_document_topic("default", "thermo")
        doc = twin_document({}, {"temperature": twin(expected="22", actual="19.5")})
        async with running(bus), app(broker, topic) as subscriber:
            bus.publish(topic, doc)
            assert await receive(subscriber) == (topic, doc)

    asyncio.run(scenario())


def test_twin_updates_from_apps(broker: Mosquitto, caplog_debug: pytest.LogCaptureFixture
                                ) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        bus = recorder.bus(config(broker.url, max_message_bytes=4096))
        result = twin_update_result_topic("default", "thermo")
        async with running(bus), app(broker, result) as client:
            topic = twin_update_topic("default", "thermo")
            await client.publish(topic, update(temperature="23.5", on=True), qos=1)
            await eventually(lambda: recorder.updates, what="the update at the bus")
            assert recorder.updates == [("default", "thermo",
                                         {"temperature": "23.5", "on": "true"})]

            # Malformed: answered with 400 and a reason, and the bus carries on.
            await client.publish(topic, b'{"event_id": "bad-1", "twin": {"t": {}}}', qos=1)
            got, answer = await receive(client)
            assert got == result and answer["code"] == 400 and answer["event_id"] == "bad-1"
            assert "actual" in answer["reason"]
            await client.publish(topic, b"\x00not json", qos=1)
            assert (await receive(client))[1]["code"] == 400
            # A handler that raises, and a message far over the limit (the broker drops it
            # for us): neither stops the bus.
            await client.publish(twin_update_topic("default", "broken"), update(t=1), qos=1)
            await client.publish(topic, b"x" * 50_000, qos=1)
            await client.publish(topic, update(temperature="24"), qos=1)
            await eventually(lambda: len(recorder.updates) == 2, what="the second update")
            assert recorder.updates[1] == ("default", "thermo", {"temperature": "24"})
            assert bus.connected.is_set()

    asyncio.run(scenario())
    found = warnings(caplog_debug)
    assert any("bad message on $hw/events/device/default/thermo/twin/update" in w
               for w in found), found
    assert "a bug in the twin handler" in caplog_debug.text
    assert "lost" not in " ".join(found)


def test_upload_reaches_the_handler(broker: Mosquitto) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        async with running(recorder.bus(config(broker.url))), app(broker) as client:
            await client.publish("$hw/events/upload/x", b"\x01raw", qos=1)
            await client.publish("$hw/events/other/x", b"not ours", qos=1)
            await eventually(lambda: recorder.uploads, what="the upload")

    asyncio.run(scenario())
    assert recorder.uploads == [("$hw/events/upload/x", b"\x01raw")]


def test_no_broker_warns_once_then_connects_and_sends_the_queue(
        tmp_path: Path, caplog_debug: pytest.LogCaptureFixture) -> None:
    require_mosquitto()
    port = free_port()
    broker = Mosquitto(tmp_path, port=port)

    async def scenario() -> None:
        # Retained, so the app sees them whenever it subscribes.
        bus = Recorder().bus(config(f"tcp://127.0.0.1:{port}", mqtt_retain=True))
        async with running(bus, connect=False):
            await eventually(lambda: bus.attempts >= 5, what="several connection attempts")
            for i in range(3):
                bus.publish(twin_document_topic("default", f"d{i}"), {"i": i})
            assert not bus.connected.is_set() and bus.queued == 3
            with broker:
                await asyncio.wait_for(bus.connected.wait(), WAIT)
                await eventually(lambda: bus.queued == 0, what="the queue to drain")
                async with app(broker, DOCUMENTS) as client:
                    got = sorted([(await receive(client))[1]["i"] for _ in range(3)])
                assert got == [0, 1, 2]

    asyncio.run(scenario())
    assert warnings(caplog_debug) == [
        f"no MQTT broker at 127.0.0.1:{port} (is mosquitto running?): Connection refused; "
        "retrying quietly with backoff"]
    assert "still cannot connect" in caplog_debug.text
    assert "after " in caplog_debug.text and "failed attempts" in caplog_debug.text


def test_broker_restart(broker: Mosquitto, caplog_debug: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        bus = recorder.bus(config(broker.url, mqtt_retain=True))
        async with running(bus):
            broker.stop()
            await eventually(lambda: not bus.connected.is_set(), what="the bus to notice")
            bus.publish(twin_document_topic("default", "while-down"), {"queued": True})
            broker.start()
            await asyncio.wait_for(bus.connected.wait(), WAIT)
            async with app(broker, DOCUMENTS) as client:
                assert await receive(client) == (
                    twin_document_topic("default", "while-down"), {"queued": True})
                await client.publish(twin_update_topic("default", "thermo"), update(t=5),
                                     qos=1)
                await eventually(lambda: recorder.updates, what="an update after the restart")
        assert recorder.updates == [("default", "thermo", {"t": "5"})]

    asyncio.run(scenario())
    found = warnings(caplog_debug)
    assert any("lost" in w for w in found), found
    assert len(found) <= 2, found  # lost, and at most one "no broker" while it was down


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path, pki.PairPaths]]:
    require_mosquitto()
    day = dt.timedelta(days=1)
    ca = pki.create_ca()
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(pki.cert_to_pem(ca.cert))
    server = pki.PairPaths(tmp_path / "broker.crt", tmp_path / "broker.key")
    pki.save_pair(pki.issue(ca, pki.subject("mosquitto"), lifetime=day, server=True,
                            sans=["127.0.0.1"]), server)
    client = pki.PairPaths(tmp_path / "edge.crt", tmp_path / "edge.key")
    pki.save_pair(pki.issue(ca, pki.node_subject("edge-1"), lifetime=day, client=True), client)
    with Mosquitto(tmp_path, tls=TLSFiles(ca_file, server.cert, server.key)) as running_:
        yield running_, ca_file, client


def test_tls_with_client_certificate(tls_broker: tuple[Mosquitto, Path, pki.PairPaths],
                                     caplog_debug: pytest.LogCaptureFixture) -> None:
    broker, ca_file, client = tls_broker

    async def scenario() -> None:
        tls = EventBusTLS(enable=True, tls_mqtt_ca_file=str(ca_file),
                          tls_mqtt_cert_file=str(client.cert),
                          tls_mqtt_private_key_file=str(client.key))
        bus = Recorder().bus(config(broker.tls_url, tls=tls))
        topic = twin_document_topic("default", "secure")
        async with running(bus), app(broker, topic) as subscriber:  # the app on plain MQTT
            bus.publish(topic, {"over": "tls"})
            assert await receive(subscriber) == (topic, {"over": "tls"})

    asyncio.run(scenario())
    assert not warnings(caplog_debug)


def test_tls_without_client_certificate_is_explained(
        tls_broker: tuple[Mosquitto, Path, pki.PairPaths],
        caplog_debug: pytest.LogCaptureFixture) -> None:
    broker, ca_file, _ = tls_broker

    async def scenario() -> None:
        tls = EventBusTLS(enable=True, tls_mqtt_ca_file=str(ca_file))
        bus = Recorder().bus(config(broker.tls_url, tls=tls))
        bus.timeout = 1.0
        async with running(bus, connect=False):
            await eventually(lambda: warnings(caplog_debug), timeout=10,
                             what="the warning about the refused connection")
            assert not bus.connected.is_set()
        # Stopping while a connect waits for its CONNACK does not wait for the deadline.
        patient = Recorder().bus(config(broker.tls_url, tls=tls))
        patient.timeout = 60.0
        connects = caplog_debug.text.count("Sending CONNECT")
        async with running(patient, connect=False):
            await eventually(lambda: caplog_debug.text.count("Sending CONNECT") > connects,
                             what="a connect in progress")

    asyncio.run(scenario())
    [warning] = warnings(caplog_debug)
    assert f"cannot connect to the MQTT broker at 127.0.0.1:{broker.tls_port}" in warning
    assert "the broker may require a client certificate: set modules.eventBus.tls" in warning
    assert "broker.log" not in warning
    assert "peer did not return a certificate" in broker.log()
