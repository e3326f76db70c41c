"""Reconnect delays: exponential with full jitter, and plain doubling."""

from __future__ import annotations

import itertools
import math
import random

from hypothesis import given
from hypothesis import strategies as st

from moorage.backoff import doubling, full_jitter


class Extreme(random.Random):
    """An rng whose uniform draw is always the top (or bottom) of the range."""

    def __init__(self, top: bool) -> None:
        super().__init__(0)
        self.top = top

    def uniform(self, a: float, b: float) -> float:
        return b if self.top else a


def take(iterator: object, n: int) -> list[float]:
    return list(itertools.islice(iterator, n))  # type: ignore[call-overload]


@given(
    base=st.floats(min_value=0.01, max_value=10),
    extra=st.floats(min_value=0, max_value=100),
    factor=st.sampled_from([1.5, 2.0, 3.0]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_every_delay_is_within_the_exponential_ceiling(
    base: float, extra: float, factor: float, seed: int
) -> None:
    cap = base + extra
    delays = take(full_jitter(base, cap, factor, random.Random(seed)), 40)
    for n, delay in enumerate(delays):
        ceiling = min(cap, base * factor**n)
        assert 0.0 <= delay <= ceiling * (1 + 1e-9), (n, delay, ceiling)


@given(base=st.floats(min_value=0.01, max_value=10), extra=st.floats(min_value=0, max_value=60))
def test_upper_bound_is_exactly_min_cap_base_factor_n(base: float, extra: float) -> None:
    cap = base + extra  # base > cap: see test_a_base_above_the_cap_is_still_capped
    tops = take(full_jitter(base, cap, 2.0, Extreme(top=True)), 30)
    for n, delay in enumerate(tops):
        assert math.isclose(delay, min(cap, base * 2.0**n), rel_tol=1e-9), (n, delay)


def test_lower_bound_is_zero() -> None:
    assert take(full_jitter(0.5, 30, 2.0, Extreme(top=False)), 10) == [0.0] * 10


def test_a_base_above_the_cap_is_still_capped() -> None:
    # The documented contract: attempt n waits uniform(0, min(cap, base * factor**n)).
    delays = take(full_jitter(base=60.0, cap=30.0, rng=Extreme(top=True)), 5)
    assert max(delays) <= 30.0, delays


def test_cap_respected_after_many_attempts() -> None:
    delays = take(full_jitter(0.5, 30.0, 2.0, random.Random(3)), 10_000)
    assert max(delays) <= 30.0
    assert min(delays) >= 0.0
    # Long after the ceiling reached the cap, delays fill the whole range up to it.
    assert max(delays[100:]) > 25.0


def test_defaults_stay_within_half_a_second_then_thirty() -> None:
    delays = take(full_jitter(rng=random.Random(1)), 200)
    assert 0.0 <= delays[0] <= 0.5
    assert all(0.0 <= d <= 30.0 for d in delays)


def test_jitter_draws_differ() -> None:
    delays = take(full_jitter(1.0, 1.0, 2.0, random.Random(42)), 20)
    assert len(set(delays)) > 15


def test_seed_reproducible_and_seeds_differ() -> None:
    first = take(full_jitter(rng=random.Random(9)), 10)
    assert first == take(full_jitter(rng=random.Random(9)), 10)
    assert first != take(full_jitter(rng=random.Random(10)), 10)


def test_doubling() -> None:
    assert take(doubling(), 6) == [2, 4, 8, 16, 32, 32]
    assert take(doubling(1.0, 5.0), 5) == [1.0, 2.0, 4.0, 5.0, 5.0]
