"""The embedding margin budget (docs/design.md, "Budgets"): the radius in embedding space that provably
keeps the 1-NN label.

Threat model: a point x of class y whose embedding g(x) may move anywhere within an L2 ball of radius
eps in embedding space. With ``d_same_g(x)`` / ``d_diff_g(x)`` its distances to the nearest same-class /
other-class reference embedding, every point z with ``||z - g(x)|| < m(x)`` where::

    m(x) = (d_diff_g(x) - d_same_g(x)) / 2

is still nearer a class-y reference than any other (both distances change by at most
``||z - g(x)||``), so its 1-NN label stays y. A point the 1-NN rule already gets wrong has m(x) < 0:
its safe radius is 0 and it counts against coverage. Per class c, for quantile level q and safety
factor s::

    eps_emb(c) = s * Q_q{ m(x) : y=c }    (clipped at 0)

and *coverage* is the share of class-c points with ``eps_emb(c) < m(x)``, measured, not assumed.
``rule="coverage"`` takes the largest radius whose coverage is at least 1-q instead.

Condition 2 of the problem (no same-class interpolation) is an input-space condition; in the
embedding, moving toward other images of the same class is exactly what "same meaning" allows, so
``d_same_g`` bounds the budget only through the margin. (The first version used
``min(Q_q{d_diff_g/2}, Q_q{d_same_g})``, which on MNIST is 5-10x smaller and collapses every
semantic budget to one or two grey levels.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.budgets.geometric import Policy, class_share
from calib.errors import DataError


@dataclass(frozen=True)
class MarginBudget:
    """Per class (K,): the budget, the margin quantile, the share of points with a negative margin
    (1-NN wrong), coverage and class sizes; per sample (N,): the margin m(x) and its budget
    ``s * max(m(x), 0)``."""

    eps: np.ndarray
    margin_q: np.ndarray
    negative_share: np.ndarray
    coverage: np.ndarray
    n: np.ndarray
    margin: np.ndarray
    per_sample: np.ndarray


def one_nn_margin(d_same: np.ndarray, d_diff: np.ndarray) -> np.ndarray:
    """``m(x) = (d_diff(x) - d_same(x)) / 2`` per sample (float64)."""
    return (np.asarray(d_diff, np.float64) - np.asarray(d_same, np.float64)) / 2


def margin_coverage(eps_per_class: np.ndarray, margin: np.ndarray, labels: np.ndarray,
                    num_classes: int) -> np.ndarray:
    """Share of each class's points whose ball of their class's radius keeps the 1-NN label
    (``eps < m(x)``), (K,)."""
    return class_share(np.asarray(eps_per_class)[labels] < margin, labels, num_classes)


def margin_budget(d_same: np.ndarray, d_diff: np.ndarray, labels: np.ndarray, num_classes: int,
                  policy: Policy = Policy()) -> MarginBudget:
    """The embedding margin budget of every class from per-sample embedding ``d_same``/``d_diff`` (N,).

    Raises:
        DataError: a class has no points, or a distance is NaN/inf (a class with one point has
            no same-class neighbour).
    """
    labels = np.asarray(labels, np.int64)
    m = one_nn_margin(d_same, d_diff)
    if not np.isfinite(m).all():
        bad = sorted(set(labels[~np.isfinite(m)].tolist()))
        raise DataError(f"classes {bad} have points without a same- or other-class neighbour in the embedding "
                        "(a class needs at least 2 points)")
    n = np.bincount(labels, minlength=num_classes)
    if (n == 0).any():
        raise DataError(f"classes {np.flatnonzero(n == 0).tolist()} have no points to calibrate on")
    mq = np.array([np.quantile(m[labels == c], policy.q, method=policy.method) for c in range(num_classes)])
    if policy.rule == "coverage":
        eps = np.empty(num_classes)
        for c in range(num_classes):
            mc = np.sort(m[labels == c])
            j = int(np.floor(policy.q * mc.size))
            eps[c] = policy.s * np.nextafter(mc[min(j, mc.size - 1)], -np.inf)
    else:
        eps = policy.s * mq
    eps = np.maximum(eps, 0.0)
    negative = np.bincount(labels, weights=m <= 0, minlength=num_classes) / n
    return MarginBudget(eps, mq, negative, margin_coverage(eps, m, labels, num_classes), n, m,
                        policy.s * np.maximum(m, 0.0))


__all__ = ["MarginBudget", "margin_budget", "margin_coverage", "one_nn_margin"]
