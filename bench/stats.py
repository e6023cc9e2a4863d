"""Small statistics helpers: medians and percentiles of timings (floats are fine here)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in (0, 100]; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``min-max`` of the values, each written with ``fmt``; ``n/a`` for none."""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}" if values else "n/a"
