"""Go-style durations ("24h", "1h30m", "500ms") plus days ("365d")."""

from __future__ import annotations

import datetime as dt
import math
import re

from moorage.errors import ConfigError

MAX_SECONDS = 100 * 365 * 86400.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_seconds(text: str | float | int, what: str = "duration") -> float:
    """Seconds in ``text``; a bare number is seconds."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ConfigError(f"{what}: expected a duration such as 30s or 24h, got {text!r}")
    if isinstance(text, int | float):
        try:
            value = float(text)
        except OverflowError:
            raise ConfigError(f"{what}: {text!r} is out of range") from None
    else:
        spec = text.strip()
        pos, value = 0, 0.0
        for match in _PART.finditer(spec):
            if match.start() != pos:
                break
            value += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(spec) or not spec:
            try:
                value = float(spec)
            except ValueError:
                raise ConfigError(
                    f"{what}: {text!r} is not a duration: write for example 30s, 15m, 24h or 365d"
                ) from None
    if not math.isfinite(value) or value > MAX_SECONDS:
        raise ConfigError(f"{what}: {text!r} is not a usable duration (at most 100 years)")
    if value <= 0:
        raise ConfigError(f"{what}: must be positive, got {text!r}")
    return value


def parse_duration(text: str | float | int, what: str = "duration") -> dt.timedelta:
    return dt.timedelta(seconds=parse_seconds(text, what))


def format_age(seconds: float) -> str:
    """kubectl's compact ages: 42s, 5m3s, 3h12m, 4d5h, 400d."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 3 * 3600:
        return f"{s // 60}m"
    if s < 8 * 3600:
        return f"{s // 3600}h{(s % 3600) // 60}m" if (s % 3600) // 60 else f"{s // 3600}h"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    if s < 8 * 86400:
        return f"{s // 86400}d{(s % 86400) // 3600}h" if (s % 86400) // 3600 else f"{s // 86400}d"
    return f"{s // 86400}d"
