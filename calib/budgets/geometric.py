"""Geometric epsilon budgets from nearest-neighbour distances (docs/design.md, "Budgets").

Threat model: an L_p ball ``{x' : ||x' - x||_p <= eps}`` around a clean point x of class c. The ball
is *safe* for x when it neither contains another same-class image (``eps < d_same(x)``) nor
reaches halfway to another class (``eps < d_diff(x) / 2``). For quantile level q and safety
factor s, per class c::

    eps_geo(c) = s * min( Q_q{ d_diff(x)/2 : y=c },  Q_q{ d_same(x) : y=c } )

and per sample ``eps(x) = s * min(d_diff(x)/2, d_same(x))`` (the supremum of safe radii).
*Coverage* is the share of class-c points whose ball of radius eps is safe, measured, not assumed:
each condition alone fails for about q of the points, together for up to 2q, and ties push it
lower still. Ties are the rule in L-inf on 8-bit data: on MNIST most d_diff are 252-255/255, so
Q_q{d_diff/2} sits exactly on a tied value and every tied point's ball reaches halfway (measured:
coverage 0.23-0.94 per class at s = 1). The table records what was achieved.

``rule="coverage"`` instead takes, per class, the largest radius whose coverage is at least 1-q:
with ``m(x) = min(d_diff(x)/2, d_same(x))`` sorted ascending and ``j = floor(q n)``, every radius
below ``m_(j+1)`` is safe for all but j points, so ``eps = s * nextafter(m_(j+1), 0)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.errors import ConfigError, DataError

#: the global budgets of the literature, compared against in every run (data units, pixels in [0,1])
CUSTOMARY = {"linf": (0.3,), "l2": (1.5, 2.0, 4.5)}
QUANTILE_METHOD = "linear"
RULES = ("quantile", "coverage")


@dataclass(frozen=True)
class Policy:
    """Quantile level ``q`` in [0, 1), safety factor ``s`` > 0, numpy quantile ``method``, and the
    ``rule``: ``quantile`` (docs/design.md's formula, the default) or ``coverage`` (coverage >= 1-q)."""

    q: float = 0.05
    s: float = 1.0
    method: str = QUANTILE_METHOD
    rule: str = "quantile"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"unknown budget rule {self.rule!r}; choose {', '.join(RULES)}")
        if not 0.0 <= self.q < 1.0:
            raise ConfigError(f"quantile level q must be in [0, 1); got {self.q}")
        if not (self.s > 0 and np.isfinite(self.s)):
            raise ConfigError(f"safety factor s must be a positive number; got {self.s}")


@dataclass(frozen=True)
class Budget:
    """Per-class budget (K,), its two quantile components, coverage (K,), class sizes, per-sample budgets."""

    eps: np.ndarray
    half_d_diff_q: np.ndarray
    d_same_q: np.ndarray
    coverage: np.ndarray
    n: np.ndarray
    per_sample: np.ndarray


def safe_mask(eps: np.ndarray | float, d_same: np.ndarray, d_diff: np.ndarray) -> np.ndarray:
    """True where a ball of radius ``eps`` is safe: ``eps < d_same`` and ``eps < d_diff / 2``."""
    return (eps < d_same) & (eps < d_diff / 2)


def class_share(ok: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of each class's points where ``ok`` holds, (K,) (NaN for an empty class)."""
    n = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(labels, weights=ok, minlength=num_classes) / n


def coverage(eps_per_class: np.ndarray, d_same: np.ndarray, d_diff: np.ndarray, labels: np.ndarray,
             num_classes: int) -> np.ndarray:
    """Share of each class's points whose ball of their class's radius is safe, (K,) (NaN if empty)."""
    return class_share(safe_mask(np.asarray(eps_per_class)[labels], d_same, d_diff), labels, num_classes)


def geometric_budget(d_same: np.ndarray, d_diff: np.ndarray, labels: np.ndarray, num_classes: int,
                     policy: Policy = Policy()) -> Budget:
    """The geometric budget of every class from per-sample ``d_same``/``d_diff`` (all shape (N,)).

    Raises:
        DataError: a class has no points, or a distance is NaN/inf (e.g. a class with one point,
            which has no same-class neighbour).
    """
    d_same, d_diff = np.asarray(d_same, np.float64), np.asarray(d_diff, np.float64)
    labels = np.asarray(labels, np.int64)
    if not (np.isfinite(d_same).all() and np.isfinite(d_diff).all()):
        bad = sorted(set(labels[~(np.isfinite(d_same) & np.isfinite(d_diff))].tolist()))
        raise DataError(f"classes {bad} have points without a same- or other-class neighbour "
                        "(a class needs at least 2 points)")
    n = np.bincount(labels, minlength=num_classes)
    if (n == 0).any():
        raise DataError(f"classes {np.flatnonzero(n == 0).tolist()} have no points to calibrate on")
    half_q = np.array([np.quantile(d_diff[labels == c] / 2, policy.q, method=policy.method)
                       for c in range(num_classes)])
    same_q = np.array([np.quantile(d_same[labels == c], policy.q, method=policy.method)
                       for c in range(num_classes)])
    if policy.rule == "coverage":
        eps = np.empty(num_classes)
        for c in range(num_classes):
            m = np.sort(np.minimum(d_diff[labels == c] / 2, d_same[labels == c]))
            j = int(np.floor(policy.q * m.size))
            eps[c] = policy.s * np.nextafter(m[min(j, m.size - 1)], 0.0)
        eps = np.maximum(eps, 0.0)
    else:
        eps = policy.s * np.minimum(half_q, same_q)
    per_sample = policy.s * np.minimum(d_diff / 2, d_same)
    return Budget(eps, half_q, same_q, coverage(eps, d_same, d_diff, labels, num_classes), n, per_sample)


def global_violations(eps: float, d_same: np.ndarray, d_diff: np.ndarray, labels: np.ndarray,
                      num_classes: int) -> dict[str, np.ndarray]:
    """For one global radius: per class, the share whose ball contains a same-class image, the
    share whose ball reaches halfway to another class, and the share with either (all (K,))."""
    n = np.bincount(labels, minlength=num_classes)

    def share(mask: np.ndarray) -> np.ndarray:
        return np.bincount(labels, weights=mask, minlength=num_classes) / n

    return {"contains_same": share(eps >= d_same), "reaches_halfway": share(eps >= d_diff / 2),
            "either": share(~safe_mask(eps, d_same, d_diff))}
