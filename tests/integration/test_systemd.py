"""systemd: the real daemons speak sd_notify (READY=1 only once they serve, watchdog pings,
STOPPING=1), log for the journal, and the units `--install-service` writes pass
`systemd-analyze verify` and rate "OK" in `systemd-analyze security`.

No systemd runs in the test container, so the daemons are started the way systemd
would start them: NOTIFY_SOCKET pointing at a datagram socket the test binds,
WATCHDOG_USEC, JOURNAL_STREAM naming their stderr, and (as MemoryDenyWriteExecute=yes
does) no memory that is ever both writable and executable: PR_SET_MDWE.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from moorage import services
from tests.support import (
    BIN,
    Cloud,
    Daemon,
    Env,
    enable_metaserver,
    join,
    make_cloud,
    port_open,
    require,
    wait_for,
)

# The exposure each unit reached (systemd 252); a change that loosens one fails here.
TARGETS = {services.CLOUDCORE: 1.4, services.EDGECORE: 1.9, services.MAPPER: 1.6}

# MemoryDenyWriteExecute=yes, as the kernel itself enforces it (Linux >= 6.3), inherited
# by the daemon across exec.
MDWE = """
import ctypes, os, sys
ok = ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) == 0  # PR_SET_MDWE
print("mdwe:", "on" if ok else "unsupported", file=sys.stderr, flush=True)
os.execv(sys.argv[1], sys.argv[1:])
"""


class Notifications:
    """systemd's side of NOTIFY_SOCKET; ``on_ready`` runs the moment READY=1 arrives."""

    def __init__(self, path: Path, on_ready: Callable[[], dict[str, bool]]) -> None:
        self.path, self.on_ready = path, on_ready
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.02)
        self.received: list[tuple[float, str]] = []
        self.at_ready: dict[str, bool] | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if message.startswith("READY=1") and self.at_ready is None:
                self.at_ready = self.on_ready()  # before recording READY: tests wait on it
            self.received.append((time.monotonic(), message))

    def messages(self) -> list[str]:
        return [m for _, m in self.received]

    def count(self, prefix: str) -> int:
        return sum(1 for m in self.messages() if m.startswith(prefix))

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Callable[..., Notifications]]:
    opened: list[Notifications] = []

    def open_(on_ready: Callable[[], dict[str, bool]]) -> Notifications:
        n = Notifications(tmp_path / f"notify-{len(opened)}.sock", on_ready)
        opened.append(n)
        return n

    yield open_
    for n in opened:
        n.close()


def under_systemd(env: Env, name: str, notify: Notifications, *argv: str,
                  watchdog_usec: int = 400_000) -> Daemon:
    """Start a daemon as systemd would: notify socket, watchdog, journal stream, MDWE."""
    log = env.root / f"{name}.log"
    log.touch()
    info = log.stat()
    variables = {**env.vars, "NOTIFY_SOCKET": str(notify.path),
                 "WATCHDOG_USEC": str(watchdog_usec),
                 "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    daemon = Daemon(name, [sys.executable, "-c", MDWE, str(BIN / argv[0]), *argv[1:]], log,
                    variables)
    env.daemons.append(daemon)
    return daemon.start()


def connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def check_lifecycle(daemon: Daemon, notify: Notifications) -> None:
    """READY=1 once, watchdog pings from the loop, STOPPING=1 and a clean exit on SIGTERM."""
    wait_for(lambda: notify.count("READY=1") == 1, 30,
             what=lambda: f"READY=1 from {daemon.name}:\n{daemon.log()}")
    assert notify.at_ready and all(notify.at_ready.values()), notify.at_ready
    wait_for(lambda: notify.count("WATCHDOG=1") >= 3, 10,
             what=lambda: f"watchdog pings from {daemon.name}: {notify.messages()}")
    ready_at = next(t for t, m in notify.received if m.startswith("READY=1"))
    assert all(t > ready_at for t, m in notify.received if m == "WATCHDOG=1")
    assert daemon.stop() == 0
    wait_for(lambda: notify.count("STOPPING=1") == 1, 5, what="STOPPING=1")
    assert notify.count("READY=1") == 1
    log = daemon.log()
    assert "Traceback" not in log, log
    if "mdwe: on" not in log:
        assert "mdwe: unsupported" in log, log  # an old kernel: no MDWE check possible


def journal_lines(log: str, logger: str) -> list[str]:
    return [line for line in log.splitlines() if f" {logger}: " in line]


def test_cloudcore_is_ready_only_once_hub_enrollment_and_admin_accept(
        env: Env, notifications: Callable[..., Notifications]) -> None:
    cloud = make_cloud(env)
    ports = {"hub": cloud.hub_port, "enrollment": cloud.cert_port, "admin": cloud.admin_port}
    notify = notifications(lambda: {name: port_open(port) for name, port in ports.items()})
    daemon = under_systemd(env, "cloudcore", notify, "cloudcore", "--config", str(cloud.config))
    check_lifecycle(daemon, notify)
    assert "READY=1\nSTATUS=cloudcore " in notify.messages()[0]
    # JOURNAL_STREAM is its stderr: no timestamp of its own, the level as the priority.
    lines = journal_lines(daemon.log(), "cloudcore")
    assert lines and all(re.fullmatch(r"<[2-7]>[A-Z]+ cloudcore: .*", x) for x in lines), lines
    assert "<6>INFO cloudcore: admin API on https://" in daemon.log()


