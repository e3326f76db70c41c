#!/usr/bin/env python3
"""Hub connections: what N idle mTLS edge connections cost one cloudcore process.

    .venv/bin/python bench/hub_connections.py --nodes 2000 [--procs 3]

For one real cloudcore (``moorage init`` into a temp dir with free ports, then
the installed ``cloudcore --config ...`` console script, as tests/support.py
starts it), and then for a BASELINE measured the same way in the same run (a
bare ``websockets`` server with mutual TLS from ``certs.tls.server_context``,
compression off, a handler that only reads until close, on the stock asyncio
event loop, in its own process), this measures:

- handshakes/s while P simulator processes open N wss connections to
  ``/<project>/<node>/events``, each node with its OWN certificate (signed here
  with the cloud's CA via ``certs.pki``; one shared ECDSA key), each sending one
  node registration (edgehub's envelope) and then staying idle;
- server RSS per connection: (VmRSS with all N connected and idle - VmRSS
  before) / N, in KiB;
- server CPU while idle: utime+stime over a window with all N connected, as %
  of one core; and the simulators' own CPU seconds during the connect phase
  (they share the machine's cores with the server).

It prints the machine facts and a markdown table with one row per server plus
the cloudcore/baseline ratios, then a table of details. Only loopback
addresses are used. Everything started here (daemons, simulators) is stopped
at the end, also on Ctrl-C, SIGTERM or an error; every simulator loop is
bounded in count (attempts per node) and in time (deadlines).

Baseline settings that differ from websockets' defaults, chosen to compare
like with like: compression=None, listen backlog 4096 and keepalive pings
every 15 s (cloudcore's keepaliveInterval default). ``--servers
cloudcore,baseline,baseline-4k`` adds the same baseline with asyncio's TLS
read buffer at 4 KiB (cloudcore's size), which separates that buffer from
what cloudcore itself adds per connection.

cloudcore's config is left as ``moorage init`` writes it, except
modules.cloudHub.nodeLimit = N + 100. The simulated edges answer WebSocket
pings but send no keepalive messages, so cloudcore marks them NotReady once
nodeGracePeriod (40 s) has passed since their registration; when that happens
inside the measured window the report says so (``--node-grace-period`` moves it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROJECT_ID = "e632aba927ea4ac2b575ec1603d56f10"  # KubeEdge's default, as edgecore uses
KEEPALIVE = 15.0  # cloudcore's keepaliveInterval default; the baseline pings as often
SIM_SSL_BUFFER = 16 * 1024  # simulator only: stock asyncio gives each TLS conn 256 KiB
NODE_PREFIX = "sim-"


# ---------------------------------------------------------------- process helpers

def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def die_with_parent() -> None:
    """Linux: get SIGTERM when the process that started us goes away (a safety net)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _server_preexec() -> None:
    raise_nofile()
    die_with_parent()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat: other load on the box shows here."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_name(index: int) -> str:
    return f"{NODE_PREFIX}{index:05d}"


def chunks(total: int, parts: int) -> list[tuple[int, int]]:
    """Split range(total) into ``parts`` contiguous (first, count) pieces."""
    out, first = [], 0
    for i in range(parts):
        count = total // parts + (1 if i < total % parts else 0)
        if count:
            out.append((first, count))
        first += count
    return out


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: Any) -> None:
    """First Ctrl-C or SIGTERM: unwind into the cleanup; later ones must not interrupt it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


# ---------------------------------------------------------------- certificates

def sign_range(args: tuple[str, str, str, int, int]) -> float:
    """Pool worker: sign node certificates ``first .. first+count-1`` with the cloud's CA."""
    from certs import pki

    pki_dir, key_path, cert_dir, first, count = args
    started = time.monotonic()
    ca = pki.load_pair(pki.PairPaths(Path(pki_dir, "ca.crt"), Path(pki_dir, "ca.key")))
    public_key = pki.key_from_pem(Path(key_path).read_bytes()).public_key()
    for index in range(first, first + count):
        name = node_name(index)
        cert = pki.sign(ca, pki.node_subject(name), public_key,
                        lifetime=dt.timedelta(days=1), client=True)
        Path(cert_dir, f"{name}.crt").write_bytes(pki.cert_to_pem(cert))
    return time.monotonic() - started


