"""Token buckets, per key, with a bounded number of keys."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate_per_second: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate_per_second, burst, clock
        self.tokens, self.stamp = burst, clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class KeyedLimiter:
    """One bucket per key (a client address); the oldest keys are forgotten past ``max_keys``."""

    def __init__(self, per_minute: int, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, per_minute / 2.0)
        self.max_keys, self.clock = max_keys, clock
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, key: str) -> bool:
        bucket = self.buckets.pop(key, None) or TokenBucket(self.rate, self.burst, self.clock)
        self.buckets[key] = bucket
        while len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        return bucket.allow()
