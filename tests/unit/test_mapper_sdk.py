"""The mapper SDK's pure parts and its device loop.

The device loop is driven by ``ScriptedDriver``, an in-memory stand-in for a
device: it is the one thing a unit test cannot have (real devices are tested
through the Modbus mapper against pymodbus servers in tests/integration).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mappers.sdk.device import OFFLINE, ONLINE, DeviceRunner, Driver, text
from mappers.sdk.errors import DeviceError, DeviceUnreachable
from mappers.sdk.spec import DeviceSpec, PropertySpec, Schedule, device_spec
from moorage.dmi import api_pb2 as dmi
from moorage.dmi.convert import (
    ConversionError,
    config_data,
    config_dict,
    device_to_dmi,
    pack,
    unpack,
)

DEVICE = {"metadata": {"name": "thermo", "namespace": "plant"},
          "spec": {"deviceModelRef": {"name": "thermometer"}, "nodeName": "n1",
                   "protocol": {"protocolName": "modbus", "configData": {
                       "communicateMode": "TCP", "ip": "127.0.0.1", "port": 502, "slaveID": 1}},
                   "properties": [
                       {"name": "temperature", "collectCycle": 500, "reportCycle": 2000,
                        "desired": {"value": "21.5"},
                        "visitors": {"protocolName": "modbus", "configData": {
                            "register": "HoldingRegister", "offset": 3, "scale": 0.1,
                            "isSwap": False}}},
                       {"name": "door", "visitors": {"configData": {"register": "CoilRegister"}}}]}}


def test_device_converts_to_dmi_and_to_a_mapper_spec() -> None:
    message = device_to_dmi(DEVICE)
    assert message.name == "thermo" and message.namespace == "plant"
    assert message.spec.deviceModelReference == "thermometer"
    model = dmi.DeviceModel(name="thermometer", namespace="plant", spec=dmi.DeviceModelSpec(
        properties=[dmi.ModelProperty(name="door", accessMode="ReadOnly")]))
    spec = device_spec(dmi.Device.FromString(message.SerializeToString()),
                       {("plant", "thermometer"): model})
    assert spec.key == ("plant", "thermo")
    assert spec.protocol == {"communicateMode": "TCP", "ip": "127.0.0.1", "port": 502,
                             "slaveID": 1}
    temperature, door = spec.properties
    assert temperature.visitor == {"register": "HoldingRegister", "offset": 3, "scale": 0.1,
                                   "isSwap": False}
    assert (temperature.collect_cycle, temperature.report_cycle) == (0.5, 2.0)
    assert temperature.desired == "21.5" and temperature.writable
    assert door.desired is None and not door.writable  # ReadOnly in the model
    assert door.collect_cycle == 1.0  # the default cycle


def test_only_desired_values_changed_keeps_the_wiring() -> None:
    base = device_spec(device_to_dmi(DEVICE), {})
    changed = {**DEVICE, "spec": {**DEVICE["spec"], "properties": [
        {**DEVICE["spec"]["properties"][0], "desired": {"value": "30"}},
        DEVICE["spec"]["properties"][1]]}}
    assert base.same_wiring(device_spec(device_to_dmi(changed), {}))
    rewired = {**DEVICE, "spec": {**DEVICE["spec"], "protocol": {
        "protocolName": "modbus", "configData": {"communicateMode": "TCP", "ip": "10.0.0.9"}}}}
    assert not base.same_wiring(device_spec(device_to_dmi(rewired), {}))


json_scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))


@given(st.dictionaries(st.text(min_size=1, max_size=10), json_scalars, max_size=6))
def test_config_data_round_trips_through_any(data: dict[str, Any]) -> None:
    message = dmi.CustomizedValue.FromString(config_data(data).SerializeToString())
    assert config_dict(message) == data


def test_nested_config_values_and_foreign_any_types() -> None:
    nested = {"rs485": {"enabled": True, "delays": [1, 2]}}
    assert config_dict(config_data(nested)) == nested
    foreign = pack(1)
    foreign.type_url = "type.googleapis.com/example.Unknown"
    with pytest.raises(ConversionError, match=r"example\.Unknown value"):
        unpack(foreign)


def test_schedule_collects_and_reports_on_their_cycles_and_skips_missed_slots() -> None:
    props = (PropertySpec("a", {}, 1.0, 3.0), PropertySpec("b", {}, 2.0, 2.0))
    schedule = Schedule(props, now=100.0)
    assert schedule.due_collect(100.0) == ["a", "b"]
    assert schedule.due_report(100.0) == []  # the first report waits for one collect
    assert schedule.next_deadline() == 101.0
    assert schedule.due_collect(101.0) == ["a"]
    assert sorted(schedule.due_report(102.0)) == ["a", "b"]
    # Busy for 10 s: one collect now, then back on the grid (not ten in a burst).
    assert schedule.due_collect(112.5) == ["a", "b"]
    assert schedule.due_collect(112.6) == []
    assert schedule.next_collect["a"] == 113.0


def test_values_as_twins_carry_them() -> None:
    assert [text(v) for v in (True, False, 21.0, 21.5, 7, "x")] == \
        ["true", "false", "21", "21.5", "7", "x"]


class ScriptedDriver(Driver):
    """An in-memory device (see the module docstring): values by property, switchable off."""

    protocol = "scripted"

    def __init__(self) -> None:
        self.values: dict[str, Any] = {"temperature": 20, "door": False}
        self.answering = True
        self.refuse: set[str] = set()
        self.writes: list[tuple[str, str]] = []

    async def read(self, device: DeviceSpec, prop: PropertySpec) -> Any:
        if not self.answering:
            raise DeviceUnreachable("no answer")
        if prop.name in self.refuse:
            raise DeviceError("illegal data address")
        return self.values[prop.name]

    async def write(self, device: DeviceSpec, prop: PropertySpec, value: str) -> Any:
        if not self.answering:
            raise DeviceUnreachable("no answer")
        self.writes.append((prop.name, value))
        self.values[prop.name] = float(value)
        return self.values[prop.name]


async def _until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def test_device_loop_reports_writes_desired_values_and_goes_offline_and_back() -> None:
    async def scenario() -> None:
        driver = ScriptedDriver()
        reports: list[list[dict[str, Any]]] = []
        states: list[str] = []

        async def report(runner: DeviceRunner, names: list[str]) -> None:
            reports.append(runner.twins(names))

        async def report_state(runner: DeviceRunner, state: str) -> None:
            states.append(state)

        props = (PropertySpec("temperature", {}, 0.02, 0.02, desired="25"),
                 PropertySpec("door", {}, 0.02, 0.02, desired="true", writable=False))
        spec = DeviceSpec("default", "d", "m", "scripted", {}, props)
        runner = DeviceRunner(spec, driver, report, report_state, retry_max=0.05)
        stopping = asyncio.Event()
        task = asyncio.create_task(runner.run(stopping))
        try:
            def latest() -> dict[str, Any]:
                return {t["propertyName"]: t for t in reports[-1]} if reports else {}

            # The write is reported at once (observedDesired), the readings on their cycle.
            await _until(lambda: states == [ONLINE] and "reported" in latest().get("door", {}))
            assert driver.writes == [("temperature", "25")]
            twins = latest()
            assert twins["temperature"]["observedDesired"]["value"] == "25"
            assert twins["door"]["reported"]["value"] == "false"
            # A desired value on a ReadOnly property is never written, and says why.
            assert "ReadOnly" in twins["door"]["observedDesired"]["metadata"]["error"]
            # A refused property is an error on its twin; the device stays online.
            driver.refuse.add("door")
            await _until(lambda: "error" in {t["propertyName"]: t for t in reports[-1]}
                         .get("door", {}).get("reported", {}).get("metadata", {}))
            driver.refuse.clear()
            # A new desired value is written without restarting anything.
            runner.update(DeviceSpec("default", "d", "m", "scripted", {}, (
                PropertySpec("temperature", {}, 0.02, 0.02, desired="26"), props[1])))
            await _until(lambda: ("temperature", "26") in driver.writes)
            driver.answering = False
            await _until(lambda: states[-1] == OFFLINE)
            driver.answering = True
            await _until(lambda: states[-1] == ONLINE)
            assert states == [ONLINE, OFFLINE, ONLINE]
            assert not task.done()
        finally:
            stopping.set()
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
