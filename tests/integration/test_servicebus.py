"""The ServiceBus with real processes: a real HTTP app on the node reached from the cloud
(`moorage call`, kubectl --raw, the admin API), and the app's requests to cloud URLs."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from moorage import kubeconfig
from moorage.client import AdminClient
from tests.support import (
    Cloud,
    Edge,
    Env,
    edit_yaml,
    free_port,
    join,
    make_cloud,
    require,
    wait_for,
)

KUBECTL = shutil.which("kubectl")
SLOW_SECONDS = 3.0


class App(BaseHTTPRequestHandler):
    """A small real HTTP app (the one on the node, or a service in the cloud)."""

    release = threading.Event()  # ends a /slow request early, so teardown never waits

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "text/plain", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            App.release.wait(SLOW_SECONDS)
            self._answer(200, b"late")
        else:
            self._answer(200, f"hello from {self.path}".encode(), **{"X-App": "yes"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(201, b"echo:" + body)

    do_PUT = do_POST


@pytest.fixture
def apps() -> Iterator[tuple[int, int]]:
    """(port of the app on the node, port of a service in the cloud), both on loopback."""
    App.release.clear()
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), App) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield servers[0].server_address[1], servers[1].server_address[1]
    finally:
        App.release.set()
        for server in servers:
            server.shutdown()
            server.server_close()


def _world(env: Env, cloud_port: int, bus_port: int) -> tuple[Cloud, Edge]:
    cloud = make_cloud(env)
    edit_yaml(cloud.config, lambda d: d["modules"].update(serviceBus={
        "targetURLAllowlist": [f"http://127.0.0.1:{cloud_port}/allowed/"],
        "maxBodyBytes": 65536}))
    cloud.start()
    edge = join(cloud, "edge-bus")
    edit_yaml(edge.config, lambda d: d["modules"].update(serviceBus={
        "enable": True, "port": bus_port, "timeout": "1s", "maxBodyBytes": 65536}))
    edge.start()
    wait_for(lambda: cloud.node_ready("edge-bus"), 20, what="the node to be Ready")
    return cloud, edge


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # LISTEN
                found.add(address)
    return found


def test_cloud_reaches_a_node_app_and_the_app_reaches_allowlisted_cloud_urls(
        env: Env, apps: tuple[int, int]) -> None:
    app_port, cloud_port = apps
    bus_port = free_port()
    cloud, edge = _world(env, cloud_port, bus_port)

    # moorage call: method, query and body travel; status and headers come back.
    out = cloud.moorage("call", "edge-bus", str(app_port), "/hello?x=1", "-i").stdout
    assert "HTTP 200" in out and "X-App: yes" in out and "hello from /hello?x=1" in out
    posted = cloud.moorage("call", "edge-bus", str(app_port), "/echo", "-d", "ping")
    assert posted.stdout == "echo:ping"

    # kubectl --raw through the admin API, as against Kubernetes' node proxy.
    if KUBECTL is not None:
        raw = subprocess.run([KUBECTL, "--kubeconfig", str(cloud.kubeconfig), "get", "--raw",
                              f"/api/v1/nodes/edge-bus/proxy/{app_port}/hello"],
                             capture_output=True, text=True, timeout=30, check=False)
        assert raw.returncode == 0 and raw.stdout == "hello from /hello", raw.stderr
    else:
        require(False, "kubectl is not on PATH")

    # The admin API itself (HTTPS with the admin certificate), as any HTTP client uses it.
    admin = AdminClient(kubeconfig.load(cloud.kubeconfig))
    try:
        status, _, body = admin.raw("PUT", f"/api/v1/nodes/edge-bus:{app_port}/proxy/"
                                          "echo?y=2", b"\x00binary\xff")
    finally:
        admin.close()
    assert (status, body) == (201, b"echo:\x00binary\xff")

    # App down: 502. App slow: 504. Both say why.
    down = cloud.moorage("call", "edge-bus", str(free_port()), "/x", check=False)
    assert down.returncode == 1 and "HTTP 502" in down.stderr
    assert "cannot be reached" in down.stderr
    slow = cloud.moorage("call", "edge-bus", str(app_port), "/slow", check=False)
    assert "HTTP 504" in slow.stderr and "did not answer within 1s" in slow.stderr

    # An oversized body is refused at the cloud, and the edge carries on.
    big = env.root / "big.bin"
    big.write_bytes(b"x" * 70_000)
    refused = cloud.moorage("call", "edge-bus", str(app_port), "/echo", "-d", f"@{big}",
                            check=False)
    assert "HTTP 413" in refused.stderr and "over 65536 bytes" in refused.stderr
    assert cloud.moorage("call", "edge-bus", str(app_port), "/echo", "-d", "after").stdout \
        == "echo:after"
    assert edge.daemon is not None and edge.daemon.running

    # The app on the node calls cloud URLs through its local ServiceBus.
    def upstream(target: str) -> tuple[int, str]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", bus_port, timeout=10)
        try:
            conn.request("POST", "/", body=json.dumps({"method": "POST", "targetURL": target,
                                                      "payload": "hi"}))
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    assert upstream(f"http://127.0.0.1:{cloud_port}/allowed/data") == (201, "echo:hi")
    for target in (f"http://127.0.0.1:{cloud_port}/secret",
                   f"http://127.0.0.1:{cloud_port}/allowed/../secret",
                   f"http://127.0.0.1:{cloud_port}/allowed/%2e%2e/secret",
                   f"http://evil@127.0.0.1:{cloud_port}/allowed/x"):
        status, text = upstream(target)
        assert status == 403 and "not on the cloud's allowlist" in text, target

    # The audit trail: one line per request, with sizes.
    wait_for(lambda: "servicebus upstream node=edge-bus method=POST" in cloud.log(), 5)
    assert f"servicebus proxy node=edge-bus method=POST target={app_port}:echo status=201 " \
           "request_bytes=4 response_bytes=9" in cloud.log()
    # The ServiceBus listens on loopback only.
    assert _listening_addresses(bus_port) == {"0100007F"}


def test_servicebus_off_or_on_a_public_address(env: Env, apps: tuple[int, int]) -> None:
    app_port, _ = apps
    cloud = make_cloud(env).start()
    edge = join(cloud, "edge-off").start()
    wait_for(lambda: cloud.node_ready("edge-off"), 20, what="the node to be Ready")
    off = cloud.moorage("call", "edge-off", str(app_port), "/hello", check=False)
    assert "HTTP 503" in off.stderr and "modules.serviceBus.enable: true" in off.stderr
    edge.stop()
    edit_yaml(edge.config, lambda d: d["modules"].update(serviceBus={
        "enable": True, "server": "0.0.0.0"}))  # noqa: S104 - must be refused
    started = time.monotonic()
    result = env.run("edgecore", "--config", str(edge.config), check=False)
    assert result.returncode == 2 and time.monotonic() - started < 30
    assert "0.0.0.0 is not a loopback address" in result.stderr
