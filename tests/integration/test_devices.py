"""Devices end to end: cloud -> edgecore devicetwin -> modbus-mapper -> pymodbus simulator,
and twins back to the cloud. Every part is a real process started from its command."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import yaml

from tests.modbus import ModbusSim, SerialPair, interleaved, modbus_available
from tests.mqtt import Mosquitto, require_mosquitto
from tests.support import (
    Cloud,
    Daemon,
    Edge,
    Env,
    edit_yaml,
    enable_metaserver,
    http_json,
    join,
    make_cloud,
    require,
    wait_for,
    write_manifests,
)

CYCLE_MS = 200


def model(name: str = "thermometer") -> dict[str, Any]:
    return {"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"properties": [
                {"name": "temperature", "type": "FLOAT", "accessMode": "ReadWrite"},
                {"name": "humidity", "type": "FLOAT", "accessMode": "ReadOnly"},
                {"name": "alarm", "type": "BOOLEAN", "accessMode": "ReadWrite"},
                {"name": "door", "type": "BOOLEAN", "accessMode": "ReadOnly"}]}}


def prop(name: str, register: str, offset: int, data_type: str, desired: str | None = None,
         **visitor: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name, "collectCycle": CYCLE_MS, "reportCycle": CYCLE_MS, "reportToCloud": True,
        "visitors": {"protocolName": "modbus", "configData": {
            "register": register, "offset": offset, "dataType": data_type, **visitor}}}
    if desired is not None:
        out["desired"] = {"value": desired}
    return out


def device(name: str, node: str, protocol: dict[str, Any], properties: list[dict[str, Any]],
           model_name: str = "thermometer") -> dict[str, Any]:
    return {"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"deviceModelRef": {"name": model_name}, "nodeName": node,
                     "protocol": {"protocolName": "modbus", "configData": protocol},
                     "properties": properties}}


def four_properties(temperature_desired: str | None = None) -> list[dict[str, Any]]:
    return [prop("temperature", "HoldingRegister", 10, "int16", temperature_desired, scale=0.1),
            prop("humidity", "InputRegister", 20, "float32", isRegisterSwap=True),
            prop("alarm", "CoilRegister", 5, "boolean"),
            prop("door", "DiscreteInputRegister", 7, "boolean")]


def start_mapper(env: Env, edge: Edge, name: str = "modbus") -> Daemon:
    config = env.root / f"mapper-{name}.yaml"
    config.write_text(yaml.safe_dump({
        "name": name, "protocol": "modbus", "edgecoreSock": str(edge.dir / "dmi.sock"),
        "socket": str(env.root / f"{name}.sock"), "offlineRetryMax": "1s"}))
    return env.daemon(f"mapper-{name}", "modbus-mapper", "--config", str(config))


def cloud_device(cloud: Cloud, name: str) -> dict[str, Any]:
    return json.loads(cloud.moorage("get", "device", name, "-o", "json").stdout)


def reported(obj: dict[str, Any]) -> dict[str, str]:
    return {t["propertyName"]: t["reported"]["value"]
            for t in obj.get("status", {}).get("twins", []) if "reported" in t}


def twin(obj: dict[str, Any], prop_name: str) -> dict[str, Any]:
    return next((t for t in obj.get("status", {}).get("twins", [])
                 if t["propertyName"] == prop_name), {})


def float32_swapped(value: float) -> list[int]:
    high, low = struct.unpack(">2H", struct.pack(">f", value))
    return [low, high]


def setup(env: Env, tmp: Path, metaserver: bool = False) -> tuple[Cloud, Edge]:
    cloud = make_cloud(env).start()
    edge = join(cloud, "edge-dev")
    if metaserver:
        enable_metaserver(edge)
    edge.start()
    wait_for(lambda: cloud.node_ready("edge-dev"), 20, what="the node to be Ready")
    return cloud, edge


def test_modbus_tcp_device_values_desired_writes_and_offline(env: Env, tmp_path: Path) -> None:
    reason = modbus_available(serial=False)
    require(reason is None, reason or "")
    with ModbusSim.tcp(devices=[1]) as sim:
        sim.set_holding(1, 10, [215])
        sim.set_input(1, 20, float32_swapped(40.5))
        sim.set_coils(1, 5, [True])
        sim.set_discrete(1, 7, [False])
        cloud, edge = setup(env, tmp_path)
        mapper = start_mapper(env, edge)
        protocol = {"communicateMode": "TCP", "ip": "127.0.0.1", "port": sim.port,
                    "slaveID": 1, "timeout": 500}
        manifests = write_manifests(tmp_path / "thermo.yaml", [
            model(), device("thermo", "edge-dev", protocol, four_properties())])
        cloud.moorage("apply", "-f", str(manifests))

        # Four register types and data types reach the cloud within a few cycles.
        wait_for(lambda: reported(cloud_device(cloud, "thermo")) == {
            "temperature": "21.5", "humidity": "40.5", "alarm": "true", "door": "false"},
            20, what=lambda: f"values at the cloud: {cloud_device(cloud, 'thermo')}\n"
                             f"{mapper.log()}\n{edge.log()}")
        assert cloud_device(cloud, "thermo")["status"]["state"] == "online"
        yaml_out = cloud.moorage("get", "device", "thermo", "-o", "yaml").stdout
        assert "propertyName: humidity" in yaml_out

        # A value changed in the device shows up at the cloud.
        sim.set_input(1, 20, float32_swapped(55.25))
        wait_for(lambda: reported(cloud_device(cloud, "thermo"))["humidity"] == "55.25", 10)

        # A desired value set at the cloud is written to the register and observed.
        write_manifests(manifests, [model(), device("thermo", "edge-dev", protocol,
                                                    four_properties("30.5"))])
        cloud.moorage("apply", "-f", str(manifests))
        wait_for(lambda: sim.get_holding(1, 10) == [305], 10,
                 what=lambda: f"the register write:\n{mapper.log()}")
        wait_for(lambda: twin(cloud_device(cloud, "thermo"), "temperature").get(
            "observedDesired", {}).get("value") == "30.5", 10)
        # The device kept running: no restart for a desired-value change.
        assert mapper.log().count("device default/thermo started") == 1
        described = cloud.moorage("describe", "device", "thermo").stdout
        assert "temperature" in described and "30.5" in described

        # The device stops answering: offline at the cloud; back: online, values flowing.
        sim.stop()
        wait_for(lambda: cloud_device(cloud, "thermo")["status"]["state"] == "offline", 15,
                 what=lambda: f"offline:\n{mapper.log()}")
        sim.set_input(1, 20, float32_swapped(12.0))
        sim.start()
        wait_for(lambda: cloud_device(cloud, "thermo")["status"]["state"] == "online", 15)
        wait_for(lambda: reported(cloud_device(cloud, "thermo"))["humidity"] == "12", 10)
        assert "Traceback" not in mapper.log() + edge.log()


def test_readings_taken_while_the_cloud_is_down_arrive_after(env: Env, tmp_path: Path) -> None:
    reason = modbus_available(serial=False)
    require(reason is None, reason or "")
    with ModbusSim.tcp(devices=[1]) as sim:
        sim.set_holding(1, 10, [100])
        cloud, edge = setup(env, tmp_path, metaserver=True)
        mapper = start_mapper(env, edge)
        protocol = {"communicateMode": "TCP", "ip": "127.0.0.1", "port": sim.port,
                    "slaveID": 1, "timeout": 500}
        cloud.moorage("apply", "-f", str(write_manifests(tmp_path / "d.yaml", [
            model(), device("thermo", "edge-dev", protocol, four_properties()[:1])])))
        wait_for(lambda: reported(cloud_device(cloud, "thermo")).get("temperature") == "10", 20)

        def at_edge() -> dict[str, str]:
            return reported(http_json(
                edge.metaserver_port,
                "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devices/thermo"))

        cloud.stop()
        sim.set_holding(1, 10, [421])
        wait_for(lambda: at_edge().get("temperature") == "42.1", 10,
                 what="the edge to store the reading taken while the cloud is down")
        # No reading after this point: what reaches the cloud was read while it was down.
        mapper.stop()
        read_while_down = int(time.time() * 1000)
        cloud.start()
        wait_for(lambda: reported(cloud_device(cloud, "thermo")).get("temperature") == "42.1",
                 20, what=lambda: f"the offline reading at the cloud:\n{edge.log()}")
        stamp = int(twin(cloud_device(cloud, "thermo"), "temperature")["reported"]
                    ["metadata"]["timestamp"])
        assert 0 < stamp <= read_while_down


def test_two_rtu_slaves_on_one_pty_polled_without_interleaving(env: Env,
                                                              tmp_path: Path) -> None:
    reason = modbus_available(serial=True)
    require(reason is None, reason or "")
    pair = SerialPair()
    with pair, ModbusSim.rtu(pair.a, baudrate=9600, devices=[1, 2], peer=pair.b) as sim:
        sim.set_holding(1, 0, [111])
        sim.set_holding(2, 0, [222])
        sim.set_response_delay(0.01)  # a PTY has no baud rate: answers take time anyway
        cloud, edge = setup(env, tmp_path)
        mapper = start_mapper(env, edge)
        sim.clear_requests()
        docs: list[dict[str, Any]] = [model("meter")]
        for slave in (1, 2):
            # A generous timeout: on a busy machine a late answer to a request given up on
            # would overlap the next request, which is the master's timeout, not a bug.
            protocol = {"communicateMode": "RTU", "serialPort": str(pair.b), "baudRate": 9600,
                        "slaveID": slave, "timeout": 3000}
            docs.append(device(f"meter-{slave}", "edge-dev", protocol, [
                prop("temperature", "HoldingRegister", 0, "uint16"),
                prop("humidity", "HoldingRegister", 1, "uint16")], model_name="meter"))
        # A property the device does not have: a clear error on its twin, the rest flows.
        docs[1]["spec"]["properties"].append(prop("missing", "HoldingRegister", 5000, "uint16"))
        # A device whose settings make no sense: the reason is shown at the cloud.
        docs.append(device("meter-bad", "edge-dev", {"communicateMode": "RTU",
                                                     "serialPort": "ttyUSB0"},
                           [prop("temperature", "HoldingRegister", 0, "int128")],
                           model_name="meter"))
        cloud.moorage("apply", "-f", str(write_manifests(tmp_path / "rtu.yaml", docs)))
        wait_for(lambda: reported(cloud_device(cloud, "meter-1")).get("temperature") == "111"
                 and reported(cloud_device(cloud, "meter-2")).get("temperature") == "222", 20,
                 what=lambda: f"both slaves at the cloud:\n{mapper.log()}")
        sim.set_holding(2, 1, [77])
        wait_for(lambda: reported(cloud_device(cloud, "meter-2")).get("humidity") == "77", 10)
        missing = twin(cloud_device(cloud, "meter-1"), "missing")["reported"]["metadata"]
        assert "illegal data address" in missing["error"]
        bad = wait_for(lambda: (d := cloud_device(cloud, "meter-bad")).get("status", {}).get(
            "state") == "unknown" and d, 10)
        assert "serialPort: an absolute device path" in \
            twin(bad, "temperature")["reported"]["metadata"]["error"]
        assert mapper.running and "Traceback" not in mapper.log()
        records = sim.requests()
        assert {r.device_id for r in records} == {1, 2}
        assert len(records) >= 8
        assert interleaved(records) == []


def test_mapper_and_devices_survive_an_edgecore_restart(env: Env, tmp_path: Path) -> None:
    reason = modbus_available(serial=False)
    require(reason is None, reason or "")
    with ModbusSim.tcp(devices=[1]) as sim:
        sim.set_holding(1, 10, [100])
        cloud, edge = setup(env, tmp_path)
        mapper = start_mapper(env, edge)
        protocol = {"communicateMode": "TCP", "ip": "127.0.0.1", "port": sim.port,
                    "slaveID": 1, "timeout": 500}
        manifests = tmp_path / "d.yaml"
        write_manifests(manifests, [model(), device("thermo", "edge-dev", protocol,
                                                    four_properties()[:1])])
        cloud.moorage("apply", "-f", str(manifests))
        wait_for(lambda: reported(cloud_device(cloud, "thermo")).get("temperature") == "10", 20)
        edge.stop()
        # Changed while edgecore is down: it reaches the device once edgecore is back.
        write_manifests(manifests, [model(), device("thermo", "edge-dev", protocol,
                                                    four_properties("33.3")[:1])])
        cloud.moorage("apply", "-f", str(manifests))
        edge.start()
        wait_for(lambda: sim.get_holding(1, 10) == [333], 20,
                 what=lambda: f"the desired value after the restart:\n{mapper.log()}\n"
                              f"{edge.log()}")
        wait_for(lambda: twin(cloud_device(cloud, "thermo"), "temperature").get(
            "observedDesired", {}).get("value") == "33.3", 15)
        assert mapper.running and mapper.log().count("device default/thermo started") == 1


def test_twins_over_mqtt_documents_out_and_app_updates_to_the_cloud(env: Env,
                                                                    tmp_path: Path) -> None:
    reason = modbus_available(serial=False)
    require(reason is None, reason or "")
    require_mosquitto()
    with Mosquitto(tmp_path) as broker, ModbusSim.tcp(devices=[1]) as sim:
        sim.set_holding(1, 10, [215])
        cloud = make_cloud(env).start()
        edge = join(cloud, "edge-dev")
        edit_yaml(edge.config, lambda d: d["modules"].update(eventBus={
            "enable": True, "mqttServerExternal": broker.url, "reconnectMax": "1s"}))
        edge.start()
        # A real MQTT app on the node: mosquitto_sub prints every twin message it gets.
        subscriber = env.daemon("mosquitto_sub", "/usr/bin/mosquitto_sub", "-h", "127.0.0.1",
                                "-p", str(broker.port), "-i", "twin-watcher", "-v", "-t",
                                "$hw/events/device/+/+/twin/update/#")
        wait_for(lambda: "twin-watcher" in broker.log(), 10, what="the subscriber to connect")
        start_mapper(env, edge)
        protocol = {"communicateMode": "TCP", "ip": "127.0.0.1", "port": sim.port,
                    "slaveID": 1, "timeout": 500}
        panel = device("panel", "edge-dev", {}, [{"name": "status"}], model_name="panel")
        panel["spec"]["protocol"]["protocolName"] = "app"  # no mapper: an app reports it
        cloud.moorage("apply", "-f", str(write_manifests(tmp_path / "d.yaml", [
            model(), device("thermo", "edge-dev", protocol, four_properties("21.5")[:1]),
            panel])))

        def documents_for(name: str) -> list[dict[str, Any]]:
            topic = f"$hw/events/device/default/{name}/twin/update/document "
            return [json.loads(line[len(topic):]) for line in subscriber.log().splitlines()
                    if line.startswith(topic)]

        def actual_temperature(document: dict[str, Any]) -> Any:
            current = document["twin"].get("temperature", {}).get("current") or {}
            return current.get("actual", {}).get("value")

        wait_for(lambda: any(actual_temperature(d) == "21.5" for d in documents_for("thermo")),
                 20, what=lambda: f"a twin document:\n{subscriber.log()}\n{edge.log()}")
        document = documents_for("thermo")[-1]["twin"]["temperature"]["current"]
        assert document["expected"]["value"] == "21.5"

        def publish(payload: str) -> None:
            env.run("/usr/bin/mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port),
                    "-q", "1", "-t", "$hw/events/device/default/panel/twin/update",
                    "-m", payload)

        update = json.dumps({"event_id": "e1", "timestamp": 0,
                             "twin": {"status": {"actual": {"value": "running"}}}})

        def app_status_at_cloud() -> bool:
            publish(update)  # again until the panel has reached the edge
            return reported(cloud_device(cloud, "panel")).get("status") == "running"

        # An app sets the panel's reported status over MQTT: it reaches the cloud.
        wait_for(app_status_at_cloud, 20, interval=0.5,
                 what=lambda: f"the app's update at the cloud:\n{edge.log()}")
        result = "$hw/events/device/default/panel/twin/update/result "

        def accepted() -> bool:
            answers = [json.loads(line[len(result):]) for line in
                       subscriber.log().splitlines() if line.startswith(result)]
            return any(a.get("twin", {}).get("status", {}).get("actual", {}).get("value")
                       == "running" for a in answers)

        wait_for(accepted, 10, what=lambda: f"the accepted update's result:\n{subscriber.log()}")
        # A property the device does not have: refused with a reason on the result topic.
        publish(json.dumps({"twin": {"nope": {"actual": {"value": "1"}}}}))
        wait_for(lambda: "no property 'nope'" in subscriber.log(), 10)
        assert "Traceback" not in edge.log()
