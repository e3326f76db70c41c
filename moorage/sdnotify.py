"""systemd's notify protocol (sd_notify(3)) in a few lines, without libsystemd.

Under a ``Type=notify`` unit systemd passes ``NOTIFY_SOCKET``, a unix datagram socket
(a path, or an abstract name written with a leading ``@``). A daemon sends
newline-separated ``KEY=VALUE`` assignments to it: ``READY=1`` once it serves,
``STATUS=...`` for ``systemctl status``, ``STOPPING=1`` on shutdown, and, when the unit
has ``WatchdogSec=``, ``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` microseconds.

:func:`watchdog` pings from the event loop itself: a loop that is blocked stops pinging,
and systemd kills and restarts the daemon. Outside systemd every call is a no-op that
returns ``False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("moorage.sdnotify")


def socket_address(env: Mapping[str, str] = os.environ) -> str | None:
    """The address in ``NOTIFY_SOCKET``, abstract names with their leading NUL; or None."""
    value = env.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # unset, or a kind we do not speak (vsock:)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); True if it was handed to systemd's socket.

    Never blocks: a full socket buffer or a vanished listener is a lost message, which
    is what libsystemd does too."""
    address = socket_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.debug("sd_notify %r to %s failed: %s", state, address, exc)
        return False
    return True


def ready(status: str = "") -> bool:
    """``READY=1``: the daemon serves; ``status`` shows up in ``systemctl status``."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval(env: Mapping[str, str] = os.environ, pid: int | None = None
                      ) -> float | None:
    """Seconds within which systemd wants ``WATCHDOG=1``, or None when it wants none.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for: a child that
    inherited the environment must not ping on its parent's behalf."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return usec / 1_000_000


async def watchdog(stopping: asyncio.Event) -> None:
    """Ping ``WATCHDOG=1`` every half interval until ``stopping`` is set.

    Runs as a task on the daemon's loop, so the pings prove that the loop turns."""
    interval = watchdog_interval()
    if interval is None or socket_address() is None:
        return
    log.debug("systemd watchdog: pinging every %.3fs", interval / 2)
    while not stopping.is_set():
        notify("WATCHDOG=1")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval / 2)