def make_node_certs(pki_dir: Path, sim_dir: Path, nodes: int, procs: int) -> Path:
    """One shared key, one certificate per node (CN system:node:<name>, O system:nodes)."""
    from certs import pki
    from certs.files import write_private

    cert_dir = sim_dir / "certs"
    cert_dir.mkdir(parents=True)
    key_path = sim_dir / "node.key"
    write_private(key_path, pki.key_to_pem(pki.generate_key()))
    jobs = [(str(pki_dir), str(key_path), str(cert_dir), first, count)
            for first, count in chunks(nodes, procs)]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        pool.map(sign_range, jobs)
    return key_path


# ---------------------------------------------------------------- simulator (child process)

def _describe(exc: BaseException) -> str:
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        body = (exc.response.body or b"").decode("utf-8", "replace").strip().splitlines()
        return f"HTTP {exc.response.status_code}: {body[0][:120] if body else ''}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {str(exc)[:120]}"


def run_simulator(index: int, body: Any, first: int, count: int, opts: dict[str, Any],
                  ctrl: Connection) -> None:
    """The body of a simulator process (shared by the benchmarks)."""
    # Ctrl-C reaches the whole process group: the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    raise_nofile()
    from asyncio import sslproto

    # Hold thousands of TLS connections per process: small per-connection read buffer.
    sslproto.SSLProtocol.max_size = SIM_SSL_BUFFER
    try:
        asyncio.run(body(first, count, opts, ctrl))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            ctrl.send(("error", f"simulator {index}: {type(exc).__name__}: {exc}"))
        raise


@dataclass
class SimSetup:
    names: list[str]
    contexts: dict[str, ssl.SSLContext]
    template: str  # a registration Node object with @NODE@ for the name
    inbox: asyncio.Queue[tuple[str, Any]]


def prepare_simulator(first: int, count: int, opts: dict[str, Any],
                      ctrl: Connection) -> SimSetup:
    """TLS contexts for our nodes, the ready report, and the parent's commands as a queue."""
    from certs import tls
    from edgecore.nodeinfo import node_object

    prep_start = time.monotonic()
    names = [node_name(i) for i in range(first, first + count)]
    cert_dir = Path(opts["cert_dir"])
    contexts = {name: tls.client_context(ca_file=opts["ca_file"],
                                         cert_file=cert_dir / f"{name}.crt",
                                         key_file=opts["key_file"]) for name in names}
    template = json.dumps(node_object("@NODE@", "127.0.0.1", {}))
    ctrl.send(("ready", {"prepare_s": time.monotonic() - prep_start}))

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_ctrl() -> None:
        try:
            message = ctrl.recv()
        except (EOFError, OSError):  # the parent is gone: stop
            loop.remove_reader(ctrl.fileno())
            message = ("stop", None)
        inbox.put_nowait(message)

    loop.add_reader(ctrl.fileno(), on_ctrl)
    return SimSetup(names, contexts, template, inbox)


def simulate(index: int, first: int, count: int, opts: dict[str, Any], ctrl: Connection) -> None:
    """One simulator process: ``count`` edge nodes, each with its own certificate."""
    run_simulator(index, _simulate, first, count, opts, ctrl)


