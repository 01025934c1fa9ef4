"""Class-pair distance matrices ``M[a, b]``: mean (and spread of) pairwise distances between classes.

Two modes (docs/design.md):

* ``sampled``: ``n_per_class`` points per class (seeded), all pairs among them -- the classic
  heat-map analysis. Quantiles are exact over the sampled pairs.
* ``exact``: all pairs of the set, in blocks (memory stays O(block^2), never N x N). Count, mean,
  std, min and max are exact; quantiles come from a fixed histogram per class pair and are exact
  to within ``quantile_resolution`` (one bin width, stored with the result).

Self-pairs (a point with itself) are excluded from the diagonal; other exact duplicates count.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from calib.errors import ConfigError
from calib.stats.kernels import dense_exact

LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class ClassPairStats:
    """Per class pair (a, b): all arrays (K, K) except ``quantiles`` (len(levels), K, K)."""

    mode: str
    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    levels: tuple[float, ...]
    quantiles: np.ndarray
    quantile_resolution: float = 0.0
    n_per_class: int | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
                "quantiles": self.quantiles}


def pairwise(a: np.ndarray, b: np.ndarray, norm: str) -> np.ndarray:
    """All distances (na, nb) in float64 between rows of ``a`` and ``b``."""
    if norm == "l2":
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        sq = (a64 * a64).sum(1)[:, None] + (b64 * b64).sum(1)[None, :] - 2.0 * (a64 @ b64.T)
        return np.sqrt(np.maximum(sq, 0.0))
    if norm in ("linf", "l1"):
        return dense_exact(a, b, norm)
    raise ConfigError(f"unknown norm {norm!r}")


def _max_distance_bound(x: np.ndarray, norm: str) -> float:
    """Triangle-inequality bound: d(a, b) <= ||a|| + ||b||."""
    p = {"l2": 2, "linf": np.inf, "l1": 1}[norm]
    return float(2 * np.linalg.norm(x.astype(np.float64), ord=p, axis=1).max()) or 1.0


def class_pair_stats(x: np.ndarray, labels: np.ndarray, norm: str, num_classes: int, *, mode: str = "sampled",
                     n_per_class: int = 100, seed: int = 0, levels: tuple[float, ...] = LEVELS,
                     block: int = 2048, bins: int = 8192,
                     on_block: Callable[[], None] | None = None) -> ClassPairStats:
    """Class-pair distance statistics of the set ``x`` (n, d) with ``labels`` (n,), self-pairs excluded.

    ``on_block`` is called after each block (progress reporting); :func:`n_blocks` says how many.
    """
    x = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
    labels = np.asarray(labels, np.int64)
    k = num_classes
    if mode == "sampled":
        if n_per_class < 2:
            raise ConfigError(f"n_per_class must be >= 2; got {n_per_class}")
        rng = np.random.default_rng(seed)
        pick = np.concatenate([np.sort(rng.permutation(np.flatnonzero(labels == c))[:n_per_class])
                               for c in range(k)])
        x, labels = x[pick], labels[pick]
        d = pairwise(x, x, norm)
        np.fill_diagonal(d, np.nan)
        shape = (k, k)
        out = {f: np.full(shape, np.nan) for f in ("mean", "std", "min", "max")}
        count = np.zeros(shape, np.int64)
        quant = np.full((len(levels), k, k), np.nan)
        for a in range(k):
            for b in range(k):
                v = d[np.ix_(labels == a, labels == b)].ravel()
                v = v[~np.isnan(v)]
                count[a, b] = v.size
                if v.size:
                    out["mean"][a, b], out["std"][a, b] = v.mean(), v.std()
                    out["min"][a, b], out["max"][a, b] = v.min(), v.max()
                    quant[:, a, b] = np.quantile(v, levels)
            if on_block:
                on_block()
        return ClassPairStats("sampled", count, levels=tuple(levels), quantiles=quant, n_per_class=n_per_class,
                              seed=seed, **out)
    if mode != "exact":
        raise ConfigError(f"unknown matrix mode {mode!r}; choose sampled or exact")
    order = np.argsort(labels, kind="stable")
    x, labels = x[order], labels[order]
    n = len(labels)
    hi = _max_distance_bound(x, norm)
    width = hi / bins
    s1 = np.zeros((k, k))
    s2 = np.zeros((k, k))
    count = np.zeros((k, k), np.int64)
    dmin = np.full((k, k), np.inf)
    dmax = np.full((k, k), -np.inf)
    hist = np.zeros(k * k * bins, np.int64)
    def accumulate(d: np.ndarray, valid: np.ndarray, li: np.ndarray, lj: np.ndarray) -> None:
        oi, oj = np.eye(k)[li], np.eye(k)[lj]
        dv = np.where(valid, d, 0.0)
        s1[:] += oi.T @ dv @ oj
        s2[:] += oi.T @ (dv * dv) @ oj
        count[:] += (oi.T @ valid.astype(np.float64) @ oj).round().astype(np.int64)
        for a in np.unique(li):
            ra = li == a
            for b in np.unique(lj):
                cb = lj == b
                blk, ok = d[np.ix_(ra, cb)], valid[np.ix_(ra, cb)]
                if ok.any():
                    dmin[a, b] = min(dmin[a, b], blk[ok].min())
                    dmax[a, b] = max(dmax[a, b], blk[ok].max())
        pair = (li[:, None] * k + lj[None, :])[valid]
        bin_ = np.minimum((d[valid] / width).astype(np.int64), bins - 1)
        hist[:] += np.bincount(pair * bins + bin_, minlength=k * k * bins)

    for i0 in range(0, n, block):  # distances are symmetric: blocks j >= i, off-diagonal ones twice
        li = labels[i0:i0 + block]
        for j0 in range(i0, n, block):
            lj = labels[j0:j0 + block]
            d = pairwise(x[i0:i0 + block], x[j0:j0 + block], norm)
            valid = np.ones(d.shape, bool)
            if i0 == j0:
                np.fill_diagonal(valid, False)
            accumulate(d, valid, li, lj)
            if j0 != i0:
                accumulate(d.T, valid.T, lj, li)
            if on_block:
                on_block()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
    quant = _hist_quantiles(hist.reshape(k, k, bins), levels, width)
    dmin[count == 0], dmax[count == 0] = np.nan, np.nan
    return ClassPairStats("exact", count, mean, std, dmin, dmax, tuple(levels), quant, quantile_resolution=width)


def _hist_quantiles(hist: np.ndarray, levels: tuple[float, ...], width: float) -> np.ndarray:
    """Quantiles (midpoint of the bin holding the level) per class pair from (K, K, bins) counts."""
    k = hist.shape[0]
    cum = hist.cumsum(-1)
    total = cum[..., -1]
    out = np.full((len(levels), k, k), np.nan)
    for li, q in enumerate(levels):
        target = np.ceil(q * total)
        idx = (cum < np.maximum(target, 1)[..., None]).sum(-1)
        out[li] = np.where(total > 0, (idx + 0.5) * width, np.nan)
    return out


def n_blocks(n: int, mode: str, num_classes: int, block: int = 2048) -> int:
    """How many times :func:`class_pair_stats` calls ``on_block``."""
    nb = -(-n // block)
    return num_classes if mode == "sampled" else nb * (nb + 1) // 2
