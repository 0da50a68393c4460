"""Mean, spread and a plain noise verdict over seeds: the numbers every results table prints."""

from __future__ import annotations

import math
from statistics import mean, median, stdev
from typing import Optional, Sequence


def mean_sd(values: Sequence[float]):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return mean(values), (stdev(values) if len(values) > 1 else None)


def fmt_mean_sd(values: Sequence[float], digits: int = 1) -> str:
    m, s = mean_sd(values)
    if m is None:
        return "n/a"
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if s is not None else "")


def fmt_ratio(values: Sequence[float]) -> str:
    """Per-seed ratios: median [min, max]."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def difference(a: Sequence[float], b: Sequence[float]):
    """``mean(a) - mean(b)`` and its standard error (unpaired, Welch); se None with fewer than 2 seeds each."""
    a, b = [v for v in a if v is not None], [v for v in b if v is not None]
    if not a or not b:
        return None, None
    diff = mean(a) - mean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, None
    return diff, math.sqrt(stdev(a) ** 2 / len(a) + stdev(b) ** 2 / len(b))


def verdict(diff: Optional[float], se: Optional[float], floor: float = 0.0) -> str:
    """'within noise' when |diff| <= 2 standard errors (or ``floor``, e.g. the kNN's query-sampling error)."""
    if diff is None:
        return "n/a"
    if se is None:
        return "one seed: cannot tell"
    if abs(diff) <= max(2 * se, floor):
        return "within noise"
    return "higher" if diff > 0 else "lower"


def query_sampling_se(top1_pct: float, n_queries: int) -> float:
    """Binomial standard error (points) of a top-1 measured on ``n_queries`` images."""
    p = top1_pct / 100
    return 100 * math.sqrt(max(p * (1 - p), 1e-12) / max(n_queries, 1))