async def _simulate(first: int, count: int, opts: dict[str, Any], ctrl: Connection) -> None:
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed
    from websockets.protocol import State

    from moorage import envelope

    setup = prepare_simulator(first, count, opts, ctrl)
    names, contexts, template, inbox = (setup.names, setup.contexts, setup.template,
                                        setup.inbox)
    command, _ = await inbox.get()
    if command != "go":
        return

    go = time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    deadline = go + opts["connect_deadline"]
    gate = asyncio.Semaphore(opts["concurrency"])
    conns: dict[str, ClientConnection] = {}
    handshake_s: list[float] = []
    handshake_end: list[float] = []
    ack_s: list[float] = []
    attempt_errors: Counter[str] = Counter()
    final_errors: Counter[str] = Counter()
    tls_seen: Counter[str] = Counter()

    async def one(name: str) -> None:
        uri = f"wss://127.0.0.1:{opts['port']}/{PROJECT_ID}/{name}/events"
        ws: ClientConnection | None = None
        for attempt in range(opts["attempts"]):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            async with gate:
                started = time.monotonic()
                try:
                    ws = await connect(
                        uri, ssl=contexts[name], compression=None, proxy=None,
                        ping_interval=None, open_timeout=min(opts["open_timeout"], remaining),
                        close_timeout=2, max_queue=4, user_agent_header="moorage-bench-sim",
                        additional_headers={"node_id": name, "project_id": PROJECT_ID})
                except Exception as exc:
                    attempt_errors[_describe(exc)] += 1
                    ws = None
                else:
                    done = time.monotonic()
                    handshake_s.append(done - started)
                    handshake_end.append(done)
                    conns[name] = ws
                    ssl_object = ws.transport.get_extra_info("ssl_object")
                    if ssl_object is not None:
                        tls_seen[f"{ssl_object.version()} {ssl_object.cipher()[0]}"] += 1
            if ws is not None:
                break
            await asyncio.sleep(random.uniform(0, min(2.0, 0.2 * 2 ** attempt)))
        if ws is None:
            final_errors["never connected"] += 1
            return
        message = envelope.Message(source="edged", group=envelope.GROUP_RESOURCE,
                                   operation=envelope.INSERT, resource=f"default/node/{name}",
                                   content=json.loads(template.replace("@NODE@", name)))
        sent = time.monotonic()
        try:
            await ws.send(envelope.encode(message))
            if not opts["expect_ack"]:
                return
            raw = await asyncio.wait_for(ws.recv(), opts["ack_timeout"])
        except TimeoutError:
            final_errors["no registration ack in time"] += 1
            return
        except ConnectionClosed as exc:
            final_errors[f"closed around registration: {exc}"[:120]] += 1
            return
        reply = envelope.decode(raw)
        if reply.parent_msg_id == message.msg_id and reply.operation == envelope.RESPONSE:
            ack_s.append(time.monotonic() - sent)
        else:
            final_errors[f"registration answered {reply.operation}: {reply.content}"[:120]] += 1

    bound = opts["connect_deadline"] + opts["ack_timeout"] + 10
    tasks = [asyncio.create_task(one(name)) for name in names]
    _, late = await asyncio.wait(tasks, timeout=bound)
    for task in late:
        task.cancel()
    if late:
        final_errors["cancelled at the phase bound"] += len(late)
        await asyncio.wait(late, timeout=5)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            final_errors[f"simulator bug: {task.exception()!r}"[:120]] += 1
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ctrl.send(("connected", {
        "connected": len(conns), "go": go, "done": time.monotonic(),
        "handshake_s": handshake_s, "handshake_end": handshake_end, "ack_s": ack_s,
        "attempt_errors": dict(attempt_errors), "final_errors": dict(final_errors),
        "tls": dict(tls_seen),
        "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "rss_kib": rss_kib(os.getpid()),
    }))

    # Idle until told to stop (or the parent disappears).
    while (await inbox.get())[0] != "stop":
        pass
    still_open = sum(1 for ws in conns.values() if ws.state is State.OPEN)
    closing = [asyncio.create_task(ws.close()) for ws in conns.values()]
    slow: set[asyncio.Task[None]] = set()
    if closing:
        _, slow = await asyncio.wait(closing, timeout=opts["close_timeout"])
    for ws in conns.values():
        if ws.transport is not None and not ws.transport.is_closing():
            ws.transport.abort()
    for task in slow:
        task.cancel()
    ctrl.send(("closed", {"open_at_stop": still_open, "close_timeouts": len(slow)}))


