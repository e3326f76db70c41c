"""Certificate renewal deadlines: a random point at 70-90% of the lifetime."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given
from hypothesis import strategies as st

from certs.rotation import rotation_deadline

START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

lifetimes = st.timedeltas(min_value=dt.timedelta(seconds=1), max_value=dt.timedelta(days=3650))
starts = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)


@given(not_before=starts, lifetime=lifetimes, seed=st.integers(min_value=0, max_value=2**32))
def test_deadline_lies_between_70_and_90_percent(
    not_before: dt.datetime, lifetime: dt.timedelta, seed: int
) -> None:
    not_after = not_before + lifetime
    deadline = rotation_deadline(not_before, not_after, random.Random(seed))
    assert not_before + lifetime * 0.7 <= deadline <= not_before + lifetime * 0.9
    assert deadline < not_after


@given(lifetime=lifetimes)
def test_default_rng_also_stays_in_the_window(lifetime: dt.timedelta) -> None:
    deadline = rotation_deadline(START, START + lifetime)
    assert START + lifetime * 0.7 <= deadline <= START + lifetime * 0.9


def test_same_seed_same_deadline() -> None:
    end = START + dt.timedelta(days=365)
    assert rotation_deadline(START, end, random.Random(7)) == rotation_deadline(
        START, end, random.Random(7)
    )


def test_deadlines_spread_across_a_fleet() -> None:
    lifetime = dt.timedelta(days=365)
    deadlines = [rotation_deadline(START, START + lifetime, random.Random(seed))
                 for seed in range(200)]
    assert len(set(deadlines)) == len(deadlines)
    fractions = sorted((d - START) / lifetime for d in deadlines)
    # Spread over the window, not bunched at one end.
    assert fractions[0] < 0.72
    assert fractions[-1] > 0.88
    assert 0.77 < fractions[len(fractions) // 2] < 0.83


def test_deadline_keeps_the_timezone() -> None:
    deadline = rotation_deadline(START, START + dt.timedelta(hours=1), random.Random(1))
    assert deadline.tzinfo is not None
    assert deadline.utcoffset() == dt.timedelta(0)
