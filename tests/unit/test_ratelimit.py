"""Token buckets and the per-key limiter, on a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from moorage.ratelimit import KeyedLimiter, TokenBucket


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.times = [start]

    def __call__(self) -> float:
        return self.times[-1]

    def advance(self, seconds: float) -> None:
        self.times.append(self.times[-1] + seconds)


def drain(allow: object, attempts: int = 1000) -> int:
    """How many consecutive calls are allowed before the first refusal."""
    for n in range(attempts):
        if not allow():  # type: ignore[operator]
            return n
    return attempts


def test_burst_then_refusal() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=1.0, burst=5, clock=clock)
    assert [bucket.allow() for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.allow()


def test_refill_over_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=2.0, burst=4, clock=clock)
    assert drain(bucket.allow) == 4
    clock.advance(0.4)  # 0.8 tokens: not yet
    assert not bucket.allow()
    clock.advance(0.1)  # 1.0 token
    assert bucket.allow()
    assert not bucket.allow()
    clock.advance(1.0)  # 2 tokens
    assert drain(bucket.allow) == 2


def test_refill_never_exceeds_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=10.0, burst=3, clock=clock)
    drain(bucket.allow)
    clock.advance(3600)
    assert drain(bucket.allow) == 3


@given(rate=st.floats(min_value=0.1, max_value=100), burst=st.integers(min_value=1, max_value=50),
       gaps=st.lists(st.floats(min_value=0, max_value=10), max_size=30))
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    allowed = drain(bucket.allow)
    for gap in gaps:
        clock.advance(gap)
        allowed += drain(bucket.allow)
    elapsed = clock() - 1000.0
    assert allowed <= burst + rate * elapsed + 1e-6
    assert allowed >= burst


def test_keyed_limiter_is_per_key() -> None:
    clock = FakeClock()
    limiter = KeyedLimiter(per_minute=10, clock=clock)  # burst 5, 1 token / 6 s
    assert drain(lambda: limiter.allow("10.0.0.1")) == 5
    assert limiter.allow("10.0.0.2")
    clock.advance(6)
    assert limiter.allow("10.0.0.1")
    assert not limiter.allow("10.0.0.1")


def test_keyed_limiter_minimum_burst_of_one() -> None:
    limiter = KeyedLimiter(per_minute=1, clock=FakeClock())
    assert limiter.allow("k")
    assert not limiter.allow("k")


def test_keys_beyond_max_are_evicted_oldest_first() -> None:
    clock = FakeClock()
    limiter = KeyedLimiter(per_minute=2, max_keys=3, clock=clock)  # burst 1
    for key in ("a", "b", "c"):
        assert limiter.allow(key)
        assert not limiter.allow(key)
    assert list(limiter.buckets) == ["a", "b", "c"]
    assert limiter.allow("d")  # evicts "a", the least recently seen
    assert len(limiter.buckets) == 3
    assert "a" not in limiter.buckets
    # "a" comes back with a fresh bucket; "c" was not forgotten and is still empty.
    assert limiter.allow("a")
    assert not limiter.allow("d")
    assert "c" in limiter.buckets
    assert not limiter.allow("c")


def test_recently_used_keys_survive_eviction() -> None:
    limiter = KeyedLimiter(per_minute=2, max_keys=2, clock=FakeClock())
    limiter.allow("old")
    limiter.allow("busy")
    limiter.allow("old")  # "old" is now the most recent
    limiter.allow("new")  # evicts "busy"
    assert set(limiter.buckets) == {"old", "new"}
    assert not limiter.allow("old")


@given(st.lists(st.text(max_size=3), max_size=200), st.integers(min_value=1, max_value=10))
def test_key_count_is_bounded(keys: list[str], max_keys: int) -> None:
    limiter = KeyedLimiter(per_minute=60, max_keys=max_keys, clock=FakeClock())
    for key in keys:
        limiter.allow(key)
        assert len(limiter.buckets) <= max_keys