# ---------------------------------------------------------------- baseline server (child mode)

def serve_baseline(port: int, pki_dir: Path, ssl_buffer_kib: int | None) -> int:
    """A bare websockets server with mutual TLS, stock asyncio loop; reads until close.

    ``ssl_buffer_kib`` (the optional ``baseline-4k`` server only) shrinks asyncio's
    per-connection TLS read buffer, to tell that buffer apart from everything else.
    """
    raise_nofile()
    if ssl_buffer_kib:
        from asyncio import sslproto

        sslproto.SSLProtocol.max_size = ssl_buffer_kib * 1024
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    from certs import tls

    context = tls.server_context(cert_file=pki_dir / "server.crt", key_file=pki_dir / "server.key",
                                 ca_file=pki_dir / "ca.crt", client_cert="required")

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        async with serve(handler, "127.0.0.1", port, ssl=context, compression=None,
                         backlog=4096, ping_interval=KEEPALIVE, ping_timeout=KEEPALIVE):
            print(f"baseline listening on wss://127.0.0.1:{port}", flush=True)
            await stopping.wait()

    asyncio.run(main())  # the stock event loop: that is the point of the baseline
    return 0


# ---------------------------------------------------------------- parent: servers

@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); log tail:\n"
                               + self.log()[-3000:])

    def wait_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {needle!r} in {timeout:.0f}s; log tail:\n"
                                   + self.log()[-3000:])
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop in {timeout:.0f}s after SIGTERM: killing it")
                self.proc.kill()
                self.proc.wait(10)


def spawn(name: str, argv: list[str], log_path: Path, env: dict[str, str], port: int) -> Daemon:
    with log_path.open("ab") as handle:
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=_server_preexec)
    return Daemon(name, proc, log_path, port)


def init_cloud(root: Path, env: dict[str, str]) -> tuple[Path, list[int]]:
    """``moorage init`` as tests/support.py runs it: free ports, loopback only."""
    ports = [free_port() for _ in range(3)]
    data_dir = root / "cloud"
    subprocess.run([str(BIN / "moorage"), "init", "--data-dir", str(data_dir),
                    "--advertise-address", "127.0.0.1", "--bind-address", "127.0.0.1",
                    "--websocket-port", str(ports[0]), "--https-port", str(ports[1]),
                    "--admin-port", str(ports[2])],
                   env=env, check=True, capture_output=True, timeout=60)
    return data_dir, ports


def configure_cloud(data_dir: Path, changes: dict[str, Any]) -> None:
    import yaml

    path = data_dir / "cloudcore.yaml"
    data = yaml.safe_load(path.read_text())
    data["modules"]["cloudHub"].update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def start_cloudcore(root: Path, data_dir: Path, hub_port: int, env: dict[str, str]) -> Daemon:
    daemon = spawn("cloudcore", [str(BIN / "cloudcore"), "--config",
                                 str(data_dir / "cloudcore.yaml")],
                   root / "cloudcore.log", env, hub_port)
    daemon.wait_log(" ready", 30)
    return daemon


def start_baseline(root: Path, data_dir: Path, env: dict[str, str], name: str) -> Daemon:
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-baseline",
            "--port", str(port), "--pki", str(data_dir / "pki")]
    if name == "baseline-4k":
        argv += ["--ssl-buffer-kib", "4"]
    daemon = spawn(name, argv, root / f"{name}.log", env, port)
    daemon.wait_log("baseline listening", 30)
    return daemon


# ---------------------------------------------------------------- parent: simulators

