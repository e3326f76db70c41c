"""Talking to Modbus devices: one client per line, one request at a time per line.

A *line* is a TCP endpoint or a serial port. Several RTU slaves on one serial
line share it, so every request on a line holds that line's lock: frames never
interleave. Errors become :class:`DeviceError` with a sentence an operator can
act on (timeouts, Modbus exception codes, unreachable endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from pymodbus.exceptions import ModbusException

from mappers.modbus.codec import (
    CodecError,
    Visitor,
    check_field_names,
    decode_bits,
    decode_registers,
    encode,
)
from mappers.sdk.errors import DeviceError, DeviceUnreachable

log = logging.getLogger("mappers.modbus")

EXCEPTION_CODES = {
    1: "illegal function (the device does not support this register type)",
    2: "illegal data address (no such register on the device: check offset and limit)",
    3: "illegal data value",
    4: "device failure (unknown slave ID, or the device cannot do it)",
    5: "acknowledge (the device is busy with a long operation)",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
PARITY = {"none": "N", "n": "N", "even": "E", "e": "E", "odd": "O", "o": "O"}
PROTOCOL_FIELDS = ("communicateMode", "ip", "port", "slaveID", "serialPort", "serialName",
                   "baudRate", "dataBits", "parity", "stopBits", "timeout")


@dataclass(frozen=True)
class Protocol:
    """KubeEdge's Modbus protocol configData, parsed."""

    mode: str  # TCP or RTU
    slave_id: int
    ip: str = ""
    port: int = 502
    serial_port: str = ""
    baud_rate: int = 9600
    data_bits: int = 8
    parity: str = "N"
    stop_bits: int = 1
    timeout: float = 1.0  # seconds

    @property
    def line(self) -> str:
        return f"tcp://{self.ip}:{self.port}" if self.mode == "TCP" else \
            f"serial://{self.serial_port}"

    @classmethod
    def from_config(cls, data: Any, where: str = "protocol.configData") -> Protocol:
        if not isinstance(data, dict):
            raise CodecError(f"{where}: expected a mapping")
        check_field_names(data, PROTOCOL_FIELDS, where)
        mode = str(data.get("communicateMode", "TCP")).upper()
        if mode not in ("TCP", "RTU"):
            raise CodecError(f"{where}.communicateMode: {mode!r} is not TCP or RTU")

        def integer(name: str, default: int, low: int, high: int) -> int:
            value = data.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise CodecError(f"{where}.{name}: expected an integer {low}-{high}, "
                                 f"got {value!r}")
            return value

        slave = integer("slaveID", 1, 0, 247)
        timeout_ms = integer("timeout", 1000, 10, 60_000)  # KubeEdge gives milliseconds
        if mode == "TCP":
            ip = data.get("ip")
            if not isinstance(ip, str) or not ip:
                raise CodecError(f"{where}.ip: required for communicateMode TCP")
            return cls("TCP", slave, ip=ip, port=integer("port", 502, 1, 65535),
                       timeout=timeout_ms / 1000)
        serial = data.get("serialPort") or data.get("serialName")
        if not isinstance(serial, str) or not serial.startswith("/"):
            raise CodecError(f"{where}.serialPort: an absolute device path is required for "
                             "communicateMode RTU (for example /dev/ttyUSB0)")
        parity = PARITY.get(str(data.get("parity", "none")).lower())
        if parity is None:
            raise CodecError(f"{where}.parity: use none, even or odd")
        return cls("RTU", slave, serial_port=serial,
                   baud_rate=integer("baudRate", 9600, 300, 4_000_000),
                   data_bits=integer("dataBits", 8, 5, 8), parity=parity,
                   stop_bits=integer("stopBits", 1, 1, 2), timeout=timeout_ms / 1000)


class Line:
    """One pymodbus client and the lock that serializes its requests."""

    def __init__(self, protocol: Protocol) -> None:
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

        self.name = protocol.line
        self.lock = asyncio.Lock()
        if protocol.mode == "TCP":
            self.client: Any = AsyncModbusTcpClient(
                protocol.ip, port=protocol.port, timeout=protocol.timeout, retries=0,
                reconnect_delay=0)
        else:
            self.client = AsyncModbusSerialClient(
                protocol.serial_port, baudrate=protocol.baud_rate,
                bytesize=protocol.data_bits, parity=protocol.parity,
                stopbits=protocol.stop_bits, timeout=protocol.timeout, retries=0,
                reconnect_delay=0)

    async def _connected(self) -> None:
        if not self.client.connected and not await self.client.connect():
            raise DeviceUnreachable(f"cannot connect to {self.name}: is the device powered and "
                              "reachable (address, port, cable)?")

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async with self.lock:
            await self._connected()
            try:
                result = await getattr(self.client, method)(*args, **kwargs)
            except ModbusException as exc:
                self.client.close()  # start clean: a half-read frame must not confuse the next
                raise DeviceUnreachable(f"no valid answer from {self.name} (slave "
                                  f"{kwargs.get('device_id')}): {exc}") from None
        if result.isError():
            code = getattr(result, "exception_code", 0)
            raise DeviceError(f"slave {kwargs.get('device_id')} on {self.name} refused the "
                              f"request: {EXCEPTION_CODES.get(code, f'exception code {code}')}")
        return result

    async def read(self, visitor: Visitor, slave: int) -> Any:
        method = {"CoilRegister": "read_coils", "DiscreteInputRegister": "read_discrete_inputs",
                  "HoldingRegister": "read_holding_registers",
                  "InputRegister": "read_input_registers"}[visitor.register]
        result = await self._call(method, visitor.offset, count=visitor.limit, device_id=slave)
        if visitor.is_bits:
            return decode_bits(list(result.bits), visitor)
        return decode_registers(list(result.registers), visitor)

    async def write(self, visitor: Visitor, slave: int, value: Any) -> None:
        payload = encode(value, visitor)
        if visitor.is_bits:
            await self._call("write_coils", visitor.offset, payload, device_id=slave)
        else:
            await self._call("write_registers", visitor.offset, payload, device_id=slave)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class Lines:
    """Lines by name, so that every device on one serial port shares its lock."""

    def __init__(self) -> None:
        self.lines: dict[str, Line] = {}

    def get(self, protocol: Protocol) -> Line:
        line = self.lines.get(protocol.line)
        if line is None:
            line = self.lines[protocol.line] = Line(protocol)
        return line

    def close(self) -> None:
        for line in self.lines.values():
            line.close()
        self.lines.clear()
