#!/usr/bin/env python3
"""Sync latency: apply -> edge receive, fan-out, and cloudcore's cost, with N edge nodes.

    .venv/bin/python bench/sync_latency.py --nodes N [--rate 100] [--duration 20] [--procs 3]

One real cloudcore (``moorage init`` into a temp dir with free ports, loopback
only, then the installed ``cloudcore --config ...``; modules.cloudHub.nodeLimit
= N + 100) and N simulated edge nodes in ``--procs`` processes, each node on its
own mTLS connection with its OWN certificate (see bench/hub_connections.py, whose
helpers this reuses). Each simulated node behaves like edgecore on the wire: it
registers its Node (edgehub's ``_register``) and sends its inventory (empty, as a
new node's), sends ``envelope.keepalive()``
every 10 s, answers every downstream ``resource`` insert/update/delete at once
with ``message.reply("OK", source="metamanager")`` and answers ``query``
messages like edgehub. It records, for every object message, the receive time
(``time.time()``), the resource and its resourceversion.

Measured:

1. Distribution latency. With all N connected, driver threads (keep-alive HTTPS
   connections to the admin API, with the admin kubeconfig) create pods
   ``upd-<i>`` at ``--rate``/s for ``--duration`` s, open loop, ``spec.nodeName``
   round-robin over the nodes. Latency = edge receive time - the time the POST
   returned 201 (the API commit as a client sees it), matched by name and
   resourceVersion. Because the hub may deliver before the 201 reaches the
   client, that figure is a lower bound; receive - POST sent (an upper bound) is
   shown too. P50/P90/P99/max and the objects that never arrived.
2. Fan-out. ConfigMap ``fan`` referenced (volume) by one pod on EVERY node; once
   all are delivered, a PUT changes its data, and the time from that PUT's
   return until every node received the new version is measured (max and P50
   over nodes).
3. cloudcore VmRSS per connected node (after connect and registration - before)
   / N, and cloudcore CPU seconds during the latency phase.
4. BASELINE, same run, after cloudcore and the simulators are stopped: a bare
   ``websockets`` echo server (mutual TLS from ``certs.tls.server_context``,
   compression off, stock asyncio loop) in its own process, and one client that
   sends messages of a pod message's size at the same rate for the same duration;
   P50/P99 of the round trip, and cloudcore's P50/P99 over them.

By default all N nodes dial at once (``--concurrency`` handshakes in flight per
simulator process); ``--connect-rate R`` opens them at R/s overall instead. After
connecting, the run waits (at most ``--quiet-timeout`` s) until cloudcore uses
less than 0.3 core, so the measurements do not overlap the connect storm's tail.
Nodes whose connection cloudcore closed are not reconnected: they are reported,
and objects routed to them are counted apart.

It prints the machine facts (including the load from other processes seen
during the latency phase) and markdown tables. Everything started here is
stopped at the end, also on Ctrl-C, SIGTERM or an error; every loop is bounded
in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing as mp
import os
import random
import resource
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hub_connections as hc  # bench/ helpers: certs, daemons, /proc readers

KEEPALIVE_EVERY = 10.0  # seconds between a simulated node's keepalive messages
NAMESPACE = "default"
PODS_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods"
CONFIGMAPS_PATH = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
FAN = "fan"
FAN_RESOURCE = f"{NAMESPACE}/configmap/{FAN}"

log = hc.log


# ---------------------------------------------------------------- simulator (child process)

def simulate(index: int, first: int, count: int, opts: dict[str, Any], ctrl: Connection) -> None:
    """One simulator process: ``count`` edge nodes that answer like edgecore."""
    hc.run_simulator(index, _simulate, first, count, opts, ctrl)


async def _simulate(first: int, count: int, opts: dict[str, Any], ctrl: Connection) -> None:
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed
    from websockets.protocol import State

    from moorage import envelope
    from moorage.errors import ProtocolError

    setup = hc.prepare_simulator(first, count, opts, ctrl)
    names, contexts, template, inbox = (setup.names, setup.contexts, setup.template,
                                        setup.inbox)
    hard_deadline = time.monotonic() + opts["max_runtime"]

    async def next_command() -> tuple[str, Any]:
        try:
            return await asyncio.wait_for(inbox.get(),
                                          max(0.1, hard_deadline - time.monotonic()))
        except TimeoutError:
            return ("stop", None)  # the process' own time bound

    if (await next_command())[0] != "go":
        return

    conns: dict[str, ClientConnection] = {}
    waiting: dict[str, asyncio.Future[Any]] = {}
    records: list[tuple[int, float, str, str, str, int]] = []
    counters: Counter[str] = Counter()
    drop_reasons: Counter[str] = Counter()
    handshake_end: list[float] = []
    reg_ack_s: list[float] = []
    attempt_errors: Counter[str] = Counter()
    final_errors: Counter[str] = Counter()
    readers: set[asyncio.Task[None]] = set()
    state = {"stopping": False}

    async def read(local: int, name: str, ws: ClientConnection) -> None:
        """Like edgehub._read/_dispatch with a metamanager that commits instantly."""
        try:
            async for raw in ws:
                received = time.time()
                try:
                    message = envelope.decode(raw)
                except ProtocolError:
                    counters["malformed messages"] += 1
                    continue
                if message.parent_msg_id:
                    future = waiting.get(message.parent_msg_id)
                    if future is not None and not future.done():
                        future.set_result(message)
                    continue
                operation = message.operation
                if message.group == envelope.GROUP_RESOURCE and operation in (
                        envelope.INSERT, envelope.UPDATE, envelope.DELETE):
                    records.append((first + local, received, message.resource,
                                    message.resource_version, operation, len(raw)))
                    reply = message.reply("OK", source="metamanager")
                elif operation == envelope.QUERY and message.resource.startswith(
                        f"node/{name}/"):
                    counters["queries answered"] += 1
                    path = message.resource.split("/", 2)[2]
                    status, body = (200, "ok") if path in ("healthz", "readyz", "livez") else (
                        404, f"edgecore serves no {path!r} yet")
                    reply = message.reply({"status": status, "body": body}, source="edgehub")
                else:
                    counters[f"unsupported {operation} {message.group}"[:80]] += 1
                    reply = message.reply(f"unsupported: {operation} {message.resource}",
                                          source="edgehub", operation=envelope.ERROR)
                await ws.send(envelope.encode(reply))
        except ConnectionClosed:
            pass
        finally:
            if conns.get(name) is ws:
                del conns[name]
            if not state["stopping"]:
                rcvd = ws.protocol.close_rcvd
                drop_reasons[f"code {rcvd.code} {rcvd.reason}".strip() if rcvd
                             else "connection lost"] += 1

    async def one(local: int, name: str, deadline: float, gate: asyncio.Semaphore) -> None:
        uri = f"wss://127.0.0.1:{opts['port']}/{hc.PROJECT_ID}/{name}/events"
        ws: ClientConnection | None = None
        if opts["connect_rate"]:  # this process' share of the overall connect rate
            await asyncio.sleep(local * opts["procs"] / opts["connect_rate"])
        for attempt in range(opts["attempts"]):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            async with gate:
                try:
                    ws = await connect(
                        uri, ssl=contexts[name], compression=None, proxy=None,
                        ping_interval=None, open_timeout=min(opts["open_timeout"], remaining),
                        close_timeout=2, max_queue=4, user_agent_header="moorage-bench-sim",
                        additional_headers={"node_id": name, "project_id": hc.PROJECT_ID})
                except Exception as exc:
                    attempt_errors[hc._describe(exc)] += 1
                    ws = None
            if ws is not None:
                break
            await asyncio.sleep(random.uniform(0, min(2.0, 0.2 * 2 ** attempt)))
        if ws is None:
            final_errors["never connected"] += 1
            return
        handshake_end.append(time.monotonic())
        conns[name] = ws
        reader = asyncio.create_task(read(local, name, ws))
        readers.add(reader)
        # edgehub._register: the Node, answered by the cloud with parent_msg_id.
        message = envelope.Message(source="edged", group=envelope.GROUP_RESOURCE,
                                   operation=envelope.INSERT, resource=f"default/node/{name}",
                                   content=json.loads(template.replace("@NODE@", name)))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting[message.msg_id] = future
        sent = time.monotonic()
        try:
            await ws.send(envelope.encode(message))
            await asyncio.wait({future, reader}, timeout=opts["ack_timeout"],
                               return_when=asyncio.FIRST_COMPLETED)
        except ConnectionClosed:
            pass
        finally:
            waiting.pop(message.msg_id, None)
        if not future.done():
            future.cancel()
            if reader.done() or ws.state is not State.OPEN:
                rcvd = ws.protocol.close_rcvd
                why = f"code {rcvd.code} {rcvd.reason}".strip() if rcvd else "connection lost"
                final_errors[f"connection closed before the registration ack ({why})"] += 1
            else:
                final_errors["no registration ack in time"] += 1
            return
        reply = future.result()
        if reply.operation == envelope.RESPONSE:
            reg_ack_s.append(time.monotonic() - sent)
        else:
            final_errors[f"registration answered {reply.operation}: {reply.content}"[:120]] += 1
            return
        # edgehub._send_inventory: what the node holds (nothing yet), answered and not awaited.
        with contextlib.suppress(ConnectionClosed):
            await ws.send(envelope.encode(envelope.Message(
                source="metamanager", group=envelope.GROUP_RESOURCE, operation=envelope.UPDATE,
                resource=f"default/inventory/{name}",
                content={"generation": uuid.uuid4().hex, "page": 0, "last": True,
                         "resourceVersion": 0, "objects": [], "deleted": []})))

    async def connect_all() -> None:
        go = time.monotonic()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        ramp = count * opts["procs"] / opts["connect_rate"] if opts["connect_rate"] else 0.0
        deadline = go + ramp + opts["connect_deadline"]
        gate = asyncio.Semaphore(opts["concurrency"])
        tasks = [asyncio.create_task(one(i, name, deadline, gate))
                 for i, name in enumerate(names)]
        _, late = await asyncio.wait(tasks, timeout=ramp + opts["connect_deadline"]
                                     + opts["ack_timeout"] + 10)
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
            "connected": len(conns), "go": go, "handshake_end": handshake_end,
            "reg_ack_s": reg_ack_s, "attempt_errors": dict(attempt_errors),
            "final_errors": dict(final_errors),
            "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)}))

    async def keepalives() -> None:
        """Every node sends envelope.keepalive() every KEEPALIVE_EVERY s, spread evenly."""
        tick = 0.25
        slots = max(1, round(KEEPALIVE_EVERY / tick))
        started = time.monotonic()
        beat = 0
        while time.monotonic() < hard_deadline:
            beat += 1
            await asyncio.sleep(max(0.0, started + beat * tick - time.monotonic()))
            for local in range(beat % slots, count, slots):
                ws = conns.get(names[local])
                if ws is None:
                    continue
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(envelope.encode(envelope.keepalive()))
                    counters["keepalives sent"] += 1

    connector = asyncio.create_task(connect_all())
    beating = asyncio.create_task(keepalives())
    try:
        while True:
            command, _ = await next_command()
            if command == "report":
                batch, records[:] = list(records), []
                open_nodes = [first + i for i, name in enumerate(names)
                              if name in conns and conns[name].state is State.OPEN]
                ctrl.send(("report", {
                    "records": batch, "open": len(open_nodes), "open_nodes": open_nodes,
                    "counters": dict(counters), "drops": dict(drop_reasons),
                    "rss_kib": hc.rss_kib(os.getpid())}))
            elif command == "stop":
                break
    finally:
        state["stopping"] = True
        beating.cancel()
        connector.cancel()
        still_open = sum(1 for ws in conns.values() if ws.state is State.OPEN)
        closing = [asyncio.create_task(ws.close()) for ws in list(conns.values())]
        if closing:
            _, slow = await asyncio.wait(closing, timeout=opts["close_timeout"])
            for task in slow:
                task.cancel()
        for ws in list(conns.values()):
            if ws.transport is not None and not ws.transport.is_closing():
                ws.transport.abort()
        for reader in readers:
            reader.cancel()
        with contextlib.suppress(Exception):
            ctrl.send(("closed", {"open_at_stop": still_open}))


def start_sims(pieces: list[tuple[int, int]], opts: dict[str, Any]) -> list[hc.Sim]:
    ctx = mp.get_context("spawn")
    sims = []
    for index, (first, count) in enumerate(pieces):
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=simulate, args=(index, first, count, opts, child_end),
                           name=f"moorage-bench-sync-sim-{index}", daemon=True)
        proc.start()
        child_end.close()
        sims.append(hc.Sim(index, proc, parent_end))
    return sims


# ---------------------------------------------------------------- baseline echo server (child)

def serve_echo(port: int, pki_dir: Path) -> int:
    """A bare websockets server, mutual TLS, compression off, stock asyncio: echoes."""
    hc.raise_nofile()
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    from certs import tls

    context = tls.server_context(cert_file=pki_dir / "server.crt", key_file=pki_dir / "server.key",
                                 ca_file=pki_dir / "ca.crt", client_cert="required")

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        async with serve(handler, "127.0.0.1", port, ssl=context, compression=None,
                         ping_interval=hc.KEEPALIVE, ping_timeout=hc.KEEPALIVE):
            print(f"echo listening on wss://127.0.0.1:{port}", flush=True)
            await stopping.wait()

    asyncio.run(main())
    return 0


async def echo_client(port: int, ca: Path, cert: Path, key: Path, payload: str, rate: float,
                      duration: float) -> tuple[list[float], int]:
    """Send ``payload`` at ``rate``/s for ``duration`` s; round trips (s) and messages sent."""
    from websockets.asyncio.client import connect

    from certs import tls

    context = tls.client_context(ca_file=ca, cert_file=cert, key_file=key)
    total = max(1, int(rate * duration))
    rtts: list[float] = []
    sent_at: collections.deque[float] = collections.deque()
    async with connect(f"wss://127.0.0.1:{port}/echo", ssl=context, compression=None,
                       proxy=None, ping_interval=None, max_size=None, open_timeout=10,
                       close_timeout=2) as ws:
        async def reader() -> None:
            async for _ in ws:
                rtts.append(time.perf_counter() - sent_at.popleft())
                if len(rtts) >= total:
                    return

        reading = asyncio.create_task(reader())
        start = time.perf_counter()
        sent = 0
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() > start + duration * 2 + 10:
                break  # far behind: stop (bounded in time)
            sent_at.append(time.perf_counter())
            await ws.send(payload)
            sent += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reading, 10)
        if not reading.done():
            reading.cancel()
    return rtts, sent


# ---------------------------------------------------------------- parent: admin API driver

@dataclass
class Job:
    method: str
    path: str
    body: Any
    tag: str
    at: float | None = None  # seconds after the phase start; None: as soon as possible


@dataclass
class Done:
    tag: str
    sent: float = 0.0  # time.time() when the request went out
    done: float = 0.0  # time.time() when the response was read
    lag: float = 0.0  # seconds behind schedule when sent
    rv: str = ""
    obj: Any = None
    error: str = ""


def run_jobs(access: Any, jobs: list[Job], threads: int, hard_s: float,
             stop: threading.Event) -> tuple[list[Done | None], float]:
    """Run ``jobs`` over ``threads`` keep-alive connections; (results by index, wall s)."""
    from moorage.client import AdminClient
    from moorage.errors import APIError

    lock = threading.Lock()
    cursor = [0]
    results: list[Done | None] = [None] * len(jobs)
    start = time.monotonic()
    hard_deadline = start + hard_s

    def worker() -> None:
        client = AdminClient(access, timeout=30.0)
        try:
            while not stop.is_set() and time.monotonic() < hard_deadline:
                with lock:
                    index = cursor[0]
                    if index >= len(jobs):
                        return
                    cursor[0] += 1
                job = jobs[index]
                if job.at is not None:
                    wait = start + job.at - time.monotonic()
                    if wait > 0 and stop.wait(wait):
                        return
                if time.monotonic() >= hard_deadline:
                    return
                result = Done(job.tag, lag=max(0.0, time.monotonic() - start - (job.at or 0.0)))
                result.sent = time.time()
                try:
                    obj = client.request(job.method, job.path, job.body)
                    result.done = time.time()
                    result.obj = obj
                    result.rv = str(obj["metadata"]["resourceVersion"])
                except APIError as exc:
                    result.done = time.time()
                    result.error = f"HTTP {exc.status}: {exc}"[:160]
                except Exception as exc:  # report, keep driving
                    result.done = time.time()
                    result.error = f"{type(exc).__name__}: {exc}"[:160]
                results[index] = result
        finally:
            client.close()

    workers = [threading.Thread(target=worker, name=f"driver-{i}", daemon=True)
               for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        while thread.is_alive():  # join in slices: Ctrl-C must get through
            thread.join(0.5)
            if time.monotonic() > hard_deadline + 35:
                stop.set()
                break
    return results, time.monotonic() - start


def pod(name: str, node: str, configmap: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeName": node,
                            "containers": [{"name": "app", "image": "nginx:1.25"}]}
    if configmap:
        spec["volumes"] = [{"name": "cfg", "configMap": {"name": configmap}}]
        spec["containers"][0]["volumeMounts"] = [{"name": "cfg", "mountPath": "/etc/cfg"}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


# ---------------------------------------------------------------- parent: what the edges saw

class Deliveries:
    """Every object message the simulated nodes received: first arrival per (node, res, rv)."""

    def __init__(self) -> None:
        self.first: dict[tuple[int, str, str], float] = {}
        self.by_object: dict[tuple[str, str], tuple[float, int]] = {}  # (res, rv) -> (t, node)
        self.duplicates = 0
        self.sizes: dict[str, list[int]] = collections.defaultdict(list)
        self.total = 0
        self.open = 0
        self.open_nodes: set[int] = set()
        self.counters: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.sim_rss_kib: list[int] = []

    def add(self, reports: list[dict[str, Any]]) -> None:
        self.open = sum(r["open"] for r in reports)
        self.open_nodes = {i for r in reports for i in r["open_nodes"]}
        self.counters = Counter()
        self.drops = Counter()
        self.sim_rss_kib = [r["rss_kib"] for r in reports]
        for report in reports:
            self.counters.update(report["counters"])
            self.drops.update(report["drops"])
            for node, t, res, rv, _op, size in report["records"]:
                self.total += 1
                key = (node, res, rv)
                if key in self.first:
                    self.duplicates += 1
                    self.first[key] = min(self.first[key], t)
                    continue
                self.first[key] = t
                kind, name = res.split("/")[1], res.rsplit("/", 1)[-1]
                self.sizes["upd-pod" if kind == "pod" and name.startswith("upd-") else kind
                           ].append(size)
                seen = self.by_object.get((res, rv))
                if seen is None or t < seen[0]:
                    self.by_object[(res, rv)] = (t, node)


def poll(sims: list[hc.Sim], deliveries: Deliveries, server: hc.Daemon) -> None:
    for sim in sims:
        sim.messages.pop("report", None)
        sim.conn.send(("report", None))
    deliveries.add(hc.collect(sims, "report", 60, server))


def wait_until(sims: list[hc.Sim], deliveries: Deliveries, server: hc.Daemon,
               done: Any, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        poll(sims, deliveries, server)
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


# ---------------------------------------------------------------- results

q = hc.quantile  # a short name: the report tables use it a lot

@dataclass
class Results:
    nodes: int
    connected: int = 0
    connect_wall_s: float = 0.0
    reg_ack_p50_ms: float = 0.0
    reg_ack_p99_ms: float = 0.0
    reg_acked: int = 0
    node_objects_delivered: int = 0
    connect_errors: Counter[str] = field(default_factory=Counter)
    rss_before_kib: int = 0
    connected_at_rss: int = 0
    registered: int = 0
    quiet_wait_s: float = 0.0
    rss_after_kib: int = 0
    # latency phase
    planned: int = 0
    committed: int = 0
    api_errors: Counter[str] = field(default_factory=Counter)
    achieved_rate: float = 0.0
    drive_wall_s: float = 0.0
    lag_p99_ms: float = 0.0
    post_p50_ms: float = 0.0
    post_p99_ms: float = 0.0
    lat_ms: list[float] = field(default_factory=list)  # receive - POST returned
    lat_sent_ms: list[float] = field(default_factory=list)  # receive - POST sent
    never: int = 0
    never_offline: int = 0  # of those: for a node whose connection was gone
    misrouted: int = 0
    negative: int = 0
    cpu_latency_s: float = 0.0
    cpu_latency_wall_s: float = 0.0
    sims_cpu_latency_s: float = 0.0
    machine_busy_cores: float = 0.0
    others_cores: float = 0.0
    load_during: str = ""
    pod_msg_bytes: int = 0
    # fan-out
    fan_pods_ok: int = 0
    fan_setup_s: float = 0.0
    fan_setup_complete: bool = False
    fan_ms: list[float] = field(default_factory=list)  # receive - PUT returned
    fan_sent_ms: list[float] = field(default_factory=list)  # receive - PUT sent
    fan_missing: int = 0
    fan_offline: int = 0  # nodes with a fan pod that were no longer connected
    fan_put_ms: float = 0.0
    fan_cpu_s: float = 0.0
    fan_msg_bytes: int = 0
    # baseline
    base_rtt_ms: list[float] = field(default_factory=list)
    base_sent: int = 0
    base_payload_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    log_lines: Counter[str] = field(default_factory=Counter)


def registered_nodes(access: Any) -> int:
    from moorage.client import AdminClient

    client = AdminClient(access, timeout=60.0)
    try:
        return len(client.request("GET", "/api/v1/nodes").get("items") or [])
    finally:
        client.close()


def own_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += hc.cpu_seconds(pid)
    return total


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------- the run

def run(args: argparse.Namespace, root: Path, env: dict[str, str], res: Results,
        started: list[Any]) -> None:
    from moorage import envelope, kubeconfig

    data_dir, ports = hc.init_cloud(root, env)
    hc.configure_cloud(data_dir, {"nodeLimit": args.nodes + 100})
    sim_dir = root / "sim"
    t0 = time.monotonic()
    key_path = hc.make_node_certs(data_dir / "pki", sim_dir, args.nodes, args.procs)
    log(f"signed {args.nodes} node certificates in {time.monotonic() - t0:.1f}s")

    log("starting cloudcore")
    core = hc.start_cloudcore(root, data_dir, ports[0], env)
    started.append(core)
    access = kubeconfig.load(data_dir / "admin.kubeconfig")
    stop = threading.Event()
    started.append(stop)

    sim_opts = {
        "cert_dir": str(sim_dir / "certs"), "key_file": str(key_path),
        "ca_file": str(data_dir / "pki" / "ca.crt"), "concurrency": args.concurrency,
        "attempts": 3, "open_timeout": 30.0, "connect_deadline": args.connect_deadline,
        "ack_timeout": args.ack_timeout, "close_timeout": 20.0, "port": ports[0],
        "max_runtime": 1800.0, "connect_rate": args.connect_rate, "procs": args.procs,
    }
    sims = start_sims(hc.chunks(args.nodes, args.procs), sim_opts)
    started.append(sims)
    hc.collect(sims, "ready", 180, core)
    time.sleep(args.settle)
    res.rss_before_kib = hc.rss_kib(core.pid)

    # ---- connect and register N nodes
    log(f"connecting {args.nodes} nodes from {len(sims)} simulator processes")
    go = time.monotonic()
    for sim in sims:
        sim.conn.send(("go", None))
    ramp = args.nodes / args.connect_rate if args.connect_rate else 0.0
    stats = hc.collect(sims, "connected",
                       ramp + args.connect_deadline + args.ack_timeout + 70, core)
    ends = [t for s in stats for t in s["handshake_end"]]
    res.connect_wall_s = (max(ends) - go) if ends else 0.0
    res.connected = sum(s["connected"] for s in stats)
    acks = [t for s in stats for t in s["reg_ack_s"]]
    res.reg_acked = len(acks)
    res.reg_ack_p50_ms, res.reg_ack_p99_ms = 1000 * q(acks, 0.5), 1000 * q(acks, 0.99)
    for s in stats:
        res.connect_errors.update(s["final_errors"])
    log(f"{res.connected}/{args.nodes} connected in {res.connect_wall_s:.1f}s, "
        f"{res.reg_acked} registrations acked")
    if res.connected == 0:
        raise RuntimeError("no node connected: " + "; ".join(
            f"{k} x{v}" for s in stats for k, v in s["attempt_errors"].items()))

    deliveries = Deliveries()

    def node_objects() -> int:
        return sum(1 for (_, res_, _) in deliveries.first if res_.startswith("default/node/"))

    wait_until(sims, deliveries, core, lambda: node_objects() >= res.connected, 120)
    res.node_objects_delivered = node_objects()
    # Let cloudcore finish what the connect storm left queued (late registrations, nodes
    # turning NotReady) before measuring: CPU under 0.3 core over 2 s, bounded in time.
    quiet_start = time.monotonic()
    while time.monotonic() - quiet_start < args.quiet_timeout:
        c0 = hc.cpu_seconds(core.pid)
        time.sleep(2.0)
        core.check()
        if hc.cpu_seconds(core.pid) - c0 < 0.6:
            break
    res.quiet_wait_s = time.monotonic() - quiet_start
    time.sleep(args.settle)
    res.rss_after_kib = hc.rss_kib(core.pid)
    poll(sims, deliveries, core)
    res.connected_at_rss = deliveries.open
    res.registered = registered_nodes(access)
    log(f"cloudcore RSS {res.rss_before_kib / 1024:.1f} -> {res.rss_after_kib / 1024:.1f} MiB; "
        f"{res.node_objects_delivered} Node objects delivered; {res.connected_at_rss} connected, "
        f"{res.registered} Node objects in the store (waited {res.quiet_wait_s:.0f}s for "
        "cloudcore to go quiet)")

    # ---- 1. distribution latency
    total = int(args.rate * args.duration)
    res.planned = total
    jobs = [Job("POST", PODS_PATH, pod(f"upd-{i}", hc.node_name(i % args.nodes)), f"upd-{i}",
                at=i / args.rate) for i in range(total)]
    log(f"latency phase: {total} pods at {args.rate:g}/s over {args.drivers} driver threads")
    pids = [sim.proc.pid for sim in sims]
    cpu0, sims0, self0 = hc.cpu_seconds(core.pid), own_cpu_s(pids), self_cpu_s()
    box0, wall0 = hc.machine_busy(), time.monotonic()
    results, res.drive_wall_s = run_jobs(access, jobs, args.drivers,
                                         args.duration * 2 + 30, stop)
    cpu1, sims1, self1 = hc.cpu_seconds(core.pid), own_cpu_s(pids), self_cpu_s()
    box1, wall1 = hc.machine_busy(), time.monotonic()
    res.load_during = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res.cpu_latency_s, res.cpu_latency_wall_s = cpu1 - cpu0, wall1 - wall0
    res.sims_cpu_latency_s = sims1 - sims0
    busy_s = (box1[0] - box0[0]) / hc.CLK_TCK
    res.machine_busy_cores = busy_s / (wall1 - wall0)
    res.others_cores = max(0.0, busy_s - (cpu1 - cpu0) - (sims1 - sims0) - (self1 - self0)
                           ) / (wall1 - wall0)
    committed = [r for r in results if r is not None and not r.error]
    for r in results:
        if r is not None and r.error:
            res.api_errors[r.error] += 1
    res.api_errors["not sent (driver time bound)"] += sum(1 for r in results if r is None)
    res.api_errors = +res.api_errors
    res.committed = len(committed)
    if committed:
        span = max(r.done for r in committed) - min(r.sent for r in committed)
        res.achieved_rate = len(committed) / span if span > 0 else 0.0
        res.lag_p99_ms = 1000 * q([r.lag for r in committed], 0.99)
        posts = [r.done - r.sent for r in committed]
        res.post_p50_ms, res.post_p99_ms = 1000 * q(posts, 0.5), 1000 * q(posts, 0.99)
        example = committed[0]
        res.pod_msg_bytes = len(envelope.encode(envelope.Message(
            source="edgecontroller", group=envelope.GROUP_RESOURCE, operation=envelope.INSERT,
            resource=f"{NAMESPACE}/pod/{example.tag}", resource_version=example.rv,
            content=example.obj)))
    log(f"latency phase: {res.committed}/{total} committed in {res.drive_wall_s:.1f}s "
        f"({res.achieved_rate:.1f}/s); waiting up to {args.drain_timeout:g}s for deliveries")

    def target(r: Done) -> int:
        return int(r.tag.split("-")[1]) % args.nodes

    def arrived(r: Done) -> bool:
        return (f"{NAMESPACE}/pod/{r.tag}", r.rv) in deliveries.by_object

    # Wait for what can still arrive: objects for nodes that are connected.
    wait_until(sims, deliveries, core,
               lambda: all(arrived(r) or target(r) not in deliveries.open_nodes
                           for r in committed), args.drain_timeout)
    for r in committed:
        hit = deliveries.by_object.get((f"{NAMESPACE}/pod/{r.tag}", r.rv))
        if hit is None:
            res.never += 1
            if target(r) not in deliveries.open_nodes:
                res.never_offline += 1
            continue
        t, node = hit
        expected = target(r)
        if node != expected:
            res.misrouted += 1
        res.lat_ms.append(1000 * (t - r.done))
        res.lat_sent_ms.append(1000 * (t - r.sent))
    res.negative = sum(1 for x in res.lat_ms if x < 0)
    log(f"latency: {len(res.lat_ms)} arrived, {res.never} never; P50 {q(res.lat_ms, .5):.1f} "
        f"ms, P99 {q(res.lat_ms, .99):.1f} ms")

    # ---- 2. fan-out
    if not args.skip_fanout:
        fanout(args, access, sims, deliveries, core, res, stop)

    # ---- stop cloudcore and simulators before the baseline (a quiet machine for it)
    res.log_lines = summarize_log(core.log())
    poll(sims, deliveries, core)
    if deliveries.drops:
        res.notes.append("connections dropped during the run: " + "; ".join(
            f"{k} x{v}" for k, v in deliveries.drops.most_common(5)))
    unusual = {k: v for k, v in deliveries.counters.items() if k != "keepalives sent"}
    if unusual:
        res.notes.append("simulator counters: " + ", ".join(f"{k} {v}"
                                                            for k, v in unusual.items()))
    res.notes.append(f"simulators: {deliveries.total} object messages received, "
                     f"{deliveries.duplicates} duplicates (resends), "
                     f"{deliveries.counters.get('keepalives sent', 0)} keepalives sent; "
                     f"RSS MiB {' / '.join(f'{x / 1024:.0f}' for x in deliveries.sim_rss_kib)}")
    sizes = deliveries.sizes.get("upd-pod", [])
    if sizes:
        res.notes.append(f"upd-* pod messages received: median {int(q(sizes, 0.5))} bytes")
    hc.stop_sims(sims)
    started.remove(sims)
    core.stop()
    started.remove(core)
    log(f"cloudcore stopped (exit code {core.proc.returncode})")

    # ---- 4. baseline
    payload_size = res.pod_msg_bytes or (int(q(sizes, 0.5)) if sizes else 1000)
    res.base_payload_bytes = payload_size
    body = json.dumps({"pad": ""})
    payload = body[:-2] + "x" * (payload_size - len(body)) + body[-2:]
    port = hc.free_port()
    echo = hc.spawn("echo-baseline", [sys.executable, str(Path(__file__).resolve()),
                                      "--serve-echo", "--port", str(port),
                                      "--pki", str(data_dir / "pki")],
                    root / "echo.log", env, port)
    started.append(echo)
    echo.wait_log("echo listening", 30)
    log(f"baseline: bare websockets TLS echo, {payload_size}-byte messages at {args.rate:g}/s "
        f"for {args.duration:g}s")
    name0 = hc.node_name(0)
    rtts, res.base_sent = asyncio.run(echo_client(
        port, data_dir / "pki" / "ca.crt", sim_dir / "certs" / f"{name0}.crt", key_path,
        payload, args.rate, args.duration))
    res.base_rtt_ms = [1000 * x for x in rtts]
    echo.stop()
    started.remove(echo)


def fanout(args: argparse.Namespace, access: Any, sims: list[hc.Sim], deliveries: Deliveries,
           core: hc.Daemon, res: Results, stop: threading.Event) -> None:
    from moorage.client import AdminClient

    n = args.nodes
    client = AdminClient(access, timeout=30.0)
    try:
        cm = client.request("POST", CONFIGMAPS_PATH, {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": FAN, "namespace": NAMESPACE}, "data": {"v": "1"}})
    finally:
        client.close()
    first_rv = int(cm["metadata"]["resourceVersion"])
    jobs = [Job("POST", PODS_PATH, pod(f"fan-{i}", hc.node_name(i), FAN), f"fan-{i}")
            for i in range(n)]
    log(f"fan-out: creating {n} pods (one per node) referencing configmap {FAN}")
    t0 = time.monotonic()
    results, wall = run_jobs(access, jobs, args.drivers, 30 + n / 40, stop)
    ok = [r for r in results if r is not None and not r.error]
    res.fan_pods_ok = len(ok)
    errors = Counter(r.error for r in results if r is not None and r.error)
    errors["not sent (driver time bound)"] += sum(1 for r in results if r is None)
    errors = +errors
    if errors:
        res.notes.append("fan-out pod creation errors: " + "; ".join(
            f"{k} x{v}" for k, v in errors.most_common(3)))
    log(f"fan-out: {len(ok)}/{n} pods created in {wall:.1f}s ({len(ok) / wall:.0f}/s); "
        "waiting for delivery")
    nodes_with_pod = {int(r.tag.split("-")[1]) for r in ok}

    pods_by_node = {int(r.tag.split("-")[1]): r for r in ok}

    def setup_complete() -> bool:  # every connected node holds its pod and the configmap
        return all(((i, f"{NAMESPACE}/pod/{r.tag}", r.rv) in deliveries.first
                    and (i, FAN_RESOURCE, str(first_rv)) in deliveries.first)
                   or i not in deliveries.open_nodes for i, r in pods_by_node.items())

    res.fan_setup_complete = wait_until(sims, deliveries, core, setup_complete,
                                        max(60.0, n / 50))
    res.fan_setup_s = time.monotonic() - t0
    have_cm = sum(1 for i in nodes_with_pod if (i, FAN_RESOURCE, str(first_rv))
                  in deliveries.first)
    if len(deliveries.open_nodes) < len(nodes_with_pod):
        res.notes.append(f"fan-out: {len(nodes_with_pod - deliveries.open_nodes)} of the "
                         f"{len(nodes_with_pod)} nodes with a fan pod were not connected")
    log(f"fan-out setup: {have_cm}/{len(nodes_with_pod)} nodes hold configmap {FAN} after "
        f"{res.fan_setup_s:.1f}s")
    if not res.fan_setup_complete:
        res.notes.append(f"fan-out setup incomplete: {have_cm}/{len(nodes_with_pod)} nodes "
                         f"held configmap {FAN} (v1) after {res.fan_setup_s:.0f}s")
    time.sleep(args.settle)

    client = AdminClient(access, timeout=60.0)
    try:
        current = client.request("GET", f"{CONFIGMAPS_PATH}/{FAN}")
        current["data"] = {"v": "2"}
        sent = time.time()
        cpu1 = hc.cpu_seconds(core.pid)
        updated = client.request("PUT", f"{CONFIGMAPS_PATH}/{FAN}", current)
        put_done = time.time()
    finally:
        client.close()
    res.fan_put_ms = 1000 * (put_done - sent)
    rv2 = str(updated["metadata"]["resourceVersion"])
    from moorage import envelope

    res.fan_msg_bytes = len(envelope.encode(envelope.Message(
        source="edgecontroller", group=envelope.GROUP_RESOURCE, operation=envelope.UPDATE,
        resource=FAN_RESOURCE, resource_version=rv2, content=updated)))
    log(f"fan-out: configmap {FAN} updated (rv {rv2}); waiting for the "
        f"{len(nodes_with_pod & deliveries.open_nodes)} connected nodes of "
        f"{len(nodes_with_pod)}")
    wait_until(sims, deliveries, core,
               lambda: all((i, FAN_RESOURCE, rv2) in deliveries.first
                           or i not in deliveries.open_nodes for i in nodes_with_pod),
               args.fan_timeout, every=0.25)
    res.fan_cpu_s = hc.cpu_seconds(core.pid) - cpu1
    for i in nodes_with_pod:
        t = deliveries.first.get((i, FAN_RESOURCE, rv2))
        if t is None:
            res.fan_missing += 1
            if i not in deliveries.open_nodes:
                res.fan_offline += 1
        else:
            res.fan_ms.append(1000 * (t - put_done))
            res.fan_sent_ms.append(1000 * (t - sent))
    log(f"fan-out: {len(res.fan_ms)}/{len(nodes_with_pod)} nodes got v2 "
        f"({res.fan_offline} not connected); max {max(res.fan_ms, default=0):.0f} ms")


def summarize_log(text: str) -> Counter[str]:
    """WARNING/ERROR lines and tracebacks in cloudcore's log, grouped by their logger+start."""
    found: Counter[str] = Counter()
    for line in text.splitlines():
        if " WARNING " in line or " ERROR " in line or " CRITICAL " in line:
            body = line.split(" ", 2)[2] if line.count(" ") >= 2 else line
            # Group lines that differ only in node names and numbers.
            key = " ".join("<n>" if any(c.isdigit() for c in w) else w
                           for w in body.split()[:12])
            found[key[:160]] += 1
        elif line.startswith("Traceback"):
            found["Traceback"] += 1
    return found