@dataclass
class Sim:
    index: int
    proc: Any  # multiprocessing.Process (spawn context)
    conn: Connection
    messages: dict[str, Any] = field(default_factory=dict)


def start_sims(pieces: list[tuple[int, int]], opts: dict[str, Any]) -> list[Sim]:
    ctx = mp.get_context("spawn")
    sims = []
    for index, (first, count) in enumerate(pieces):
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=simulate, args=(index, first, count, opts, child_end),
                           name=f"moorage-bench-sim-{index}", daemon=True)
        proc.start()
        child_end.close()
        sims.append(Sim(index, proc, parent_end))
    return sims


def collect(sims: list[Sim], kind: str, timeout: float, server: Daemon | None) -> list[Any]:
    """Wait for message ``kind`` from every simulator; fail on errors, deaths or timeout."""
    deadline = time.monotonic() + timeout
    waiting = {sim.conn: sim for sim in sims if kind not in sim.messages}
    while waiting:
        if server is not None:
            server.check()
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{len(waiting)} simulator(s) sent no {kind!r} in {timeout:.0f}s")
        for conn in wait_connections(list(waiting), timeout=min(left, 1.0)):
            sim = waiting[conn]  # type: ignore[index]
            try:
                what, payload = conn.recv()  # type: ignore[union-attr]
            except EOFError:
                sim.proc.join(2)
                raise RuntimeError(f"simulator {sim.index} died "
                                   f"(exit code {sim.proc.exitcode})") from None
            if what == "error":
                raise RuntimeError(payload)
            sim.messages[what] = payload
            if what == kind:
                del waiting[conn]
    return [sim.messages[kind] for sim in sims]


def stop_sims(sims: list[Sim], timeout: float = 30.0) -> None:
    for sim in sims:
        with contextlib.suppress(Exception):
            sim.conn.send(("stop", None))
    deadline = time.monotonic() + timeout
    for sim in sims:
        sim.proc.join(max(0.1, deadline - time.monotonic()))
    for sim in sims:
        if sim.proc.is_alive():
            log(f"simulator {sim.index} still running: terminating it")
            sim.proc.terminate()
            sim.proc.join(5)
        if sim.proc.is_alive():
            sim.proc.kill()
            sim.proc.join(5)
        with contextlib.suppress(Exception):
            sim.conn.close()


# ---------------------------------------------------------------- parent: one measured phase

