"""systemd's notify protocol against a real unix datagram socket, as systemd listens."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moorage import logs, sdnotify
from tests.support import SCALE, wait_for


@dataclass
class Listener:
    """What systemd does: a bound AF_UNIX/SOCK_DGRAM socket; every datagram timestamped."""

    sock: socket.socket
    received: list[tuple[float, str]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.sock.settimeout(0.02)
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def messages(self) -> list[str]:
        return [m for _, m in self.received]

    def pings(self) -> list[float]:
        return [t for t, m in self.received if m == "WATCHDOG=1"]


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
    else:
        name = f"moorage-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    listening = Listener(sock)
    thread = threading.Thread(target=listening.run, daemon=True)
    thread.start()
    try:
        yield listening
    finally:
        listening.done.set()
        thread.join()
        sock.close()


def test_ready_with_status_and_stopping_reach_the_socket(listener: Listener) -> None:
    assert sdnotify.ready("serving 3 listeners")
    assert sdnotify.stopping()
    wait_for(lambda: len(listener.received) == 2, 5, what="two datagrams")
    assert listener.messages() == ["READY=1\nSTATUS=serving 3 listeners", "STOPPING=1"]
    assert sdnotify.ready()
    wait_for(lambda: len(listener.received) == 3, 5, what="a third datagram")
    assert listener.messages()[2] == "READY=1"


def test_outside_systemd_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert sdnotify.ready() is False  # a vanished listener is a lost message, no exception
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.socket_address() is None


def test_watchdog_interval_from_the_environment() -> None:
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    # WATCHDOG_PID names the process meant: an inheriting child must not ping for it.
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "41"},
                                      pid=41) == 2.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "41"},
                                      pid=42) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000",
                                       "WATCHDOG_PID": str(os.getpid())}) == 2.0


def test_no_watchdog_asked_for_means_no_pings(listener: Listener) -> None:
    async def main() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(sdnotify.watchdog(stopping))
        await asyncio.wait_for(task, 5)  # returns at once

    asyncio.run(main())
    assert listener.received == []


def test_pings_follow_the_loop_and_stop_while_it_is_blocked(
        listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    interval = 0.4 * SCALE  # WatchdogSec; pings every interval / 2
    monkeypatch.setenv("WATCHDOG_USEC", str(int(interval * 1_000_000)))
    marks: dict[str, float] = {}

    async def main() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(sdnotify.watchdog(stopping))
        while len(listener.pings()) < 6:  # a turning loop: the cadence
            await asyncio.sleep(0.01)
        marks["block"] = time.monotonic()
        time.sleep(3 * interval)  # the stuck loop under test
        marks["unblock"] = time.monotonic()
        while len([t for t in listener.pings() if t > marks["unblock"]]) < 3:
            await asyncio.sleep(0.01)
        stopping.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(asyncio.wait_for(main(), 30 * SCALE))
    pings = listener.pings()
    before = [t for t in pings if t <= marks["block"]]
    gaps = [b - a for a, b in itertools.pairwise(before)]
    # Every ping within the interval systemd enforces, about every half interval.
    assert max(gaps) < interval, gaps
    assert interval / 4 < sum(gaps) / len(gaps) < interval * 0.75, gaps
    # Not one ping while the loop was stuck (a datagram sent just before the block
    # may be read a moment after it started).
    slack = 0.05 * SCALE
    during = [t for t in pings if marks["block"] + slack < t < marks["unblock"]]
    assert during == [], (during, marks)
    # systemd would have seen silence for longer than WatchdogSec, and killed us.
    last_before = max(t for t in pings if t <= marks["block"] + slack)
    first_after = min(t for t in pings if t >= marks["unblock"])
    assert first_after - last_before > interval
    # ...and the pings resume as soon as the loop turns again.
    assert first_after - marks["unblock"] < interval / 2


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    target = tmp_path / "stream"
    target.write_text("")
    with target.open("a") as handle:
        info = os.fstat(handle.fileno())
        fd = handle.fileno()
        assert logs.journal_stderr({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}, fd)
        # Inherited from a parent whose stderr went to the journal; ours does not.
        assert not logs.journal_stderr({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"},
                                       fd)
        assert not logs.journal_stderr({"JOURNAL_STREAM": "garbage"}, fd)
        assert not logs.journal_stderr({}, fd)
