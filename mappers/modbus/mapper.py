"""``modbus-mapper --config FILE``: the Modbus (TCP and RTU) mapper."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from mappers.modbus.codec import CodecError, Visitor, encode
from mappers.modbus.driver import Lines, Protocol
from mappers.sdk.device import Driver
from mappers.sdk.errors import DeviceError, MapperError
from mappers.sdk.mapper import Mapper, load_config
from mappers.sdk.spec import DeviceSpec, PropertySpec
from moorage import logs
from moorage.errors import MoorageError

log = logging.getLogger("mappers.modbus")


class ModbusDriver(Driver):
    protocol = "modbus"

    def __init__(self) -> None:
        self.lines = Lines()
        self._parsed: dict[tuple[str, str], tuple[DeviceSpec, Protocol, dict[str, Visitor]]] = {}

    def _parse(self, device: DeviceSpec) -> tuple[Protocol, dict[str, Visitor]]:
        cached = self._parsed.get(device.key)
        if cached is not None and cached[0] is device:
            return cached[1], cached[2]
        where = f"device {device.namespace}/{device.name}"
        try:
            protocol = Protocol.from_config(device.protocol, f"{where} protocol.configData")
            visitors = {p.name: Visitor.from_config(
                p.visitor, f"{where} property {p.name!r} visitors.configData")
                for p in device.properties}
        except CodecError as exc:
            raise DeviceError(str(exc)) from None
        self._parsed[device.key] = (device, protocol, visitors)
        return protocol, visitors

    def check(self, device: DeviceSpec) -> None:
        self._parse(device)

    async def read(self, device: DeviceSpec, prop: PropertySpec) -> Any:
        protocol, visitors = self._parse(device)
        try:
            return await self.lines.get(protocol).read(visitors[prop.name], protocol.slave_id)
        except CodecError as exc:
            raise DeviceError(f"the registers cannot be a {visitors[prop.name].data_type}: "
                              f"{exc}") from None

    async def write(self, device: DeviceSpec, prop: PropertySpec, value: str) -> Any:
        protocol, visitors = self._parse(device)
        visitor = visitors[prop.name]
        if not visitor.writable:
            raise DeviceError(f"{visitor.register} is read-only in Modbus: a writable property "
                              "needs HoldingRegister or CoilRegister")
        try:
            payload = encode(value, visitor)
        except CodecError as exc:
            raise DeviceError(f"desired value {value!r}: {exc}") from None
        line = self.lines.get(protocol)
        await line.write(visitor, protocol.slave_id, value)
        back = await line.read(visitor, protocol.slave_id)
        if encode(back, visitor) != payload:
            raise DeviceError(f"wrote {value!r} but the device holds {back!r} (is the register "
                              "writable, or does the device clamp it?)")
        return back

    async def close(self) -> None:
        self.lines.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modbus-mapper", description=__doc__)
    parser.add_argument("--config", required=True, help="the mapper's YAML config")
    parser.add_argument("--edgecore-sock", help="edgecore's DMI socket (overrides the config)")
    parser.add_argument("--socket", help="this mapper's own DMI socket (overrides the config)")
    parser.add_argument("--log-level", default=os.environ.get("MOORAGE_LOG_LEVEL", "info"))
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        cfg = load_config(args.config, edgecore_sock=args.edgecore_sock, socket=args.socket)
        asyncio.run(_run(Mapper(cfg, ModbusDriver())))
    except (MoorageError, MapperError) as exc:
        print(f"modbus-mapper: {exc}", file=sys.stderr)
        return 2
    return 0


async def _run(mapper: Mapper) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await mapper.run(stopping)


if __name__ == "__main__":
    sys.exit(main())
