"""Test support: free ports, condition waits with deadlines, and real daemons started
from the installed console scripts, exactly as an operator would start them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

BIN = Path(sys.executable).parent
SCALE = float(os.environ.get("MOORAGE_TEST_TIMEOUT_SCALE", "1"))
T = TypeVar("T")


def require(condition: bool, reason: str) -> None:
    """Skip locally when a system component is missing; fail in CI, which must have it."""
    if condition:
        return
    import pytest

    if os.environ.get("MOORAGE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (MOORAGE_REQUIRE_SERVICES=1: CI must provide it)")
    pytest.skip(reason)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never handed out before in this run: the kernel may
    give the same free port twice in a row, and two daemons of one test must not share."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.05,
             what: str | Callable[[], str] = "condition") -> T:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``.

    ``what`` may be a callable: it is called only on failure (to show logs, say)."""
    deadline = time.monotonic() + timeout * SCALE
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # the condition may not be checkable yet
            last_error = exc
        time.sleep(interval)
    if callable(what):
        what = what()
    raise AssertionError(f"timed out after {timeout * SCALE:.1f}s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def edit_yaml(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@dataclass
class Daemon:
    """A daemon process with its stderr going to a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        handle = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=handle, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        handle.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle: str, timeout: float = 15.0, count: int = 1) -> str:
        wait_for(lambda: self.log().count(needle) >= count, timeout,
                 what=f"{needle!r} x{count} in {self.name}'s log:\n{self.log()[-3000:]}")
        return self.log()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout * SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Env:
    """A sandbox: its own HOME, data dirs and ports; stops whatever it started."""

    root: Path
    daemons: list[Daemon] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        self.vars = {**os.environ, "HOME": str(self.root / "home"), "PYTHONUNBUFFERED": "1"}
        self.vars.pop("MOORAGE_KUBECONFIG", None)

    def run(self, *args: str, check: bool = True, timeout: float = 60.0
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                                env=self.vars, timeout=timeout * SCALE, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def daemon(self, name: str, *argv: str) -> Daemon:
        d = Daemon(name, [str(BIN / argv[0]), *argv[1:]], self.root / f"{name}.log", self.vars)
        self.daemons.append(d)
        return d.start()

    def close(self) -> None:
        for d in reversed(self.daemons):
            d.stop()


@dataclass
class Cloud:
    env: Env
    dir: Path
    hub_port: int
    cert_port: int
    admin_port: int
    daemon: Daemon | None = None

    @property
    def config(self) -> Path:
        return self.dir / "cloudcore.yaml"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    def configure(self, **hub: Any) -> None:
        """Override modules.cloudHub settings (camelCase keys) before starting."""
        edit_yaml(self.config, lambda d: d["modules"]["cloudHub"].update(hub))

    def start(self) -> Cloud:
        self.daemon = self.env.daemon("cloudcore", "cloudcore", "--config", str(self.config))
        wait_for(lambda: port_open(self.admin_port) and port_open(self.hub_port)
                 and port_open(self.cert_port), 20, what="cloudcore to listen:\n"
                 + (self.daemon.log() if self.daemon else ""))
        return self

    def stop(self) -> None:
        if self.daemon:
            self.daemon.stop()

    def moorage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.env.run("moorage", *args, "--kubeconfig", str(self.kubeconfig), check=check)

    def token(self, ttl: str = "1h") -> str:
        return self.moorage("gettoken", "--ttl", ttl).stdout.strip()

    def nodes(self) -> dict[str, dict[str, Any]]:
        items = json.loads(self.moorage("get", "nodes", "-o", "json").stdout)["items"]
        return {n["metadata"]["name"]: n for n in items}

    def node_ready(self, name: str) -> bool | None:
        """True/False for Ready/NotReady; None when the node is unknown."""
        node = self.nodes().get(name)
        if node is None:
            return None
        for condition in node["status"].get("conditions", []):
            if condition["type"] == "Ready":
                return bool(condition["status"] == "True")
        return False

    def log(self) -> str:
        return self.daemon.log() if self.daemon else ""


def make_cloud(env: Env, **hub: Any) -> Cloud:
    ports = [free_port() for _ in range(3)]
    cloud = Cloud(env, env.root / "cloud", *ports)
    env.run("moorage", "init", "--data-dir", str(cloud.dir), "--advertise-address", "127.0.0.1",
            "--bind-address", "127.0.0.1", "--websocket-port", str(ports[0]),
            "--https-port", str(ports[1]), "--admin-port", str(ports[2]))
    cloud.configure(**{"nodeGracePeriod": "3s", "keepaliveInterval": "2s", **hub})
    # Each test cloud gets its own metrics port (9091 would be shared by every test).
    edit_yaml(cloud.config, lambda d: d["modules"].setdefault("metrics", {}).update(
        port=free_port()))
    return cloud


@dataclass
class Edge:
    env: Env
    name: str
    dir: Path
    daemon: Daemon | None = None
    metaserver_port: int = 0

    @property
    def config(self) -> Path:
        return self.dir / "edgecore.yaml"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    def configure(self, **hub: Any) -> None:
        edit_yaml(self.config, lambda d: d["modules"]["edgeHub"].update(hub))

    def start(self) -> Edge:
        self.daemon = self.env.daemon(f"edgecore-{self.name}", "edgecore", "--config",
                                      str(self.config))
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.daemon:
            self.daemon.stop(sig)

    def log(self) -> str:
        return self.daemon.log() if self.daemon else ""


def join(cloud: Cloud, name: str, token: str | None = None, *extra: str,
         configure: dict[str, Any] | None = None) -> Edge:
    edge = Edge(cloud.env, name, cloud.env.root / f"edge-{name}")
    cloud.env.run("moorage", "join", "--cloudcore-ipport", f"127.0.0.1:{cloud.hub_port}",
                  "--certport", str(cloud.cert_port), "--token", token or cloud.token(),
                  "--node-name", name, "--data-dir", str(edge.dir), *extra)
    edge.configure(**{"heartbeat": "1s", "reconnectBase": "0.2s", "reconnectMax": "2s",
                      **(configure or {})})
    # Pods in most tests are bookkeeping only: edged runs them where a test asks for it.
    edit_yaml(edge.config, lambda d: d["modules"]["edged"].update(enable=False))
    return edge


@contextlib.contextmanager
def sandbox(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path)
    try:
        yield env
    finally:
        env.close()


class FaultProxy:
    """A TCP relay on loopback that can freeze traffic (a half-open link) and heal.

    Frozen: bytes are read and dropped, nothing is closed, exactly like a peer
    that vanished behind a NAT or a cut cable. Runs in a thread; ``close()`` stops it.
    """

    def __init__(self, target_port: int) -> None:
        import selectors

        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.frozen = False
        self.pairs: dict[socket.socket, socket.socket] = {}
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.stopping = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        import selectors

        while not self.stopping:
            for key, _ in self.selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.target_port), 5)
                    except OSError:
                        client.close()
                        continue
                    with self.lock:
                        self.pairs[client], self.pairs[upstream] = upstream, client
                    for s in (client, upstream):
                        self.selector.register(s, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                peer = self.pairs.get(sock)
                if not data or peer is None:
                    self._drop(sock)
                    continue
                if not self.frozen:
                    with contextlib.suppress(OSError):
                        peer.sendall(data)

    def _drop(self, sock: socket.socket) -> None:
        with self.lock:
            peer = self.pairs.pop(sock, None)
            if peer is not None:
                self.pairs.pop(peer, None)
        for s in (sock, peer):
            if s is not None:
                with contextlib.suppress(Exception):
                    self.selector.unregister(s)
                s.close()

    def freeze(self) -> None:
        self.frozen = True

    def heal(self) -> None:
        """Forward again; connections that lived through the freeze are cut (state is lost)."""
        with self.lock:
            stale = list(self.pairs)
        for sock in stale:
            if sock in self.pairs:
                self._drop(sock)
        self.frozen = False

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        for sock in list(self.pairs):
            self._drop(sock)
        self.listener.close()


def enable_metaserver(edge: Edge) -> int:
    """Turn on the edge's MetaServer on a free loopback port; returns the port."""
    port = free_port()
    edit_yaml(edge.config, lambda d: d["modules"].update(
        metaManager={"metaServer": {"enable": True, "server": f"127.0.0.1:{port}"}}))
    edge.metaserver_port = port
    return port


def http_json(port: int, path: str, method: str = "GET", body: Any = None,
              content_type: str = "application/json") -> Any:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload,
                     headers={"Content-Type": content_type} if payload else {})
        response = conn.getresponse()
        data = response.read()
        if response.status >= 400:
            raise AssertionError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data)
    finally:
        conn.close()


def held(edge: Edge, plural: str, group_path: str = "/api/v1") -> set[str]:
    """Names of the objects of one kind the edge's MetaServer serves (all namespaces)."""
    items = http_json(edge.metaserver_port, f"{group_path}/{plural}")["items"]
    return {item["metadata"]["name"] for item in items}


def write_manifests(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path
