"""Distribution-free confidence intervals for quantiles, from order statistics.

For n exchangeable values with a continuous distribution and its q-quantile Q_q, the number of values
below Q_q is Binomial(n, q), so for 1-based ranks l < u

    P( X_(l) <= Q_q <= X_(u) ) >= sum_{i=l}^{u-1} C(n, i) q^i (1 - q)^(n - i)

whatever the distribution. :func:`quantile_interval` takes the narrowest such ranks with at most
alpha/2 of the binomial mass outside on each side. With 150 points per class and q = 0.05 the point
estimate is decided by the 7 smallest values, and the interval runs from about the 2nd to the 13th.

Where the lower rank would be 0 the lower end is ``floor`` (0 for distances and radii, which cannot
be negative); where the upper rank would exceed n the upper end is ``inf`` (no finite bound at that
confidence). A budget made of several quantiles (the geometric ``min(Q(d_diff/2), Q(d_same))``, the
final ``min(geometric, semantic)``) takes each interval at level ``1 - alpha/k`` (Bonferroni), so the
interval of the minimum, ``[min of the lows, min of the highs]``, holds with probability >= 1 - alpha.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binom

from calib.errors import ConfigError

#: the coverage every per-class interval is stated at
CONFIDENCE = 0.95


def order_ranks(n: int, q: float, alpha: float = 1 - CONFIDENCE) -> tuple[int, int]:
    """1-based ranks (l, u) of the order statistics bracketing Q_q with confidence >= 1 - alpha;
    l = 0 means "below the smallest value", u = n + 1 "above the largest"."""
    if n < 1:
        raise ConfigError("a quantile interval needs at least one value")
    if not 0 < alpha < 1 or not 0 <= q < 1:
        raise ConfigError(f"need 0 < alpha < 1 and 0 <= q < 1; got alpha {alpha}, q {q}")
    cdf = binom.cdf(np.arange(n + 1), n, q)  # cdf[k] = P(B <= k)
    # lower: the largest l with P(B <= l - 1) <= alpha/2 (so P(X_(l) > Q) <= alpha/2)
    ok = np.flatnonzero(np.concatenate([[0.0], cdf[:-1]]) <= alpha / 2)  # index l in 0..n: P(B <= l-1)
    lo = int(ok.max()) if ok.size else 0
    # upper: the smallest u with P(B >= u) <= alpha/2, i.e. P(B <= u - 1) >= 1 - alpha/2
    hit = np.flatnonzero(cdf >= 1 - alpha / 2)  # index u-1
    hi = int(hit.min()) + 1 if hit.size else n + 1
    return lo, hi


def quantile_interval(values: np.ndarray, q: float, alpha: float = 1 - CONFIDENCE, *,
                      floor: float = 0.0) -> tuple[float, float]:
    """[lo, hi] containing Q_q of the distribution ``values`` were drawn from with probability
    >= 1 - alpha (``inf`` values, "no change found", sort last)."""
    v = np.sort(np.asarray(values, np.float64))
    lo_r, hi_r = order_ranks(len(v), q, alpha)
    lo = floor if lo_r == 0 else float(v[lo_r - 1])
    hi = np.inf if hi_r > len(v) else float(v[hi_r - 1])
    return lo, hi


def class_intervals(values: np.ndarray, labels: np.ndarray, num_classes: int, q: float, s: float = 1.0,
                    alpha: float = 1 - CONFIDENCE, mask: np.ndarray | None = None) -> np.ndarray:
    """(K, 2) ``s * [lo, hi]`` per class over the points of ``mask`` (default all); a class without
    points there gets ``[0, inf]`` (nothing is known)."""
    values, labels = np.asarray(values, np.float64), np.asarray(labels)
    keep = np.ones(len(labels), bool) if mask is None else np.asarray(mask, bool)
    out = np.empty((num_classes, 2))
    for c in range(num_classes):
        v = values[keep & (labels == c)]
        out[c] = (0.0, np.inf) if v.size == 0 else np.array(quantile_interval(v, q, alpha)) * s
    return out


def min_interval(*intervals: np.ndarray) -> np.ndarray:
    """The interval of ``min`` of several quantities, each (K, 2): [min of lows, min of highs] (state each
    at level 1 - alpha/k for a joint 1 - alpha)."""
    stack = np.stack(intervals)
    return np.stack([stack[..., 0].min(0), stack[..., 1].min(0)], axis=-1)


__all__ = ["CONFIDENCE", "order_ranks", "quantile_interval", "class_intervals", "min_interval"]