@dataclass
class Result:
    server: str
    nodes: int
    connected: int = 0
    handshakes_per_s: float = 0.0
    connect_wall_s: float = 0.0
    handshake_p50_ms: float = 0.0
    handshake_p99_ms: float = 0.0
    ack_p50_ms: float | None = None
    ack_p99_ms: float | None = None
    acked: int = 0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    rss_per_conn_kib: float = 0.0
    idle_cpu_pct: float = 0.0
    idle_window_s: float = 0.0
    machine_busy_pct: float = 0.0
    server_cpu_connect_s: float = 0.0
    sim_cpu_connect_s: list[float] = field(default_factory=list)
    sim_rss_mib: list[float] = field(default_factory=list)
    attempt_errors: Counter[str] = field(default_factory=Counter)
    final_errors: Counter[str] = field(default_factory=Counter)
    tls: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(server: Daemon, args: argparse.Namespace, pieces: list[tuple[int, int]],
            sim_opts: dict[str, Any]) -> Result:
    result = Result(server.name, args.nodes)
    opts = {**sim_opts, "port": server.port, "expect_ack": server.name == "cloudcore"}
    sims = start_sims(pieces, opts)
    try:
        prepared = collect(sims, "ready", 180, server)
        log(f"{server.name}: {len(sims)} simulators ready (TLS contexts built in "
            f"{max(p['prepare_s'] for p in prepared):.1f}s); server settling {args.settle:g}s")
        time.sleep(args.settle)
        result.rss_before_kib = rss_kib(server.pid)
        cpu_go = cpu_seconds(server.pid)
        go = time.monotonic()
        for sim in sims:
            sim.conn.send(("go", None))
        stats = collect(sims, "connected",
                        args.connect_deadline + args.ack_timeout + 60, server)
        result.server_cpu_connect_s = cpu_seconds(server.pid) - cpu_go
        ends = [t for s in stats for t in s["handshake_end"]]
        handshakes = [t for s in stats for t in s["handshake_s"]]
        acks = [t for s in stats for t in s["ack_s"]]
        ok = len(handshakes)
        result.connect_wall_s = (max(ends) - go) if ends else 0.0
        result.handshakes_per_s = ok / result.connect_wall_s if result.connect_wall_s else 0.0
        result.handshake_p50_ms = 1000 * quantile(handshakes, 0.50)
        result.handshake_p99_ms = 1000 * quantile(handshakes, 0.99)
        result.acked = len(acks)
        if acks:
            result.ack_p50_ms = 1000 * quantile(acks, 0.50)
            result.ack_p99_ms = 1000 * quantile(acks, 0.99)
        result.sim_cpu_connect_s = [s["cpu_s"] for s in stats]
        result.sim_rss_mib = [s["rss_kib"] / 1024 for s in stats]
        for s in stats:
            result.attempt_errors.update(s["attempt_errors"])
            result.final_errors.update(s["final_errors"])
            result.tls.update(s["tls"])
        log(f"{server.name}: {ok}/{args.nodes} connected in {result.connect_wall_s:.1f}s "
            f"({result.handshakes_per_s:.0f} handshakes/s)"
            + (f", {len(acks)} registrations acked" if opts["expect_ack"] else "")
            + f"; idle window {args.idle_window:g}s after {args.settle:g}s settling")

        not_ready_before = server.log().count("is NotReady")
        time.sleep(args.settle)
        cpu0, wall0, box0 = cpu_seconds(server.pid), time.monotonic(), machine_busy()
        time.sleep(args.idle_window)
        cpu1, wall1, box1 = cpu_seconds(server.pid), time.monotonic(), machine_busy()
        result.machine_busy_pct = (100 * len(os.sched_getaffinity(0))
                                   * (box1[0] - box0[0]) / max(1.0, box1[1] - box0[1]))
        result.rss_after_kib = rss_kib(server.pid)
        server.check()
        result.idle_window_s = wall1 - wall0
        result.idle_cpu_pct = 100 * (cpu1 - cpu0) / (wall1 - wall0)
        flipped = server.log().count("is NotReady") - not_ready_before
        if flipped:
            result.notes.append(f"{flipped} node(s) turned NotReady (nodeGracePeriod) during "
                                "the settle + idle window")

        for sim in sims:
            sim.conn.send(("stop", None))
        closed = collect(sims, "closed", sim_opts["close_timeout"] + 30, server)
        result.connected = sum(c["open_at_stop"] for c in closed)
        if result.connected < ok:
            result.notes.append(f"{ok - result.connected} connection(s) dropped while idle")
        if result.connected:
            result.rss_per_conn_kib = ((result.rss_after_kib - result.rss_before_kib)
                                       / result.connected)
        timeouts = sum(c["close_timeouts"] for c in closed)
        if timeouts:
            result.notes.append(f"{timeouts} closing handshake(s) did not finish in time")
    finally:
        stop_sims(sims)
    return result


# ---------------------------------------------------------------- report

