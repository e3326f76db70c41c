#!/usr/bin/env python3
"""Modbus polling: the mapper's read throughput next to a bare pymodbus client, TCP and RTU.

    .venv/bin/python bench/modbus_polling.py [--duration 6] [--rounds 4] [--properties 200] \
        [--bauds 9600,115200] [--gap spec|chars] [--profile]

Every device here is a real pymodbus server in its own process (``tests.modbus.ModbusSim``:
``ModbusTcpServer``, or ``ModbusSerialServer`` with the RTU framer on one end of a socat PTY
pair, ``tests.modbus.SerialPair``). Two clients poll it in turn, in this process:

- BASELINE: a bare pymodbus loop, ``AsyncModbusTcpClient`` / ``AsyncModbusSerialClient``
  built with the arguments ``mappers/modbus/driver.py`` uses (timeout 1 s, retries=0,
  reconnect_delay=0), doing sequential ``read_holding_registers(addr, count=1, device_id=1)``
  as fast as it can, ``addr`` cycling over the same P registers as the mapper's properties.
- MAPPER: the SDK's real polling path, in process: one ``DeviceRunner`` with the
  ``ModbusDriver`` (``Lines``/``Line``, one lock per line) and one device with P
  HoldingRegister int16 properties, collect cycle at the minimum (``MIN_CYCLE_MS``, 10 ms)
  so that the demand (P x 100 reads/s) exceeds what the line serves; the report callback
  only counts. The driver is wrapped to time each ``read`` (two clock reads per call), and
  the time the runner sleeps waiting for its next cycle is measured: a runner that is not
  busy all the window is flagged (then the demand, not the line, set the rate).

Per line, each client gets ``--rounds`` windows of ``--duration``/``--rounds`` seconds
(after ``--warmup`` reads on a fresh connection), bare and mapper alternating with the
order flipped every round (AB BA AB ...), so that drift and the load of other processes fall
on both alike; the figures pool the windows. Reads/s are counted by the client and, as a
check, by the server. P50/P99 are per-read latencies seen by the client. CPU µs/read is
this process' (client) and the server process' CPU over the windows / reads; "other load"
is the CPU that processes not started here used meanwhile, in cores.

RTU: a PTY has no baud rate (bytes arrive at once), so the line is EMULATED: the server
delays every answer by the on-wire time of one transaction at that baud -- request frame
(8 bytes) + answer frame (5 + 2 x count bytes) at 10 bits per byte (8N1) plus two
inter-frame gaps t3.5 (one after each frame). ``--gap spec`` (default) takes t3.5 as the
Modbus serial-line spec does: 3.5 characters up to 19200 baud, a fixed 1.75 ms above;
``--gap chars`` takes 3.5 characters at every baud. The theoretical line rate is
1 / that time; a client's reads/s as a % of it is how much of the line it uses (what it
loses is its own and the server's software time, added on top of the emulated wire time).

It prints the machine facts and a markdown table; ``--profile`` also prints a cProfile of
the mapper's TCP windows (to stderr; that row is then slowed by the profiler). Everything
started here (servers, socat) is stopped at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # mappers, tests.modbus

from mappers.modbus.mapper import ModbusDriver
from mappers.sdk import device as sdk_device
from mappers.sdk.device import DeviceRunner
from mappers.sdk.spec import MIN_CYCLE_MS, DeviceSpec, PropertySpec
from tests.modbus import ModbusSim, SerialPair, modbus_available

CLK_TCK = os.sysconf("SC_CLK_TCK")
SLAVE = 1
TIMEOUT_S = 1.0  # the driver's default (KubeEdge's timeout: 1000 ms)
BITS_PER_CHAR = 10  # 8N1: start bit, 8 data bits, stop bit
REQUEST_BYTES = 8  # read holding registers: id, fc, address(2), count(2), crc(2)
SPEC_GAP_ABOVE = 19200  # Modbus over serial line V1.02 2.5.1.1: fixed t3.5 above this baud
SPEC_GAP_S = 0.00175


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def q(values: list[float], frac: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(frac * len(ordered)))]


# ---------------------------------------------------------------- the line model

@dataclass(frozen=True)
class LineModel:
    baud: int
    gap_model: str
    count: int = 1  # registers per read

    @property
    def char_s(self) -> float:
        return BITS_PER_CHAR / self.baud

    @property
    def gap_s(self) -> float:
        if self.gap_model == "spec" and self.baud > SPEC_GAP_ABOVE:
            return SPEC_GAP_S
        return 3.5 * self.char_s

    @property
    def answer_bytes(self) -> int:
        return 5 + 2 * self.count  # id, fc, byte count, data, crc(2)

    @property
    def transaction_s(self) -> float:
        return (REQUEST_BYTES + self.answer_bytes) * self.char_s + 2 * self.gap_s

    @property
    def max_per_s(self) -> float:
        return 1 / self.transaction_s


# ---------------------------------------------------------------- measurements

@dataclass
class Phase:
    line: str  # "TCP", "RTU 9600"
    client: str  # "bare" or "mapper"
    round: int = 0
    reads: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds
    server_reads: int = 0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    others_cpu_s: float = 0.0  # CPU used meanwhile by processes not started here
    reports: int = 0
    reported_values: int = 0
    idle_s: float = 0.0  # mapper: time the runner slept waiting for the next cycle
    states: list[str] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.reads / self.seconds if self.seconds else 0.0

    def cpu_us(self, seconds: float) -> float:
        return 1e6 * seconds / self.reads if self.reads else 0.0


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


class Window:
    """The measured window: wall clock, this process' CPU, the server's (and socat's) CPU,
    the requests the server saw, and what the rest of the machine was doing meanwhile."""

    def __init__(self, sim: ModbusSim, phase: Phase, helpers: tuple[int, ...]) -> None:
        self.sim, self.phase, self.helpers = sim, phase, helpers

    def __enter__(self) -> Window:
        self.sim.clear_requests()
        self.cpu0, self.server0 = self_cpu(), cpu_seconds(self.sim.pid)
        self.helpers0 = sum(cpu_seconds(pid) for pid in self.helpers)
        self.busy0 = machine_busy()
        self.t0 = time.monotonic()
        return self

    def close(self) -> None:
        t1 = time.monotonic()
        busy1 = machine_busy()
        p = self.phase
        p.seconds = t1 - self.t0
        p.client_cpu_s = self_cpu() - self.cpu0
        p.server_cpu_s = cpu_seconds(self.sim.pid) - self.server0
        ours = p.client_cpu_s + p.server_cpu_s + sum(
            cpu_seconds(pid) for pid in self.helpers) - self.helpers0
        cpus = len(os.sched_getaffinity(0))
        total = busy1[1] - self.busy0[1]
        machine = (busy1[0] - self.busy0[0]) / total * cpus * p.seconds if total else 0.0
        p.others_cpu_s = max(0.0, machine - ours)
        p.server_reads = sum(1 for r in self.sim.requests(clear=True)
                             if self.t0 <= r.received < t1 and r.function_code == 3)

    def __exit__(self, *exc: object) -> None:
        pass


async def bare_loop(make_client: Callable[[], Any], sim: ModbusSim, phase: Phase, props: int,
                    duration: float, warmup: int, helpers: tuple[int, ...]) -> None:
    from pymodbus.exceptions import ModbusException

    client = make_client()  # pymodbus clients want a running loop
    if not await client.connect():
        raise RuntimeError(f"bare client: cannot connect ({phase.line})")
    try:
        for i in range(warmup):
            await client.read_holding_registers(i % props, count=1, device_id=SLAVE)
        lat = phase.latencies
        clock = time.perf_counter
        i = 0
        with Window(sim, phase, helpers) as window:
            end = clock() + duration
            while True:
                t0 = clock()
                if t0 >= end:
                    break
                try:
                    result = await client.read_holding_registers(i % props, count=1,
                                                                 device_id=SLAVE)
                    if result.isError():
                        phase.errors += 1
                except ModbusException as exc:
                    phase.errors += 1
                    if len(phase.error_samples) < 3:
                        phase.error_samples.append(str(exc)[:120])
                    if not client.connected:
                        await client.connect()
                lat.append(clock() - t0)
                i += 1
            phase.reads = i
            window.close()
    finally:
        client.close()


class TimedDriver(ModbusDriver):
    """The real ModbusDriver; each read timed, an event once the warm-up reads are done,
    and a clean stop: once ``park`` is set, reads wait (before sending anything) until
    cancelled, so the runner can be cancelled with no request in flight on the line."""

    def __init__(self, warmup: int) -> None:
        super().__init__()
        self.latencies: list[float] | None = None  # None: not recording
        self.warmup = warmup
        self.warm = asyncio.Event()
        self.seen = 0
        self.park = False
        self.parked = asyncio.Event()

    async def read(self, device: DeviceSpec, prop: PropertySpec) -> Any:
        if self.park:
            self.parked.set()
            await asyncio.Event().wait()  # until the runner is cancelled
        t0 = time.perf_counter()
        try:
            return await super().read(device, prop)
        finally:
            if self.latencies is not None:
                self.latencies.append(time.perf_counter() - t0)
            self.seen += 1
            if self.seen == self.warmup:
                self.warm.set()


def device(protocol: dict[str, Any], props: int, collect_s: float, report_s: float
           ) -> DeviceSpec:
    return DeviceSpec(
        namespace="bench", name="meter", model="bench-meter", protocol_name="modbus",
        protocol=protocol,
        properties=tuple(PropertySpec(
            name=f"r{i:03d}", visitor={"register": "HoldingRegister", "offset": i,
                                       "dataType": "int16"},
            collect_cycle=collect_s, report_cycle=report_s) for i in range(props)))


async def mapper_loop(protocol: dict[str, Any], sim: ModbusSim, phase: Phase, props: int,
                      duration: float, warmup: int, report_s: float,
                      helpers: tuple[int, ...], profiler: Any = None) -> None:
    spec = device(protocol, props, MIN_CYCLE_MS / 1000, report_s)
    driver = TimedDriver(warmup)
    driver.check(spec)

    async def report(runner: DeviceRunner, names: list[str]) -> None:
        phase.reports += 1
        phase.reported_values += len(names)

    async def report_state(runner: DeviceRunner, state: str) -> None:
        phase.states.append(state)

    runner = DeviceRunner(spec, driver, report, report_state)
    # The runner sleeps (mappers.sdk.device.wait_any) only when nothing is due: time spent
    # there inside the window means the demand did not keep the line busy.
    real_wait_any = sdk_device.wait_any
    idle = [0.0, False]  # seconds waited in the window, recording

    async def timed_wait_any(seconds: float, *events: asyncio.Event) -> None:
        t0 = time.monotonic()
        try:
            await real_wait_any(seconds, *events)
        finally:
            if idle[1]:
                idle[0] += time.monotonic() - t0

    sdk_device.wait_any = timed_wait_any  # type: ignore[assignment]
    stopping = asyncio.Event()
    task = asyncio.create_task(runner.run(stopping), name="bench device")
    try:
        # Warm-up: connect and the first reads; bounded (a dead line fails the phase).
        await asyncio.wait_for(driver.warm.wait(), 10 + warmup * 2 * TIMEOUT_S)
        driver.latencies = phase.latencies
        reports0 = (phase.reports, phase.reported_values)
        with Window(sim, phase, helpers) as window:
            reads0, errors0 = runner.reads, runner.read_errors
            idle[1] = True
            if profiler is not None:
                profiler.enable()
            await asyncio.sleep(duration)  # the measured window: the runner polls meanwhile
            if profiler is not None:
                profiler.disable()
            idle[1] = False
            phase.reads = runner.reads - reads0
            phase.errors = runner.read_errors - errors0
            window.close()
        driver.latencies = None
        phase.reports -= reports0[0]
        phase.reported_values -= reports0[1]
        phase.error_samples = sorted({r.error for r in runner.readings.values() if r.error})[:3]
        # Stop between two reads: the next read parks (bounded: one read plus its timeout).
        driver.park = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(driver.parked.wait(), 2 * TIMEOUT_S + 1)
        phase.idle_s = idle[0]
    finally:
        sdk_device.wait_any = real_wait_any  # type: ignore[assignment]
        stopping.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await driver.close()


# ---------------------------------------------------------------- phases

def seed(sim: ModbusSim, props: int) -> None:
    sim.set_holding(SLAVE, 0, [(1000 + i) & 0xFFFF for i in range(props)])


def measure(args: argparse.Namespace, sim: ModbusSim, label: str,
            make_client: Callable[[], Any], protocol: dict[str, Any],
            results: list[Phase], helpers: tuple[int, ...] = (), profiler: Any = None) -> None:
    """``--rounds`` windows per client, ``--duration`` / ``--rounds`` seconds each, the order
    flipped every round (ABBA...), so that drift, warm-up and other load on the machine fall
    on both clients alike."""
    window = args.duration / args.rounds
    for rnd in range(args.rounds):
        order = ("bare", "mapper") if rnd % 2 == 0 else ("mapper", "bare")
        for client in order:
            phase = Phase(label, client, rnd)
            if client == "bare":
                asyncio.run(bare_loop(make_client, sim, phase, args.properties, window,
                                      args.warmup, helpers))
            else:
                asyncio.run(mapper_loop(protocol, sim, phase, args.properties, window,
                                        args.warmup, args.report_cycle_ms / 1000, helpers,
                                        profiler))
            results.append(phase)
            log(f"{label} round {rnd + 1} {client}: {phase.per_s:,.1f} reads/s")


def run_tcp(args: argparse.Namespace, results: list[Phase]) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    sim = ModbusSim.tcp(devices=[SLAVE], size=max(100, args.properties))
    seed(sim, args.properties)
    with sim:
        log(f"TCP: pymodbus server on 127.0.0.1:{sim.port} (pid {sim.pid})")

        def client() -> Any:
            return AsyncModbusTcpClient(sim.host, port=sim.port, timeout=TIMEOUT_S, retries=0,
                                        reconnect_delay=0)

        protocol = {"communicateMode": "TCP", "ip": sim.host, "port": sim.port,
                    "slaveID": SLAVE, "timeout": int(TIMEOUT_S * 1000)}
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
        measure(args, sim, "TCP", client, protocol, results, profiler=profiler)
        if profiler is not None:
            import io
            import pstats

            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(30)
            print("\n## cProfile of the mapper's TCP windows (by own time, then cumulative)\n",
                  file=sys.stderr)
            print(out.getvalue(), file=sys.stderr)


def run_rtu(args: argparse.Namespace, model: LineModel, results: list[Phase]) -> None:
    from pymodbus.client import AsyncModbusSerialClient
    from pymodbus.framer import FramerType

    baud = model.baud
    label = f"RTU {baud}"
    with SerialPair() as line:
        sim = ModbusSim.rtu(line.a, baudrate=baud, devices=[SLAVE], peer=line.b,
                            size=max(100, args.properties),
                            response_delay=model.transaction_s)
        seed(sim, args.properties)
        with sim:
            log(f"{label}: pymodbus RTU server on {line.a} (pid {sim.pid}), master on "
                f"{line.b}, answers delayed {1000 * model.transaction_s:.3f} ms")

            def client() -> Any:
                return AsyncModbusSerialClient(str(line.b), framer=FramerType.RTU,
                                               baudrate=baud, timeout=TIMEOUT_S, retries=0,
                                               reconnect_delay=0)

            protocol = {"communicateMode": "RTU", "serialPort": str(line.b),
                        "baudRate": baud, "slaveID": SLAVE, "timeout": int(TIMEOUT_S * 1000)}
            helpers = (line.proc.pid,) if line.proc is not None else ()
            measure(args, sim, label, client, protocol, results, helpers)


# ---------------------------------------------------------------- report

def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def machine_facts() -> dict[str, str]:
    return {
        "CPUs": f"{len(os.sched_getaffinity(0))} usable (os.cpu_count {os.cpu_count()})",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "pymodbus": version("pymodbus"),
        "pyserial": version("pyserial"),
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def pooled(phases: list[Phase]) -> Phase:
    """One client on one line over all rounds: counts and times summed, latencies pooled."""
    out = Phase(phases[0].line, phases[0].client, -1)
    for p in phases:
        out.reads += p.reads
        out.errors += p.errors
        out.seconds += p.seconds
        out.latencies.extend(p.latencies)
        out.server_reads += p.server_reads
        out.client_cpu_s += p.client_cpu_s
        out.server_cpu_s += p.server_cpu_s
        out.others_cpu_s += p.others_cpu_s
        out.reports += p.reports
        out.idle_s += p.idle_s
        out.reported_values += p.reported_values
        out.states.extend(s for s in p.states if s not in out.states)
        out.error_samples.extend(e for e in p.error_samples if e not in out.error_samples)
    return out


def report(results: list[Phase], models: dict[str, LineModel], args: argparse.Namespace,
           facts: dict[str, str]) -> None:
    print()
    print("## Machine")
    for key, value in facts.items():
        print(f"- {key}: {value}")
    print()
    print(f"## Modbus polling: {args.properties} HoldingRegister int16 properties (1 register "
          f"each); per client and line {args.rounds} windows of "
          f"{args.duration / args.rounds:g} s, pooled (rounds alternate which client goes "
          "first)")
    print()
    print("| line | client | reads/s | % of line rate | P50 ms | P99 ms | errors "
          "| reads/s seen by the server | client CPU µs/read | server CPU µs/read "
          "| other load, cores |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    names = {"bare": "bare pymodbus loop (baseline)",
             "mapper": "mapper: DeviceRunner + ModbusDriver"}
    lines = list(dict.fromkeys(p.line for p in results))
    for line in lines:
        model = models.get(line)
        if model is not None:
            print(f"| {line} | line rate (theoretical, 8N1, t3.5 {1000 * model.gap_s:.3f} ms) "
                  f"| {model.max_per_s:,.1f} | 100% | {1000 * model.transaction_s:.2f} | "
                  f"{1000 * model.transaction_s:.2f} | | | | | |")
        by_client = {c: pooled([p for p in results if p.line == line and p.client == c])
                     for c in ("bare", "mapper")
                     if any(p.line == line and p.client == c for p in results)}
        for client in ("bare", "mapper"):
            p = by_client.get(client)
            if p is None:
                continue
            pct = f"{100 * p.per_s / model.max_per_s:.1f}%" if model else "-"
            print(f"| {line} | {names[client]} | {p.per_s:,.1f} | {pct} | "
                  f"{1000 * q(p.latencies, .5):.3f} | {1000 * q(p.latencies, .99):.3f} | "
                  f"{p.errors} | {p.server_reads / p.seconds if p.seconds else 0:,.1f} | "
                  f"{p.cpu_us(p.client_cpu_s):,.0f} | {p.cpu_us(p.server_cpu_s):,.0f} | "
                  f"{p.others_cpu_s / p.seconds if p.seconds else 0:.2f} |")
        b, m = by_client.get("bare"), by_client.get("mapper")
        if b and m:
            print(f"| {line} | **mapper / bare** | **{ratio(m.per_s, b.per_s)}** | | "
                  f"{ratio(q(m.latencies, .5), q(b.latencies, .5))} | "
                  f"{ratio(q(m.latencies, .99), q(b.latencies, .99))} | | | "
                  f"{ratio(m.cpu_us(m.client_cpu_s), b.cpu_us(b.client_cpu_s))} | "
                  f"{ratio(m.cpu_us(m.server_cpu_s), b.cpu_us(b.server_cpu_s))} | |")
    print()
    demand = args.properties / (MIN_CYCLE_MS / 1000)
    print("Notes")
    print()
    print(f"- Mapper demand: {args.properties} properties every {MIN_CYCLE_MS} ms "
          f"(MIN_CYCLE_MS) = {demand:,.0f} reads/s wanted, more than any line here serves, "
          f"so the runner reads back to back; report cycle {args.report_cycle_ms:g} ms, the "
          "report callback only counts. Latency is timed around ModbusDriver.read "
          "(bare: around read_holding_registers).")
    print("- RTU lines are EMULATED: socat PTY pair, and a PTY ignores the baud rate (bytes "
          "arrive at once), so the server delays each answer by the on-wire time of one "
          f"transaction: ({REQUEST_BYTES} + {1 + 1 + 1 + 2 + 2} bytes) x {BITS_PER_CHAR} "
          f"bits/byte (8N1) / baud + 2 x t3.5 (t3.5: "
          + ("3.5 characters up to 19200 baud, 1.75 ms above, as the Modbus serial-line spec "
             "recommends" if args.gap == "spec" else "3.5 characters at every baud")
          + "). Reads/s can therefore not exceed the theoretical line rate; the gap to it is "
          "software time (client + server) added on top of the wire time.")
    for line, model in models.items():
        other = LineModel(model.baud, "chars" if args.gap == "spec" else "spec")
        print(f"- {line}: emulated transaction {1000 * model.transaction_s:.3f} ms "
              f"(frames {1000 * (REQUEST_BYTES + model.answer_bytes) * model.char_s:.3f} ms + "
              f"gaps {2000 * model.gap_s:.3f} ms) -> {model.max_per_s:,.1f} transactions/s"
              + (f"; with t3.5 = {'3.5 characters' if other.gap_model == 'chars' else 'spec'}"
                 f" it would be {other.max_per_s:,.1f}/s" if abs(other.transaction_s
                                                             - model.transaction_s) > 1e-9
                 else "") + ".")
    for line in lines:
        rounds = [f"{p.client} {p.per_s:,.1f}" for p in results if p.line == line]
        print(f"- {line}, reads/s per measurement in run order: {', '.join(rounds)}.")
    for p in (pooled([r for r in results if r.line == line and r.client == c])
              for line in lines for c in ("bare", "mapper")
              if any(r.line == line and r.client == c for r in results)):
        extra = []
        if p.client == "mapper":
            extra.append(f"{p.reports} reports ({p.reported_values} values)")
            if p.per_s:
                extra.append(f"one pass over the {args.properties} properties takes "
                             f"{args.properties / p.per_s:.2f} s at this rate (the runner "
                             "reports between passes, so not more often than that)")
            busy = 1 - p.idle_s / p.seconds if p.seconds else 0
            extra.append(f"runner busy {100 * busy:.1f}% of the window"
                         + ("" if busy > 0.99 else " -- NOT saturated: the demand "
                            f"({args.properties} x 100/s) is below what this line serves, "
                            "raise --properties"))
            if p.states:
                extra.append(f"states {' -> '.join(p.states)}")
        if p.server_reads != p.reads:
            extra.append(f"client counted {p.reads} reads, server {p.server_reads}")
        if p.error_samples:
            extra.append("errors: " + "; ".join(p.error_samples))
        if extra:
            print(f"- {p.line} {p.client}: " + "; ".join(extra))


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6.0,
                        help="measured seconds per client and line, split into --rounds "
                             "windows (default 6; 3 lines x 2 clients)")
    parser.add_argument("--properties", type=int, default=200,
                        help="properties (registers) of the one device; at the 10 ms "
                             "cycle P x 100 reads/s are wanted (default 200)")
    parser.add_argument("--bauds", default="9600,115200",
                        help="RTU baud rates, comma-separated; empty: TCP only "
                             "(default 9600,115200)")
    parser.add_argument("--gap", choices=("spec", "chars"), default="spec",
                        help="t3.5 inter-frame gap: spec (3.5 chars, 1.75 ms above 19200 "
                             "baud; default) or chars (3.5 chars at every baud)")
    parser.add_argument("--report-cycle-ms", type=float, default=1000.0,
                        help="the properties' report cycle, ms (default 1000)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="windows per client and line; which client goes first flips "
                             "each round (default 4)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="reads before each window starts (default 20)")
    parser.add_argument("--skip-tcp", action="store_true", help="RTU only")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the mapper's TCP window; top functions to stderr")
    args = parser.parse_args(argv)
    if not 0.5 <= args.duration <= 600:
        parser.error("--duration must be 0.5-600 s")
    if args.duration / max(1, args.rounds) < 0.25:
        parser.error("--duration / --rounds must be at least 0.25 s")
    if not 1 <= args.properties <= 1000:
        parser.error("--properties must be 1-1000")
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds must be 1-50")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1")
    if args.report_cycle_ms < MIN_CYCLE_MS:
        parser.error(f"--report-cycle-ms must be at least {MIN_CYCLE_MS}")
    try:
        args.baud_list = [int(b) for b in args.bauds.split(",") if b.strip()]
    except ValueError:
        parser.error("--bauds: comma-separated integers")
    if any(not 300 <= b <= 4_000_000 for b in args.baud_list):
        parser.error("--bauds: each 300-4000000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = modbus_available(serial=bool(args.baud_list))
    if why:
        print(f"modbus_polling: {why}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    facts = machine_facts()
    results: list[Phase] = []
    models: dict[str, LineModel] = {}
    began = time.monotonic()
    failed = True
    try:
        if not args.skip_tcp:
            run_tcp(args, results)
        for baud in args.baud_list:
            models[f"RTU {baud}"] = model = LineModel(baud, args.gap)
            run_rtu(args, model, results)
        failed = False
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"interrupted ({exc or 'SIGINT'}): everything started was stopped")
    except Exception as exc:
        log(f"benchmark failed: {type(exc).__name__}: {exc}")
    if results:
        report(results, models, args, facts)
        print(f"\n(total run time {time.monotonic() - began:.0f}s"
              f"{'; INCOMPLETE: the run failed' if failed else ''})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
