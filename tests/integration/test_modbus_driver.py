"""The Modbus driver against real pymodbus servers: TCP, and two RTU slaves on one PTY line."""

from __future__ import annotations

import asyncio
import struct

import pytest

from mappers.modbus.codec import Visitor
from mappers.modbus.driver import DeviceError, Lines, Protocol
from tests.modbus import ModbusSim, SerialPair, interleaved, modbus_available
from tests.support import require


def visitor(register: str, offset: int, data_type: str, **extra: object) -> Visitor:
    return Visitor.from_config({"register": register, "offset": offset, "dataType": data_type,
                                **extra})


def test_tcp_device_properties_of_four_register_types() -> None:
    reason = modbus_available(serial=False)
    require(reason is None, reason or "")
    with ModbusSim.tcp(devices=[1]) as sim:
        sim.set_holding(1, 10, [215])                      # 21.5 degrees, scale 0.1
        word_a, word_b = struct.unpack(">2H", struct.pack(">f", 3.75))
        sim.set_input(1, 20, [word_b, word_a])              # float32, words swapped
        sim.set_coils(1, 5, [True])
        sim.set_discrete(1, 7, [False])
        protocol = Protocol.from_config({"communicateMode": "TCP", "ip": "127.0.0.1",
                                         "port": sim.port, "slaveID": 1, "timeout": 1000})

        async def scenario() -> None:
            lines = Lines()
            line = lines.get(protocol)
            try:
                temp = visitor("HoldingRegister", 10, "int16", scale=0.1)
                assert await line.read(temp, 1) == pytest.approx(21.5)
                assert await line.read(visitor("InputRegister", 20, "float32",
                                               isRegisterSwap=True), 1) == 3.75
                assert await line.read(visitor("CoilRegister", 5, "boolean"), 1) is True
                assert await line.read(visitor("DiscreteInputRegister", 7, "boolean"), 1) \
                    is False
                await line.write(temp, 1, 23.4)
                assert sim.get_holding(1, 10) == [234]
                await line.write(visitor("CoilRegister", 6, "boolean"), 1, True)
                assert sim.get_coils(1, 6) == [True]
                sim.set_holding(1, 10, [199])  # a change in the device shows up
                assert await line.read(temp, 1) == pytest.approx(19.9)
                with pytest.raises(DeviceError, match="illegal data address"):
                    await line.read(visitor("HoldingRegister", 5000, "int16"), 1)
                sim.stop()
                with pytest.raises(DeviceError, match=r"no valid answer|cannot connect"):
                    await line.read(temp, 1)
            finally:
                lines.close()

        asyncio.run(scenario())


def test_two_rtu_slaves_on_one_line_are_polled_one_at_a_time() -> None:
    reason = modbus_available(serial=True)
    require(reason is None, reason or "")
    pair = SerialPair()
    with pair, ModbusSim.rtu(pair.a, baudrate=9600, devices=[1, 2], peer=pair.b) as sim:
        sim.set_holding(1, 0, [111])
        sim.set_holding(2, 0, [222])
        sim.set_response_delay(0.02)  # a PTY has no baud rate: make answers take time
        sim.clear_requests()

        async def scenario() -> None:
            lines = Lines()
            try:
                slaves = [Protocol.from_config({"communicateMode": "RTU", "serialPort": str(pair.b),
                                                "baudRate": 9600, "slaveID": n,
                                                "timeout": 1000}) for n in (1, 2)]
                assert lines.get(slaves[0]) is lines.get(slaves[1])  # one line, one lock
                reg = visitor("HoldingRegister", 0, "uint16")
                reads = [lines.get(p).read(reg, p.slave_id) for p in slaves * 5]
                values = await asyncio.gather(*reads)
                assert values == [111, 222] * 5
            finally:
                lines.close()

        asyncio.run(scenario())
        records = sim.requests()
        assert len(records) == 10
        assert {r.device_id for r in records} == {1, 2}
        assert interleaved(records) == []


def test_bad_protocol_config_is_refused_naming_the_field() -> None:
    from mappers.modbus.codec import CodecError

    with pytest.raises(CodecError, match="communicateMode: 'UDP' is not TCP or RTU"):
        Protocol.from_config({"communicateMode": "UDP"})
    with pytest.raises(CodecError, match="ip: required"):
        Protocol.from_config({"communicateMode": "TCP"})
    with pytest.raises(CodecError, match="serialPort: an absolute device path"):
        Protocol.from_config({"communicateMode": "RTU", "serialPort": "ttyUSB0"})
    with pytest.raises(CodecError, match="slaveID: expected an integer 0-247"):
        Protocol.from_config({"communicateMode": "TCP", "ip": "127.0.0.1", "slaveID": 300})
