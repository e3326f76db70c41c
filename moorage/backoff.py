"""Reconnect delays: exponential growth with full jitter.

Full jitter (a uniform draw between zero and the exponential cap) keeps a
fleet that lost its cloud at the same instant from reconnecting in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def full_jitter(
    base: float = 0.5, cap: float = 30.0, factor: float = 2.0, rng: random.Random | None = None
) -> Iterator[float]:
    """Yield delays forever: attempt n waits uniform(0, min(cap, base * factor**n))."""
    draw = rng or random.Random()
    ceiling = min(cap, base)
    while True:
        yield draw.uniform(0.0, ceiling)
        ceiling = min(cap, ceiling * factor)


def doubling(first: float = 2.0, cap: float = 32.0) -> Iterator[float]:
    """Deterministic doubling delays up to ``cap``, for retries of one local action."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * 2)
