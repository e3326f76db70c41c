"""Small asyncio helpers shared by the daemons."""

from __future__ import annotations

import asyncio


async def sleep_or_stop(seconds: float, stopping: asyncio.Event) -> bool:
    """Sleep up to ``seconds``; True if ``stopping`` was set meanwhile."""
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
        return True
    except TimeoutError:
        return False


async def wait_any(seconds: float | None, *events: asyncio.Event) -> None:
    """Return when any of ``events`` is set, or after ``seconds`` (None: no deadline)."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
