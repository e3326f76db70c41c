"""When to renew a certificate: at a random 70-90% of its lifetime.

The randomness spreads the renewals of a fleet that enrolled together.
"""

from __future__ import annotations

import datetime as dt
import random

EARLIEST_FRACTION = 0.7
LATEST_FRACTION = 0.9


def rotation_deadline(
    not_before: dt.datetime, not_after: dt.datetime, rng: random.Random | None = None
) -> dt.datetime:
    fraction = (rng or random).uniform(EARLIEST_FRACTION, LATEST_FRACTION)
    return not_before + (not_after - not_before) * fraction