# ---------------------------------------------------------------- report

def ms(value: float) -> str:
    return f"{value:,.1f}"


def report(res: Results, args: argparse.Namespace, facts: dict[str, str]) -> None:
    print()
    print("## Machine")
    for key, value in facts.items():
        print(f"- {key}: {value}")
    print(f"- load average after the latency phase: {res.load_during}")
    print(f"- whole machine busy during the latency phase: {res.machine_busy_cores:.2f} cores; "
          f"of which processes not started by this benchmark: {res.others_cores:.2f} cores")
    print()
    print(f"## Sync latency: N = {args.nodes:,} nodes connected with their own certificates "
          f"({res.connected:,} connected), {args.procs} simulator processes")
    print()
    print("Distribution latency (pod create: POST returned 201 -> edge received), and the "
          "baseline round trip (bare websockets TLS echo, same message size and rate)")
    print()
    print("| figure | objects | arrived | never arrived | P50 ms | P90 ms | P99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    lat = res.lat_ms
    never = f"{res.never:,}" + (f" ({res.never_offline:,} to disconnected nodes)"
                                if res.never_offline else "")
    print(f"| cloudcore: 201 returned -> edge received | {res.committed:,} | {len(lat):,} | "
          f"{never} | {ms(q(lat, .5))} | {ms(q(lat, .9))} | {ms(q(lat, .99))} | "
          f"{ms(max(lat, default=0))} |")
    ls = res.lat_sent_ms
    print(f"| cloudcore: POST sent -> edge received (upper bound) | {res.committed:,} | "
          f"{len(ls):,} | {never} | {ms(q(ls, .5))} | {ms(q(ls, .9))} | "
          f"{ms(q(ls, .99))} | {ms(max(ls, default=0))} |")
    b = res.base_rtt_ms
    print(f"| baseline: bare websockets TLS echo round trip | {res.base_sent:,} | {len(b):,} | "
          f"{res.base_sent - len(b):,} | {ms(q(b, .5))} | {ms(q(b, .9))} | {ms(q(b, .99))} | "
          f"{ms(max(b, default=0))} |")
    if b and lat:
        print(f"| **cloudcore / baseline** | | | | {hc.ratio(q(lat, .5), q(b, .5))} | "
              f"{hc.ratio(q(lat, .9), q(b, .9))} | {hc.ratio(q(lat, .99), q(b, .99))} | "
              f"{hc.ratio(max(lat), max(b))} |")
    print()
    print(f"Target: apply -> edge ack P99 <= 250 ms at 5,000 nodes and 100 updates/s. "
          f"Driver: {args.drivers} threads, planned {res.planned:,} at {args.rate:g}/s, "
          f"achieved {res.achieved_rate:.1f}/s, schedule lag P99 {ms(res.lag_p99_ms)} ms; "
          f"POST round trip P50 {ms(res.post_p50_ms)} / P99 {ms(res.post_p99_ms)} ms; "
          f"{res.negative} deliveries arrived before their 201 reached the client; "
          f"{res.misrouted} at a wrong node. Pod message {res.pod_msg_bytes} bytes; "
          f"baseline message {res.base_payload_bytes} bytes.")
    print()
    if not args.skip_fanout:
        f = res.fan_ms
        print("Fan-out: one ConfigMap referenced by a pod on every node, updated once "
              "(PUT returned -> each node received the new version)")
        print()
        print("| nodes | received | missing | all received (max) ms | P50 ms | P99 ms "
              "| all received from PUT sent ms | PUT round trip ms "
              "| cloudcore CPU s until all received |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        missing = f"{res.fan_missing:,}" + (f" ({res.fan_offline:,} disconnected)"
                                            if res.fan_offline else "")
        print(f"| {res.fan_pods_ok:,} | {len(f):,} | {missing} | "
              f"{ms(max(f, default=0))} | {ms(q(f, .5))} | {ms(q(f, .99))} | "
              f"{ms(max(res.fan_sent_ms, default=0))} | {ms(res.fan_put_ms)} | "
              f"{res.fan_cpu_s:.2f} |")
        print()
        print(f"Target: one object to all 10,000 nodes <= 5 s. Setup ({res.fan_pods_ok:,} pods "
              f"created, and with configmap {FAN} delivered to every connected node): "
              f"{res.fan_setup_s:.1f} s"
              f"{'' if res.fan_setup_complete else ' (INCOMPLETE)'}; ConfigMap message "
              f"{res.fan_msg_bytes} bytes.")
        print()
    print("cloudcore process")
    print()
    print("| connected at the RSS reading | Node objects stored | RSS before -> after connect "
          "MiB | RSS per connected node KiB | CPU s in the latency phase | CPU % of one core "
          "| simulators' CPU s in the latency phase |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    grown = res.rss_after_kib - res.rss_before_kib
    per_node = grown / res.connected_at_rss if res.connected_at_rss else 0.0
    pct = 100 * res.cpu_latency_s / res.cpu_latency_wall_s if res.cpu_latency_wall_s else 0
    print(f"| {res.connected_at_rss:,} | {res.registered:,} | {res.rss_before_kib / 1024:.1f} -> "
          f"{res.rss_after_kib / 1024:.1f} | {per_node:.1f} | {res.cpu_latency_s:.2f} "
          f"(over {res.cpu_latency_wall_s:.1f} s) | {pct:.1f} | {res.sims_cpu_latency_s:.2f} |")
    print()
    rate = f" at {args.connect_rate:g}/s" if args.connect_rate else " all at once"
    print(f"Target: <= 48 KiB per node ({grown / args.nodes:.1f} KiB per N = {args.nodes:,}). "
          f"Connect{rate}: {res.connected:,} of {args.nodes:,} connected and registered "
          f"(handshakes done {res.connect_wall_s:.1f} s after the start); registration ack "
          f"P50 {ms(res.reg_ack_p50_ms)} / P99 {ms(res.reg_ack_p99_ms)} ms "
          f"({res.reg_acked:,} acked); Node objects delivered to {res.node_objects_delivered:,} "
          f"nodes; waited {res.quiet_wait_s:.0f} s for cloudcore to go quiet before the RSS "
          "reading and the latency phase.")
    print()
    if res.connect_errors:
        print("- nodes not fully connected: " + "; ".join(
            f"{k} x{v}" for k, v in res.connect_errors.most_common(5)))
    if res.api_errors:
        print("- admin API errors in the latency phase: " + "; ".join(
            f"{k} x{v}" for k, v in res.api_errors.most_common(5)))
    for note in res.notes:
        print(f"- {note}")
    if res.log_lines:
        print("- cloudcore log, WARNING/ERROR lines: " + "; ".join(
            f"{k} x{v}" for k, v in res.log_lines.most_common(6)))


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, help="simulated edge nodes (each its own cert)")
    parser.add_argument("--rate", type=float, default=100.0, help="pod creates/s (default 100)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of the latency phase (default 20)")
    parser.add_argument("--procs", type=int, default=3, help="simulator processes (default 3)")
    parser.add_argument("--drivers", type=int, default=8,
                        help="admin API driver threads, one keep-alive connection each "
                             "(default 8)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="handshakes in flight per simulator process (default 64)")
    parser.add_argument("--connect-deadline", type=float, default=150.0,
                        help="bound on the connect phase, seconds (default 150)")
    parser.add_argument("--connect-rate", type=float, default=0.0,
                        help="open connections at this many per second overall (default 0: "
                             "all at once, --concurrency handshakes in flight per process)")
    parser.add_argument("--quiet-timeout", type=float, default=90.0,
                        help="after connecting, wait at most this long for cloudcore to go "
                             "quiet before measuring, s (default 90)")
    parser.add_argument("--ack-timeout", type=float, default=120.0,
                        help="wait for cloudcore's registration ack per node, s (default 120)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="wait for late deliveries after the latency phase, s (default 30)")
    parser.add_argument("--fan-timeout", type=float, default=60.0,
                        help="wait for the fanned-out ConfigMap update, s (default 60)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds of quiet before RSS readings (default 3)")
    parser.add_argument("--skip-fanout", action="store_true", help="skip measurement 2")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, certs)")
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo:
        if args.port is None or args.pki is None:
            parser.error("--serve-echo needs --port and --pki")
        return args
    if not args.nodes or args.nodes < 1:
        parser.error("--nodes N is required (N >= 1)")
    if args.rate <= 0 or args.duration <= 0 or args.rate * args.duration > 100_000:
        parser.error("--rate and --duration must be positive, at most 100,000 objects in all")
    if args.procs < 1 or args.drivers < 1 or args.concurrency < 1:
        parser.error("--procs, --drivers and --concurrency must be at least 1")
    per_proc = -(-args.nodes // args.procs)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.nodes + 200 > hard or per_proc + 200 > hard:
        parser.error(f"{args.nodes} connections need more file descriptors than the hard "
                     f"limit of {hard} (ulimit -n)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_echo:
        return serve_echo(args.port, args.pki)
    hc.raise_nofile()
    signal.signal(signal.SIGTERM, hc._on_signal)
    signal.signal(signal.SIGINT, hc._on_signal)
    facts = hc.machine_facts()
    root = Path(tempfile.mkdtemp(prefix="moorage-bench-sync-"))
    env = {**os.environ, "HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
    env.pop("MOORAGE_KUBECONFIG", None)
    (root / "home").mkdir()
    res = Results(args.nodes)
    started: list[Any] = []  # daemons, simulator lists and the drivers' stop event
    failed = interrupted = True
    began = time.monotonic()
    try:
        log(f"work dir {root}")
        run(args, root, env, res, started)
        failed = interrupted = False
    except (KeyboardInterrupt, hc.Interrupted) as exc:
        log(f"interrupted ({exc or 'SIGINT'}): stopping everything")
    except Exception as exc:
        interrupted = False
        log(f"benchmark failed: {type(exc).__name__}: {exc}")
    finally:
        for thing in started:
            if isinstance(thing, threading.Event):
                thing.set()  # driver threads first
        for thing in reversed(started):
            with contextlib.suppress(Exception):
                if isinstance(thing, threading.Event):
                    thing.set()
                elif isinstance(thing, list):
                    hc.stop_sims(thing)
                else:
                    thing.stop()
        if (failed and not interrupted) or args.keep:
            log(f"logs and certificates kept in {root}")
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    if res.connected:
        report(res, args, facts)
        print(f"\n(total run time {time.monotonic() - began:.0f}s"
              f"{'; INCOMPLETE: the run failed' if failed else ''})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