def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report(results: list[Result], args: argparse.Namespace, facts: dict[str, str]) -> None:
    print()
    print("## Machine")
    for key, value in facts.items():
        print(f"- {key}: {value}")
    print()
    print(f"## Hub connections: N = {args.nodes} idle mTLS edge connections, "
          f"{args.procs} simulator processes, {args.concurrency} handshakes in flight each")
    print()
    print("| server | N connected | handshakes/s | RSS/conn KiB | idle CPU % |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        label = {"cloudcore": "cloudcore", "baseline": "bare websockets (baseline)",
                 "baseline-4k": "bare websockets, 4 KiB TLS buffer"}[r.server]
        print(f"| {label} | {r.connected:,} | {r.handshakes_per_s:,.0f} | "
              f"{r.rss_per_conn_kib:,.1f} | {r.idle_cpu_pct:.2f} |")
    by_name = {r.server: r for r in results}
    if "cloudcore" in by_name and "baseline" in by_name:
        c, b = by_name["cloudcore"], by_name["baseline"]
        print(f"| **cloudcore / baseline** | {ratio(c.connected, b.connected)} | "
              f"{ratio(c.handshakes_per_s, b.handshakes_per_s)} | "
              f"{ratio(c.rss_per_conn_kib, b.rss_per_conn_kib)} | "
              f"{ratio(c.idle_cpu_pct, b.idle_cpu_pct)} |")
    print()
    print("Details")
    print()
    print("| server | connect wall s | handshake p50 / p99 ms | registration ack p50 / p99 ms "
          "| server CPU s during connect (ms/handshake) | simulators' CPU s during connect "
          "| simulator RSS MiB | server RSS before -> after MiB | idle window s "
          "| whole machine busy in idle window, % of one core |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        per = 1000 * r.server_cpu_connect_s / r.connected if r.connected else 0
        acks = (f"{fmt(r.ack_p50_ms, 0)} / {fmt(r.ack_p99_ms, 0)} ({r.acked:,} acked)"
                if r.ack_p50_ms is not None else "- (no replies)")
        print(f"| {r.server} | {r.connect_wall_s:.1f} | {r.handshake_p50_ms:,.0f} / "
              f"{r.handshake_p99_ms:,.0f} | {acks} | {r.server_cpu_connect_s:.1f} ({per:.1f}) | "
              f"{sum(r.sim_cpu_connect_s):.1f} = "
              f"{' + '.join(f'{x:.1f}' for x in r.sim_cpu_connect_s)} | "
              f"{' / '.join(f'{x:.0f}' for x in r.sim_rss_mib)} | "
              f"{r.rss_before_kib / 1024:.1f} -> {r.rss_after_kib / 1024:.1f} | "
              f"{r.idle_window_s:.1f} | {r.machine_busy_pct:.1f} |")
    print()
    for r in results:
        print(f"- {r.server}: TLS {', '.join(f'{k} x{v}' for k, v in r.tls.items()) or '-'}")
        if r.attempt_errors:
            print("  - failed attempts: "
                  + "; ".join(f"{k} x{v}" for k, v in r.attempt_errors.most_common(5)))
        if r.final_errors:
            print("  - nodes not (fully) connected: "
                  + "; ".join(f"{k} x{v}" for k, v in r.final_errors.most_common(5)))
        for note in r.notes:
            print(f"  - {note}")


def machine_facts() -> dict[str, str]:
    import cryptography
    import websockets

    cpus = len(os.sched_getaffinity(0))
    return {
        "nproc": f"{cpus} (os.cpu_count {os.cpu_count()})",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "OpenSSL": ssl.OPENSSL_VERSION,
        "websockets": websockets.__version__,
        "cryptography": cryptography.__version__,
        "kernel": platform.release(),
        "RLIMIT_NOFILE": "/".join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE))),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, help="edge connections to open (up to 5,000)")
    parser.add_argument("--procs", type=int, default=3, help="simulator processes (default 3)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="handshakes in flight per simulator process (default 64)")
    parser.add_argument("--servers", default="cloudcore,baseline",
                        help="which servers to measure, in order (default cloudcore,baseline; "
                             "also baseline-4k: the baseline with a 4 KiB asyncio TLS read "
                             "buffer, cloudcore's size)")
    parser.add_argument("--idle-window", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds of quiet before each RSS/CPU reading (default 3)")
    parser.add_argument("--connect-deadline", type=float, default=150.0,
                        help="bound on the connect phase, seconds (default 150)")
    parser.add_argument("--attempts", type=int, default=3, help="connect attempts per node")
    parser.add_argument("--open-timeout", type=float, default=30.0,
                        help="per-attempt TLS + WebSocket handshake timeout, seconds")
    parser.add_argument("--ack-timeout", type=float, default=60.0,
                        help="wait for cloudcore's registration ack, seconds")
    parser.add_argument("--node-grace-period", type=float, default=None,
                        help="override cloudcore's nodeGracePeriod (default: leave it)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, certs)")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ssl-buffer-kib", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline:
        if args.port is None or args.pki is None:
            parser.error("--serve-baseline needs --port and --pki")
        return args
    if not args.nodes or args.nodes < 1:
        parser.error("--nodes N is required (N >= 1)")
    if args.procs < 1 or args.concurrency < 1 or args.attempts < 1:
        parser.error("--procs, --concurrency and --attempts must be at least 1")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    known = ("cloudcore", "baseline", "baseline-4k")
    if not servers or any(s not in known for s in servers) or len(set(servers)) < len(servers):
        parser.error(f"--servers takes a comma-separated list of {', '.join(known)}")
    args.servers = servers
    per_proc = -(-args.nodes // args.procs)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.nodes + 200 > hard or per_proc + 200 > hard:
        parser.error(f"{args.nodes} connections need more file descriptors than the hard "
                     f"limit of {hard} (ulimit -n)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_baseline:
        return serve_baseline(args.port, args.pki, args.ssl_buffer_kib)
    raise_nofile()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    facts = machine_facts()
    root = Path(tempfile.mkdtemp(prefix="moorage-bench-hub-"))
    env = {**os.environ, "HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
    env.pop("MOORAGE_KUBECONFIG", None)
    (root / "home").mkdir()
    daemons: list[Daemon] = []
    results: list[Result] = []
    failed = interrupted = True
    started = time.monotonic()
    try:
        log(f"work dir {root}")
        data_dir, ports = init_cloud(root, env)
        changes: dict[str, Any] = {"nodeLimit": args.nodes + 100}
        if args.node_grace_period is not None:
            changes["nodeGracePeriod"] = args.node_grace_period
        configure_cloud(data_dir, changes)
        sim_dir = root / "sim"
        t0 = time.monotonic()
        key_path = make_node_certs(data_dir / "pki", sim_dir, args.nodes, args.procs)
        log(f"signed {args.nodes} node certificates in {time.monotonic() - t0:.1f}s")
        pieces = chunks(args.nodes, args.procs)
        sim_opts = {
            "cert_dir": str(sim_dir / "certs"), "key_file": str(key_path),
            "ca_file": str(data_dir / "pki" / "ca.crt"), "concurrency": args.concurrency,
            "attempts": args.attempts, "open_timeout": args.open_timeout,
            "connect_deadline": args.connect_deadline, "ack_timeout": args.ack_timeout,
            "close_timeout": 20.0,
        }
        for name in args.servers:
            log(f"starting {name}")
            daemon = (start_cloudcore(root, data_dir, ports[0], env) if name == "cloudcore"
                      else start_baseline(root, data_dir, env, name))
            daemons.append(daemon)
            results.append(measure(daemon, args, pieces, sim_opts))
            daemon.stop()
            log(f"{name} stopped (exit code {daemon.proc.returncode})")
        failed = interrupted = False
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"interrupted ({exc or 'SIGINT'}): stopping everything")
    except Exception as exc:
        interrupted = False
        log(f"benchmark failed: {exc}")
    finally:
        for daemon in reversed(daemons):
            with contextlib.suppress(Exception):
                daemon.stop()
        if (failed and not interrupted) or args.keep:
            log(f"logs and certificates kept in {root}")
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    if results:
        report(results, args, facts)
        print(f"\n(total run time {time.monotonic() - started:.0f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
