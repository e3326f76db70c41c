"""A simulated Modbus TCP thermometer, for trying Moorage without hardware.

    python -m mappers.modbus.simulator --port 5020

It serves the registers of ``examples/modbus-thermometer.yaml`` (slave 1): temperature
in holding register 10 (int16, tenths of a degree, writable: it is the setpoint the
reading drifts towards), humidity in input registers 20-21 (float32, words swapped),
an alarm coil at 5 and a door contact at discrete input 7. It is a simulator, not a
device: it exists for the demo and for people wiring their first mapper.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import struct
import time

from moorage.aio import sleep_or_stop


def _float32_swapped(value: float) -> list[int]:
    high, low = struct.unpack(">2H", struct.pack(">f", value))
    return [low, high]


async def serve(host: str, port: int) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    def block(bits: bool) -> list[SimData]:
        kind = DataType.BITS if bits else DataType.REGISTERS
        return [SimData(0, count=64, values=False if bits else 0, datatype=kind)]

    device = SimDevice(1, simdata=(block(True), block(True), block(False), block(False)))
    server = ModbusTcpServer([device], address=(host, port))
    context = server.context  # function codes 1-4 name the tables: coils, discrete, hr, ir
    await context.async_setValues(1, 3, 10, [215])  # 21.5 degrees
    await server.serve_forever(background=True)
    print(f"simulated thermometer on modbus tcp {host}:{port} (slave 1)", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    started = time.monotonic()
    while not stopping.is_set():
        elapsed = time.monotonic() - started
        humidity = 45.0 + 5.0 * math.sin(elapsed / 20)
        await context.async_setValues(1, 4, 20, _float32_swapped(round(humidity, 2)))
        await context.async_setValues(1, 2, 7, [int(elapsed / 30) % 2 == 1])
        # The temperature register is the setpoint a mapper may write; the alarm coil
        # says whether it is above 30 degrees.
        (tenths,) = await context.async_getValues(1, 3, 10, 1)
        await context.async_setValues(1, 1, 5, [tenths > 300])
        await sleep_or_stop(1.0, stopping)
    await server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mappers.modbus.simulator",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
