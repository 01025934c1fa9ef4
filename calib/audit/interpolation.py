"""Same-class interpolation: does an "adversarial" point just move toward another real image?

Two checks (docs/design.md, audit):

* ``interpolated``: x' is strictly closer to some same-class reference image than to x itself, so
  the attack may be moving to a real image of the class rather than perturbing x;
* ``ball_has_wrong``: the budget ball around x already contains a same-class reference image that
  the classifier misclassifies, so an attack succeeding inside it measures generalisation error,
  not robustness.

All points are flattened rows (N, d); distances in the given norm (``l2``, ``linf``, ``l1``).
"""
from __future__ import annotations

import numpy as np

from calib.perturb.invariants import perturbation_norms
from calib.stats.neighbours import nearest


def nearest_same_class(points: np.ndarray, labels: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray,
                       norm: str, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distance to, and index of, the nearest same-class reference of each point (optionally only
    among references where ``mask`` is true); ``inf``/-1 when there is none."""
    d = np.full(len(points), np.inf)
    idx = np.full(len(points), -1, np.int64)
    keep = np.ones(len(reference), bool) if mask is None else np.asarray(mask, bool)
    for c in np.unique(labels):
        q = np.flatnonzero(labels == c)
        r = np.flatnonzero((reference_labels == c) & keep)
        if r.size == 0:
            continue
        dc, ic = nearest(points[q], reference[r], norm)
        d[q], idx[q] = dc, np.where(ic >= 0, r[np.maximum(ic, 0)], -1)
    return d, idx


def interpolation(x: np.ndarray, x_adv: np.ndarray, labels: np.ndarray, reference: np.ndarray,
                  reference_labels: np.ndarray, norm: str) -> dict[str, np.ndarray]:
    """Per example: ``dist_to_x`` = ||x' - x||, ``dist_to_same`` = distance from x' to its nearest
    same-class reference, ``nearest_same`` (its index) and ``interpolated`` = ``dist_to_same < dist_to_x``.

    ``x``, ``x_adv``: (N, d) float32; ``reference``: (R, d); x itself must not be in the reference set.
    """
    import torch

    to_x = perturbation_norms(torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                              torch.from_numpy(np.ascontiguousarray(x_adv, np.float32)), norm).double().numpy()
    d, i = nearest_same_class(x_adv, labels, reference, reference_labels, norm)
    return {"dist_to_x": to_x, "dist_to_same": d, "nearest_same": i, "interpolated": d < to_x}


def ball_has_wrong(points: np.ndarray, labels: np.ndarray, eps: np.ndarray, reference: np.ndarray,
                   reference_labels: np.ndarray, reference_wrong: np.ndarray, norm: str
                   ) -> dict[str, np.ndarray]:
    """Whether the ball ``||r - x|| <= eps`` around each point contains a same-class reference r
    that the classifier gets wrong (``reference_wrong``).

    Returns ``dist_to_wrong`` (distance to the nearest such r, ``inf`` if none) and ``has_wrong``.
    """
    d, _ = nearest_same_class(points, labels, reference, reference_labels, norm, mask=reference_wrong)
    return {"dist_to_wrong": d, "has_wrong": d <= np.asarray(eps, np.float64)}
