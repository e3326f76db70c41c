"""The Modbus harness: real pymodbus servers in their own processes, over TCP and over a
socat PTY line with two RTU slaves, read and written by real pymodbus clients while the test
reads and writes the simulated tables through the control channel."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import pytest

from tests.modbus import ModbusSim, SerialPair, interleaved, modbus_available
from tests.support import SCALE, require

TIMEOUT = 1.0 * SCALE  # the clients' answer timeout


def rtu_frame(device: int, function: int, address: int, count: int) -> bytes:
    """A raw RTU request frame (CRC-16/MODBUS, little-endian), for a misbehaving master."""
    body = struct.pack(">BBHH", device, function, address, count)
    crc = 0xFFFF
    for byte in body:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return body + struct.pack("<H", crc)


def assert_gone(sim: ModbusSim) -> None:
    assert sim.proc is not None and sim.proc.poll() is not None, "modbus server still runs"
    assert sim.log_path is not None and not sim.log_path.parent.exists()


def test_tcp_sim_serves_a_real_client_and_goes_away() -> None:
    reason = modbus_available(serial=False)
    require(reason is None, reason or "")
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.exceptions import ModbusException

    sim = ModbusSim.tcp(devices=[1])
    with sim:
        assert sim.running and sim.port > 0
        sim.set_holding(1, 10, [1234])
        sim.set_input(1, 0, [7, 8])
        sim.set_coils(1, 3, [True])
        sim.set_discrete(1, 99, [True])
        port, first_pid = sim.port, sim.pid

        async def scenario() -> None:
            client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=TIMEOUT,
                                          retries=0)
            assert await client.connect()
            try:
                result = await client.read_holding_registers(10, count=1, device_id=1)
                assert not result.isError(), result
                assert result.registers == [1234]
                result = await client.read_input_registers(0, count=2, device_id=1)
                assert result.registers == [7, 8]
                result = await client.read_coils(0, count=8, device_id=1)
                assert result.bits[:8] == [False, False, False, True] + [False] * 4
                result = await client.read_discrete_inputs(99, count=1, device_id=1)
                assert result.bits[0] is True

                assert not (await client.write_register(11, 4321, device_id=1)).isError()
                assert sim.get_holding(1, 10, 2) == [1234, 4321]
                assert not (await client.write_coil(5, True, device_id=1)).isError()
                assert sim.get_coils(1, 3, 3) == [True, False, True]

                sim.set_holding(1, 12, [65535])  # while the client is connected
                result = await client.read_holding_registers(10, count=3, device_id=1)
                assert result.registers == [1234, 4321, 65535]

                # An unknown device id: pymodbus answers with exception 4.
                result = await client.read_holding_registers(0, count=1, device_id=9)
                assert result.isError() and result.exception_code == 4

                sim.stop()
                assert not sim.running
                begun = time.monotonic()
                with pytest.raises(ModbusException):
                    await client.read_holding_registers(10, count=1, device_id=1)
                assert time.monotonic() - begun < TIMEOUT + 5 * SCALE
            finally:
                client.close()

            # A restart keeps the port and what the test configured, not the writes of
            # Modbus masters (a reboot).
            sim.start()
            assert sim.port == port and sim.pid != first_pid
            client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=TIMEOUT,
                                          retries=0)
            assert await client.connect()
            try:
                result = await client.read_holding_registers(10, count=3, device_id=1)
                assert result.registers == [1234, 0, 65535]
            finally:
                client.close()

        asyncio.run(scenario())

        seen = [(r.device_id, r.function_code, r.address) for r in sim.requests()]
        assert seen == [(1, 3, 10), (1, 4, 0), (1, 1, 0), (1, 2, 99), (1, 6, 11), (1, 5, 5),
                        (1, 3, 10), (9, 3, 0), (1, 3, 10)], seen
        assert sim.requests()[-2].exception == 4
        assert not interleaved(sim.requests())
        assert sim.restart().pid != first_pid and sim.get_holding(1, 10) == [1234]
    assert_gone(sim)


def test_rtu_two_slaves_on_a_socat_line() -> None:
    reason = modbus_available()
    require(reason is None, reason or "")
    from pymodbus.client import AsyncModbusSerialClient
    from pymodbus.exceptions import ModbusIOException
    from pymodbus.framer import FramerType

    pair = SerialPair()
    with pair, ModbusSim.rtu(pair.a, baudrate=9600, devices=[1, 2], peer=pair.b) as sim:
        assert pair.a.exists() and pair.b.exists() and pair.running
        sim.set_holding(1, 0, [111, 112])
        sim.set_holding(2, 0, [222, 223])
        sim.set_input(2, 5, [2005])
        sim.set_coils(1, 0, [True, False, True])
        assert sim.requests() == []  # the start probe is not counted

        async def scenario() -> None:
            client = AsyncModbusSerialClient(str(pair.b), framer=FramerType.RTU,
                                             baudrate=9600, timeout=TIMEOUT, retries=0)
            assert await client.connect()
            try:
                one = await client.read_holding_registers(0, count=2, device_id=1)
                two = await client.read_holding_registers(0, count=2, device_id=2)
                assert (one.registers, two.registers) == ([111, 112], [222, 223])
                assert one.dev_id == 1 and two.dev_id == 2
                result = await client.read_input_registers(5, count=1, device_id=2)
                assert result.registers == [2005]
                result = await client.read_coils(0, count=3, device_id=1)
                assert result.bits[:3] == [True, False, True]
                assert not (await client.write_registers(20, [1, 2], device_id=2)).isError()
                assert sim.get_holding(2, 20, 2) == [1, 2]
                assert sim.get_holding(1, 20, 2) == [0, 0]

                # Nobody answers an unknown or off-line slave: the master times out.
                with pytest.raises(ModbusIOException):
                    await client.read_holding_registers(0, count=1, device_id=3)
                sim.set_offline(2)
                with pytest.raises(ModbusIOException):
                    await client.read_holding_registers(0, count=1, device_id=2)
                sim.set_offline(2, False)
                result = await client.read_holding_registers(0, count=1, device_id=2)
                assert result.registers == [222]

                # Slow answers; the client serializes concurrent calls on its line.
                sim.clear_requests()
                sim.set_response_delay(0.05)
                results = await asyncio.gather(*(
                    client.read_holding_registers(0, count=1, device_id=d)
                    for d in (1, 2, 1, 2)))
                assert [r.registers for r in results] == [[111], [222], [111], [222]]
            finally:
                client.close()

        asyncio.run(scenario())
        records = sim.requests()
        assert [r.device_id for r in records] == [1, 2, 1, 2]
        assert all(r.answered is not None and r.answered - r.received >= 0.05
                   for r in records)
        assert interleaved(records) == []
    assert_gone(sim)
    assert not pair.running and not pair.a.exists() and not Path(pair.dir).exists()


def test_request_records_catch_a_master_that_talks_over_a_pending_request() -> None:
    reason = modbus_available()
    require(reason is None, reason or "")
    import serial

    with SerialPair() as pair, ModbusSim.rtu(pair.a, devices=[1, 2], peer=pair.b,
                                             response_delay=0.2) as sim:
        with serial.Serial(str(pair.b), 9600, timeout=TIMEOUT) as port:
            port.write(rtu_frame(1, 3, 0, 1))
            port.flush()
            first = time.monotonic()
            # Wait until the server has the first request (no answer for 0.2 s yet).
            while not sim.requests():
                assert time.monotonic() - first < 5 * SCALE
                time.sleep(0.005)
            port.write(rtu_frame(2, 3, 0, 1))  # talks over the pending request
            port.flush()
            port.read(7)  # an answer (pymodbus mixes both up; any bytes will do)
        records = sim.requests()
        assert [r.device_id for r in records] == [1, 2]
        overlaps = interleaved(records)
        assert overlaps and overlaps[0][0].device_id == 1 and overlaps[0][1].device_id == 2
    assert_gone(sim)
