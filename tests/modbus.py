"""Real Modbus devices for mapper tests: pymodbus servers in their own processes, over TCP or
over a serial line made of a socat PTY pair.

``ModbusSim`` runs a real pymodbus server (``ModbusTcpServer`` or ``ModbusSerialServer`` with
the RTU framer) in a child process (``python -m tests.modbus SERVE CONFIG``), so a test can
kill and restart it and it never shares the test's event loop. It serves one or more device
ids, each with ``size`` coils, discrete inputs, holding registers and input registers
(protocol address 0 is address 0). A control channel (line-delimited JSON over a loopback
TCP socket that the child serves next to the Modbus server, never over the serial line)
reads and writes the simulated tables while the server runs, records the requests the server
received, and switches devices off-line (they stop answering) or slows every answer down.

    with SerialPair() as line, ModbusSim.rtu(line.a, devices=[1, 2], peer=line.b) as sim:
        sim.set_holding(2, 0, [222])
        ...  # a master on line.b (AsyncModbusSerialClient(line.b, framer=FramerType.RTU))
        assert not interleaved(sim.requests())

Semantics worth knowing:

- Values set through the control channel (``set_*``) are the device's configuration: they
  are also kept by this object and loaded again by ``start``/``restart``. Values written by
  Modbus masters live in the server process only and are lost on restart (a reboot).
  ``set_*`` before ``start`` only configures.
- ``requests()`` lists what the server received (``ModbusRequest``: device id, function code,
  address, count, receive and answer times on the system-wide monotonic clock, i.e. comparable
  with ``time.monotonic()`` in the test). ``stop`` fetches them first, so the list spans
  restarts; ``kill`` (a crash) loses those of the killed process.
- Unknown device ids: silent on RTU (as on a real line, nobody answers); on TCP pymodbus
  answers with exception 4. Off-line devices are silent on both.
- A PTY ignores the baud rate: bytes arrive at once, so a 9600 baud line is not slow here;
  ``response_delay`` makes each answer late instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support import SCALE, port_open

ROOT = Path(__file__).resolve().parents[1]
# 3.12.1: SimDevice/SimData/DataType servers (3.12.0 lacks pymodbus.simulator.DataType),
# device_id= (3.10), server.context.async_get/setValues.
# Checked: 3.12.1, 3.13.0, 3.14.0, 3.15.0, 3.16.1 (3.11.4 and 3.12.0 fail).
MIN_PYMODBUS = (3, 12, 1)
DEFAULT_SIZE = 1024  # coils, discrete inputs, holding and input registers per device
# table name -> the read function code the pymodbus datastore files it under
TABLES = {"coils": 1, "discrete_inputs": 2, "holding": 3, "input": 4}
BIT_TABLES = ("coils", "discrete_inputs")
SERVE = "serve"


class ModbusSimError(RuntimeError):
    """The simulator could not be started or did not answer its control channel."""


def _pymodbus_version() -> tuple[int, ...] | None:
    if importlib.util.find_spec("pymodbus") is None:
        return None
    from importlib.metadata import version

    parts = []
    for piece in version("pymodbus").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def modbus_available(serial: bool = True) -> str | None:
    """Why the Modbus harness cannot run here (None when it can). ``serial`` also requires
    socat and pyserial, for RTU over a PTY pair."""
    found = _pymodbus_version()
    if found is None:
        return "pymodbus is not installed (pip install 'pymodbus[serial]')"
    if found < MIN_PYMODBUS:
        return (f"pymodbus {'.'.join(map(str, found))} is too old "
                f"(need >= {'.'.join(map(str, MIN_PYMODBUS))})")
    if serial:
        if importlib.util.find_spec("serial") is None:
            return "pyserial is not installed (pip install 'pymodbus[serial]')"
        if shutil.which("socat") is None:
            return "socat is not installed (apt-get install -y socat)"
    return None


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL and wait."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout * SCALE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10 * SCALE)
    return int(proc.returncode)


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM it when the test process dies (Linux prctl
    PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, limit: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-limit:]
    return ""


# --------------------------------------------------------------------------- serial line


class SerialPair:
    """A null-modem cable: ``socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B``.

    Whatever is written to ``.a`` is read from ``.b`` and back. Either end may be opened,
    closed and opened again while socat runs. ``stop`` ends socat and removes the links."""

    def __init__(self, start_timeout: float = 10.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="moorage-tty-"))
        self.a = self.dir / "A"
        self.b = self.dir / "B"
        self.log_path = self.dir / "socat.log"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.timings: dict[str, float] = {}

    def start(self) -> SerialPair:
        if self.proc is not None and self.proc.poll() is None:
            return self
        begun = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)  # stop() removed it
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["socat", "-d", "-d", f"pty,raw,echo=0,link={self.a}",
                 f"pty,raw,echo=0,link={self.b}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                # only from the main thread: PDEATHSIG fires when the starting thread ends
                preexec_fn=_die_with_parent
                if threading.current_thread() is threading.main_thread() else None)
        deadline = time.monotonic() + self.start_timeout * SCALE
        # socat logs this once both PTYs (and their links) exist.
        while not (self.a.exists() and self.b.exists()
                   and "starting data transfer loop" in _tail(self.log_path)):
            if self.proc.poll() is not None:
                raise ModbusSimError(f"socat exited with {self.proc.returncode}:\n"
                                     f"{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ModbusSimError(f"socat did not create {self.a} and {self.b} within "
                                     f"{self.start_timeout * SCALE:.0f}s:\n{_tail(self.log_path)}")
            time.sleep(0.005)
        self.timings["start"] = time.monotonic() - begun
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, 5.0)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SerialPair:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ModbusRequest:
    """One request as the server received it. Times are ``time.monotonic()`` values
    (CLOCK_MONOTONIC is system-wide, so they compare with the test's own)."""

    device_id: int
    function_code: int
    address: int
    count: int
    received: float
    answered: float | None  # when the answer was sent; None: no answer
    finished: float | None  # answered, or dropped unanswered (off-line/unknown device);
    #                         None: the server never finished it
    exception: int | None  # the exception code of the answer, if it was one
    pid: int  # the server process that received it (changes on restart)

    def busy_until(self, timeout: float | None = None) -> float:
        """Until when a well-behaved master must stay quiet after sending this request:
        its answer; for a request left unanswered on purpose, the master's ``timeout``
        when given (else the moment the server dropped it); forever if the server never
        finished it (it got confused)."""
        if self.answered is not None:
            return self.answered
        if self.finished is None:
            return math.inf
        return self.received + timeout if timeout is not None else self.finished


def interleaved(requests: Sequence[ModbusRequest], timeout: float | None = None
                ) -> list[tuple[ModbusRequest, ModbusRequest]]:
    """Pairs (earlier, later) where ``later`` reached the server while ``earlier`` was
    still pending (see ``ModbusRequest.busy_until``): a master that talked over a pending
    request. Empty when the master sent strictly one request at a time."""
    found = []
    pending: ModbusRequest | None = None  # the earlier request that ends last
    for request in sorted(requests, key=lambda r: r.received):
        if pending is not None and request.received < pending.busy_until(timeout):
            found.append((pending, request))
        if pending is None or request.busy_until(timeout) > pending.busy_until(timeout):
            pending = request
    return found


# --------------------------------------------------------------------------- simulator


@dataclass
class ModbusSim:
    """A pymodbus server in its own process; see the module docstring."""

    mode: str  # "tcp" or "rtu"
    devices: list[int]
    host: str = "127.0.0.1"
    port: int = 0  # TCP: 0 picks a free port on the first start; restarts keep it
    serial_port: str = ""
    baudrate: int = 9600
    peer: str | None = None  # RTU: the other end of the line, for the start probe
    size: int = DEFAULT_SIZE
    response_delay: float = 0.0
    start_timeout: float = 15.0
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    control_port: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("tcp", "rtu"):
            raise ValueError(f"mode must be 'tcp' or 'rtu', not {self.mode!r}")
        if not self.devices or any(not 0 <= d <= 247 for d in self.devices):
            raise ValueError(f"device ids must be 0..247: {self.devices}")
        if self.size < 100:
            raise ValueError("size must be at least 100")
        self._own_dir: Path | None = None
        if self.log_path is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="moorage-modbus-"))
            self.log_path = self._own_dir / "server.log"
        self._seed: dict[int, dict[str, dict[int, int]]] = {
            d: {t: {} for t in TABLES} for d in self.devices}
        self._offline: set[int] = set()
        self._history: list[ModbusRequest] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: Any = None

    # ----------------------------------------------------------------- constructors

    @classmethod
    def tcp(cls, devices: Iterable[int] = (1,), port: int = 0, **kwargs: Any) -> ModbusSim:
        return cls("tcp", list(devices), port=port, **kwargs)

    @classmethod
    def rtu(cls, port_path: str | os.PathLike[str], baudrate: int = 9600,
            devices: Iterable[int] = (1, 2), peer: str | os.PathLike[str] | None = None,
            **kwargs: Any) -> ModbusSim:
        return cls("rtu", list(devices), serial_port=str(port_path), baudrate=baudrate,
                   peer=str(peer) if peer is not None else None, **kwargs)

    # ----------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc else None

    def log(self) -> str:
        assert self.log_path is not None
        return _tail(self.log_path, 20000)

    def _config(self) -> dict[str, Any]:
        return {"mode": self.mode, "host": self.host, "port": self.port,
                "serial_port": self.serial_port, "baudrate": self.baudrate,
                "devices": self.devices, "size": self.size,
                "response_delay": self.response_delay, "offline": sorted(self._offline),
                "seed": {str(d): {t: {str(a): v for a, v in vals.items()}
                                  for t, vals in tables.items()}
                         for d, tables in self._seed.items()}}

    def start(self, probe: bool = True) -> ModbusSim:
        """Start the server and wait until it serves: the TCP port accepts, or (RTU with a
        ``peer``) a real read over the line is answered. Pass ``probe=False`` when another
        master already has the peer open (two masters on one PTY steal each other's bytes):
        then the server's own report that it opened the port is trusted."""
        if self.running:
            return self
        assert self.log_path is not None
        begun = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(
                   p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        with self.log_path.open("ab") as log:
            log.write(f"---- moorage tests: starting {self.mode} modbus server at "
                      f"{time.ctime()}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.modbus", SERVE, json.dumps(self._config())],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, start_new_session=True)
        try:
            ready = self._wait_ready()
            self.control_port = int(ready["control"])
            if self.mode == "tcp":
                self.port = int(ready["port"])
            self._connect_control()
            if self.mode == "tcp":
                deadline = time.monotonic() + self.start_timeout * SCALE
                while not port_open(self.port, self.host):
                    if time.monotonic() > deadline:
                        raise ModbusSimError(f"port {self.port} does not accept:\n{self.log()}")
                    time.sleep(0.005)
            elif probe and self.peer:
                self._probe_serial()
        except BaseException:
            self._terminate(kill=True)
            raise
        self.timings["start"] = time.monotonic() - begun
        return self

    def _wait_ready(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout * SCALE
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ModbusSimError(f"modbus server not ready within "
                                         f"{self.start_timeout * SCALE:.0f}s:\n{self.log()}")
                if selector.select(left):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        self.proc.wait(5 * SCALE)
                        raise ModbusSimError(f"modbus server exited with "
                                             f"{self.proc.returncode} while starting:\n"
                                             f"{self.log()}")
                    buffer += chunk
        return dict(json.loads(buffer.split(b"\n", 1)[0]))

    def _probe_serial(self) -> None:
        from pymodbus.client import ModbusSerialClient
        from pymodbus.framer import FramerType

        online = [d for d in self.devices if d not in self._offline and d != 0]
        if not online:
            return
        deadline = time.monotonic() + self.start_timeout * SCALE
        last = ""
        client = ModbusSerialClient(self.peer or "", framer=FramerType.RTU,
                                    baudrate=self.baudrate, timeout=0.5, retries=0)
        try:
            while True:
                if client.connect():
                    try:
                        result = client.read_holding_registers(0, count=1,
                                                               device_id=online[0])
                        if not result.isError():
                            break
                        last = str(result)
                    except Exception as exc:  # not answering yet
                        last = repr(exc)
                else:
                    time.sleep(0.02)  # the port cannot be opened (yet)
                if self.proc is None or self.proc.poll() is not None or \
                        time.monotonic() > deadline:
                    raise ModbusSimError(f"modbus server does not answer on {self.peer} "
                                         f"(last: {last or '-'}):\n{self.log()}")
        finally:
            client.close()
        self._control("requests", clear=True)  # the probe is not the test's traffic

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: keep its request records, then SIGTERM, then SIGKILL after
        ``timeout``."""
        if self.running:
            with contextlib.suppress(ModbusSimError, OSError):
                self._history.extend(self._fetch_requests(clear=True))
        self._terminate(kill=False, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the server (a crash or power loss): its request records are lost."""
        self._terminate(kill=True)

    def _terminate(self, kill: bool, timeout: float = 5.0) -> None:
        begun = time.monotonic()
        self._disconnect_control()
        if self.proc is None:
            return
        if kill and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        _stop_process(self.proc, timeout)
        self.timings["stop"] = time.monotonic() - begun

    def restart(self, probe: bool = True) -> ModbusSim:
        begun = time.monotonic()
        self.stop()
        self.start(probe=probe)
        self.timings["restart"] = time.monotonic() - begun
        return self

    def close(self) -> None:
        self.stop()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> ModbusSim:
        try:
            if not self.running:
                self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ----------------------------------------------------------------- control channel

    def _connect_control(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.control_port), timeout=5 * SCALE)
        self._sock = sock
        self._reader = sock.makefile("rb")

    def _disconnect_control(self) -> None:
        with self._lock:
            if self._reader is not None:
                with contextlib.suppress(OSError):
                    self._reader.close()
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
            self._sock = self._reader = None

    def _control(self, op: str, **args: Any) -> Any:
        with self._lock:
            if self._sock is None or not self.running:
                raise ModbusSimError(f"modbus server is not running (control {op})")
            try:
                self._sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
                line = self._reader.readline()
            except OSError as exc:
                raise ModbusSimError(f"control {op} failed: {exc!r}\n{self.log()}") from exc
        if not line:
            raise ModbusSimError(f"control channel closed during {op}:\n{self.log()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ModbusSimError(f"control {op} {args}: {reply.get('error')}")
        return reply.get("result")

    def _check(self, device: int, table: str, address: int, count: int) -> None:
        if device not in self.devices:
            raise ValueError(f"device {device} is not simulated here ({self.devices})")
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r} (one of {sorted(TABLES)})")
        if count < 1 or address < 0 or address + count > self.size:
            raise ValueError(f"{table} {address}..{address + count - 1} is outside "
                             f"0..{self.size - 1}")

    def set(self, table: str, device: int, address: int, values: Sequence[int | bool]) -> None:
        """Write ``values`` at ``address`` of ``table`` of ``device`` (and keep them as its
        configuration across restarts). Works before start too."""
        items = list(values)
        self._check(device, table, address, len(items))
        if table in BIT_TABLES:
            items = [bool(v) for v in items]
        elif any(isinstance(v, bool) or not 0 <= int(v) <= 0xFFFF for v in items):
            raise ValueError(f"register values must be 0..65535: {items}")
        for offset, value in enumerate(items):
            self._seed[device][table][address + offset] = int(value)
        if self.running:
            self._control("set", device=device, table=table, address=address, values=items)

    def get(self, table: str, device: int, address: int, count: int = 1) -> list[Any]:
        """Read ``count`` values of ``table`` of ``device`` from the running server."""
        self._check(device, table, address, count)
        return list(self._control("get", device=device, table=table, address=address,
                                  count=count))

    def set_holding(self, device: int, address: int, values: Sequence[int]) -> None:
        self.set("holding", device, address, values)

    def get_holding(self, device: int, address: int, count: int = 1) -> list[int]:
        return self.get("holding", device, address, count)

    def set_input(self, device: int, address: int, values: Sequence[int]) -> None:
        self.set("input", device, address, values)

    def get_input(self, device: int, address: int, count: int = 1) -> list[int]:
        return self.get("input", device, address, count)

    def set_coils(self, device: int, address: int, values: Sequence[bool]) -> None:
        self.set("coils", device, address, values)

    def get_coils(self, device: int, address: int, count: int = 1) -> list[bool]:
        return self.get("coils", device, address, count)

    def set_discrete(self, device: int, address: int, values: Sequence[bool]) -> None:
        self.set("discrete_inputs", device, address, values)

    def get_discrete(self, device: int, address: int, count: int = 1) -> list[bool]:
        return self.get("discrete_inputs", device, address, count)

    def set_offline(self, device: int, offline: bool = True) -> None:
        """An off-line device does not answer at all (the master times out)."""
        if device not in self.devices:
            raise ValueError(f"device {device} is not simulated here ({self.devices})")
        (self._offline.add if offline else self._offline.discard)(device)
        if self.running:
            self._control("offline", device=device, offline=offline)

    def set_response_delay(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (once per request)."""
        self.response_delay = float(seconds)
        if self.running:
            self._control("delay", seconds=self.response_delay)

    def _fetch_requests(self, clear: bool) -> list[ModbusRequest]:
        return [ModbusRequest(**r) for r in self._control("requests", clear=clear)]

    def requests(self, clear: bool = False) -> list[ModbusRequest]:
        """Requests received since the first start (or the last clear), oldest first."""
        current = self._fetch_requests(clear) if self.running else []
        found = [*self._history, *current]
        if clear:
            self._history = []
        return found

    def clear_requests(self) -> None:
        self.requests(clear=True)


# --------------------------------------------------------------------------- server side
# Everything below runs in the child process.


class _ServerState:
    def __init__(self, config: dict[str, Any]) -> None:
        self.offline = {int(d) for d in config["offline"]}
        self.known = {int(d) for d in config["devices"]}
        self.rtu = config["mode"] == "rtu"
        self.delay = float(config["response_delay"])
        self.records: list[dict[str, Any]] = []
        # requests not answered yet: [record, transaction id, delayed already]
        self.open: list[list[Any]] = []

    def trace_pdu(self, sending: bool, pdu: Any) -> Any:
        now = time.monotonic()
        if not sending:
            record = {"device_id": int(pdu.dev_id), "function_code": int(pdu.function_code),
                      "address": int(getattr(pdu, "address", 0) or 0),
                      "count": int(getattr(pdu, "count", 0) or 0), "received": now,
                      "answered": None, "finished": None, "exception": None,
                      "pid": os.getpid()}
            self.records.append(record)
            self.open.append([record, int(pdu.transaction_id), False])
            return pdu
        code = int(pdu.function_code) & 0x7F
        for index, (record, tid, _) in enumerate(self.open):
            if (record["device_id"] == pdu.dev_id and tid == pdu.transaction_id
                    and record["function_code"] == code):
                record["answered"] = record["finished"] = now
                if int(pdu.function_code) & 0x80:
                    record["exception"] = int(getattr(pdu, "exception_code", 0) or 0)
                del self.open[index]
                break
        return pdu


class _Context:
    """Wraps the server's datastore for requests from the line: off-line devices (and on
    RTU unknown ones) raise NoSuchIdException, which the server (ignore_missing_devices)
    answers with silence; answers are delayed by ``state.delay``."""

    def __init__(self, core: Any, state: _ServerState, missing: type[Exception]) -> None:
        self.core = core
        self.state = state
        self.missing = missing

    def device_ids(self) -> list[int]:
        return list(self.core.device_ids())

    async def _gate(self, device_id: int) -> None:
        if device_id in self.state.offline or (self.state.rtu and device_id not in
                                                self.state.known):
            pending = [e for e in self.state.open if e[0]["device_id"] == device_id]
            if pending:  # it will never be answered: do not pair it with a later answer
                pending[-1][0]["finished"] = time.monotonic()
                self.state.open.remove(pending[-1])
            raise self.missing(f"device {device_id} is off-line")
        if self.state.delay > 0:
            pending = [e for e in self.state.open if e[0]["device_id"] == device_id]
            if pending and not pending[-1][2]:
                pending[-1][2] = True
                await asyncio.sleep(self.state.delay)

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> Any:
        await self._gate(device_id)
        return await self.core.async_getValues(device_id, func_code, address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Any) -> Any:
        await self._gate(device_id)
        return await self.core.async_setValues(device_id, func_code, address, values)


def _sim_device(device_id: int, size: int) -> Any:
    from pymodbus.simulator import DataType, SimData, SimDevice

    def bits() -> list[Any]:
        return [SimData(0, count=size, values=False, datatype=DataType.BITS)]

    def registers() -> list[Any]:
        return [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)]

    # Four separate blocks: (coils, discrete inputs, holding, input), bit-addressed coils.
    return SimDevice(device_id, simdata=(bits(), bits(), registers(), registers()))


async def _serve(config: dict[str, Any]) -> int:
    from pymodbus.exceptions import NoSuchIdException
    from pymodbus.framer import FramerType
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

    state = _ServerState(config)
    devices = [_sim_device(int(d), int(config["size"])) for d in config["devices"]]
    server: Any
    if config["mode"] == "tcp":
        server = ModbusTcpServer(devices, address=(config["host"], int(config["port"])),
                                 trace_pdu=state.trace_pdu, ignore_missing_devices=True)
    else:
        server = ModbusSerialServer(devices, framer=FramerType.RTU,
                                    port=config["serial_port"],
                                    baudrate=int(config["baudrate"]),
                                    trace_pdu=state.trace_pdu, ignore_missing_devices=True)
    core = server.context
    server.context = _Context(core, state, NoSuchIdException)
    for device, tables in config["seed"].items():
        for table, values in tables.items():
            for address, value in values.items():
                await core.async_setValues(int(device), TABLES[table], int(address),
                                           [bool(value)] if table in BIT_TABLES else [value])

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            try:
                reply = {"ok": True, "result": await _control_op(json.loads(line), core,
                                                                 state)}
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()

    await server.serve_forever(background=True)
    port = 0
    if config["mode"] == "tcp":
        port = int(server.transport.sockets[0].getsockname()[1])
    control_server = await asyncio.start_server(control, "127.0.0.1", 0)
    control_port = int(control_server.sockets[0].getsockname()[1])

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)

    def parent_gone() -> None:  # stdin is a pipe from the test: EOF when it closes or dies
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            done.set()

    loop.add_reader(sys.stdin.fileno(), parent_gone)
    sys.stdout.write(json.dumps({"ready": True, "port": port, "control": control_port,
                                 "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    await done.wait()
    control_server.close()
    await server.shutdown()
    return 0


async def _control_op(request: dict[str, Any], core: Any, state: _ServerState) -> Any:
    op = request["op"]
    if op == "ping":
        return os.getpid()
    if op in ("get", "set"):
        device, table = int(request["device"]), request["table"]
        if device not in state.known:
            raise KeyError(f"device {device} is not simulated")
        code, address = TABLES[table], int(request["address"])
        if op == "get":
            result = await core.async_getValues(device, code, address, int(request["count"]))
            if not isinstance(result, list):
                raise ValueError(f"{table} {address}: {result!r}")
            return [bool(v) for v in result] if table in BIT_TABLES else list(result)
        values = request["values"]
        result = await core.async_setValues(
            device, code, address, [bool(v) for v in values] if table in BIT_TABLES
            else [int(v) for v in values])
        if result:
            raise ValueError(f"{table} {address}: {result!r}")
        return None
    if op == "requests":
        records = list(state.records)
        if request.get("clear"):
            state.records.clear()
        return records
    if op == "offline":
        (state.offline.add if request["offline"] else state.offline.discard)(
            int(request["device"]))
        return None
    if op == "delay":
        state.delay = float(request["seconds"])
        return None
    raise ValueError(f"unknown op {op!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != SERVE:
        sys.stderr.write(f"usage: python -m tests.modbus {SERVE} CONFIG_JSON\n")
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(_serve(json.loads(argv[1])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
