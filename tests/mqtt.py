"""A real MQTT broker for eventbus tests: mosquitto in its own process, on free loopback ports,
with its own config file in a temp dir.

    with Mosquitto(tmp_path, tls=TLSFiles(ca, cert, key)) as broker:
        ...  # plain MQTT on broker.port, TLS with client certificates on broker.tls_port
        broker.stop()    # a broker that went away (connections are cut)
        broker.start()   # back on the same ports

``require_mosquitto()`` skips a test when mosquitto is not installed, or fails it when
MOORAGE_REQUIRE_SERVICES=1 (CI must have it). Every process started here is stopped by
``stop()``, and by leaving the ``with`` block whatever happened inside it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from tests.support import SCALE, free_port, port_open, require

T = TypeVar("T")
INSTALL_HINT = ("mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients "
                "(or run scripts/install-system-deps.sh as root)")


def mosquitto_binary() -> str | None:
    # Debian puts the broker in /usr/sbin, which is not on every user's PATH.
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def mosquitto_available() -> bool:
    return mosquitto_binary() is not None


def require_mosquitto() -> None:
    require(mosquitto_available(), INSTALL_HINT)


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a TLS listener: the CA that signs client certificates, and the broker's
    own certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class Mosquitto:
    """One mosquitto broker: a plain listener on ``port`` and, with ``tls``, a TLS listener
    on ``tls_port`` that requires a client certificate signed by ``tls.ca_file``."""

    def __init__(self, root: Path, *, port: int | None = None, tls: TLSFiles | None = None,
                 start_timeout: float = 10.0) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        self.binary = binary
        self.dir = root / "mosquitto"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.tls_port = free_port() if tls is not None else None
        self.start_timeout = start_timeout
        self.config_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path.write_text(self._config())

    def _config(self) -> str:
        lines = [
            "# written by tests/mqtt.py",
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # Else mosquitto drops to user "mosquitto" and cannot read our 0600 keys.
            lines.append("user root")
        lines.append(f"listener {self.port} 127.0.0.1")
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                "require_certificate true",
                "tls_version tlsv1.2",
            ]
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this broker has no TLS listener: pass tls=TLSFiles(...)")
        return f"ssl://127.0.0.1:{self.tls_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> Mosquitto:
        """Start the broker (again, on the same ports) and wait until every listener accepts."""
        if self.running:
            return self
        with self.log_path.open("ab") as handle:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config_path)],
                                         stdout=handle, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        deadline = time.monotonic() + self.start_timeout * SCALE
        while not all(port_open(p) for p in ports):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"mosquitto exited with {code} at start:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on {ports} within "
                                   f"{self.start_timeout * SCALE:.1f}s:\n{self.log()[-3000:]}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker; every client connection is cut. Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout * SCALE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def eventually(condition: Callable[[], T], timeout: float = 10.0,
                     what: str = "condition") -> T:
    """Poll ``condition`` on the event loop until it is truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout * SCALE
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * SCALE:.1f}s waiting for {what}")
        await asyncio.sleep(0.01)