def test_edgecore_is_ready_offline_once_metaserver_and_dmi_socket_serve(
        env: Env, notifications: Callable[..., Notifications]) -> None:
    cloud = make_cloud(env).start()
    edge = join(cloud, "edge-sd")
    port = enable_metaserver(edge)
    cloud.stop()  # an edge must come up without its cloud
    dmi = edge.dir / "dmi.sock"
    notify = notifications(lambda: {"metaserver": port_open(port), "dmi": connectable(dmi)})
    daemon = under_systemd(env, "edgecore", notify, "edgecore", "--config", str(edge.config))
    check_lifecycle(daemon, notify)
    assert "READY=1\nSTATUS=node edge-sd serving from its local store" in notify.messages()


def test_mapper_is_ready_once_its_own_dmi_socket_serves_and_logs_json(
        env: Env, notifications: Callable[..., Notifications]) -> None:
    own = env.root / "modbus.sock"
    config = env.root / "mapper.yaml"
    # No edgecore at all: registration retries in the background, READY does not wait.
    config.write_text(yaml.safe_dump({"name": "modbus", "protocol": "modbus",
                                      "edgecoreSock": str(env.root / "absent.sock"),
                                      "socket": str(own)}))
    notify = notifications(lambda: {"dmi": connectable(own)})
    daemon = under_systemd(env, "mapper", notify, "modbus-mapper", "--config", str(config),
                           "--log-format", "json")
    check_lifecycle(daemon, notify)
    entries = [json.loads(line) for line in daemon.log().splitlines()
               if not line.startswith("mdwe:")]
    assert entries, daemon.log()
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert any("serving DMI on" in e["message"] for e in entries)


# ---------------------------------------------------------------- the unit files

def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def verify(path: Path) -> None:
    result = analyze("verify", str(path))
    # A misspelt key is only a warning (exit 0): any output at all is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        f"{path.name}:\n{result.stdout}{result.stderr}"


def exposure(path: Path) -> float:
    result = analyze("security", "--offline=true", str(path))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def rendered(tmp_path: Path) -> list[Path]:
    """Every unit as --install-service renders it, with this venv's real programs."""
    data = tmp_path / "var lib"  # a space: quoting must hold
    data.mkdir()
    out = tmp_path / "units"
    out.mkdir()
    paths = []
    for unit in (services.CLOUDCORE, services.EDGECORE, services.MAPPER):
        text = services.render(unit, bindir=services.bin_dir(services.BINARIES[unit]),
                               config=data / "daemon.yaml", data_dir=data)
        paths.append(out / unit)
        paths[-1].write_text(text)
    return paths


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    for path in rendered(tmp_path):
        verify(path)
        assert f"ExecStart={BIN}/" in path.read_text()
    # The check is real: a program that is not there fails it.
    broken = tmp_path / "broken" / services.CLOUDCORE
    broken.parent.mkdir()
    broken.write_text(services.render(services.CLOUDCORE, bindir=tmp_path / "nowhere",
                                      config=tmp_path / "c.yaml", data_dir=tmp_path))
    assert analyze("verify", str(broken)).returncode != 0


def test_every_unit_is_rated_ok_by_systemd_analyze_security(tmp_path: Path) -> None:
    scores = {path.name: exposure(path) for path in rendered(tmp_path)}
    print("exposure:", ", ".join(f"{name} {score}" for name, score in scores.items()))
    for name, score in scores.items():
        assert score <= TARGETS[name] <= 3.0, f"{name}: exposure {score}"


def test_init_and_join_install_service_write_units_that_verify(env: Env,
                                                                tmp_path: Path) -> None:
    units = tmp_path / "systemd"
    env.vars["MOORAGE_SYSTEMD_DIR"] = str(units)
    cloud_dir = tmp_path / "cloud-sd"
    init = env.run("moorage", "init", "--data-dir", str(cloud_dir), "--advertise-address",
                   "127.0.0.1", "--install-service")
    assert f"Wrote {units / 'cloudcore.service'}" in init.stdout
    assert "Not enabled" in init.stdout and "systemctl enable cloudcore.service" in init.stdout

    env.vars.pop("MOORAGE_SYSTEMD_DIR")
    cloud: Cloud = make_cloud(env).start()
    env.vars["MOORAGE_SYSTEMD_DIR"] = str(units)
    edge_dir = tmp_path / "edge-sd"
    result = env.run("moorage", "join", "--cloudcore-ipport", f"127.0.0.1:{cloud.hub_port}",
                     "--certport", str(cloud.cert_port), "--token", cloud.token(),
                     "--node-name", "edge-unit", "--data-dir", str(edge_dir),
                     "--install-service")
    print(result.stdout)
    assert f"Wrote {units / 'edgecore.service'}" in result.stdout
    assert f"Wrote {units / 'modbus-mapper@.service'}" in result.stdout
    assert "Not enabled" in result.stdout
    assert "systemctl daemon-reload && systemctl enable edgecore.service" in result.stdout
    edge_unit = (units / "edgecore.service").read_text()
    assert f"ExecStart={BIN}/edgecore --config {edge_dir / 'edgecore.yaml'} " in edge_unit
    assert f"ReadWritePaths={edge_dir}\n" in edge_unit
    assert oct((units / "edgecore.service").stat().st_mode & 0o777) == "0o644"
    assert (edge_dir / "edgecore.yaml").exists()
    for unit in ("cloudcore.service", "edgecore.service", "modbus-mapper@.service"):
        verify(units / unit)
    cloud_unit = (units / "cloudcore.service").read_text()
    assert f"--config {cloud_dir / 'cloudcore.yaml'} " in cloud_unit

    if not services.systemd_running():  # this container: it says so, and what to run
        assert "Not enabled: systemd is not running on this machine" in result.stdout
