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

from collections.abc import Callable, Sequence
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
                     on_block: Callable[[], None] | None = None, pieces: Callable[..., list] | None = None
                     ) -> ClassPairStats:
    """Class-pair distance statistics of the set ``x`` (n, d) with ``labels`` (n,), self-pairs excluded.

    ``on_block`` is called after each block (progress reporting); :func:`n_blocks` says how many.
    ``pieces``: how the exact mode's pieces are computed, ``pieces(x, labels, norm, k, n_pieces, block=,
    bins=, width=, on_block=)`` returning :func:`exact_pieces` results that cover each piece once (the
    run's, :func:`calib.pipeline.sharded.matrix_pieces`, splits them over torchrun ranks); default: all
    of them here.
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
    width = _max_distance_bound(x, norm) / bins
    n_pieces = len(block_pairs(len(labels), block))
    if pieces is None:
        parts = [exact_pieces(x, labels, norm, k, range(n_pieces), block=block, bins=bins, width=width,
                              on_block=on_block)]
    else:
        parts = pieces(x, labels, norm, k, n_pieces, block=block, bins=bins, width=width, on_block=on_block)
    return reduce_exact(parts, n_pieces, k, levels, width, bins)


def block_pairs(n: int, block: int = 2048) -> list[tuple[int, int]]:
    """The exact mode's pieces: blocks ``(i0, j0)`` with ``j0 >= i0`` of the (n, n) distance matrix, in the
    order one process adds them up (distances are symmetric: an off-diagonal block counts twice)."""
    return [(i0, j0) for i0 in range(0, n, block) for j0 in range(i0, n, block)]


def exact_pieces(x: np.ndarray, labels: np.ndarray, norm: str, k: int, pieces: Sequence[int], *, block: int,
                 bins: int, width: float, on_block: Callable[[], None] | None = None) -> dict[str, np.ndarray]:
    """The exact mode's sums over some of its pieces (:func:`block_pairs` numbers), on ``x`` (n, d) sorted by
    ``labels``: for each piece its own (2, 2, K, K) float sums (distance and squared distance; the block
    and its transpose), kept apart so that :func:`reduce_exact` adds them in one fixed order wherever they
    were computed; and the order-free parts summed over the pieces: counts, min, max and the
    (K * K * bins) histogram."""
    pairs = block_pairs(len(labels), block)
    pieces = list(pieces)
    sums = np.zeros((len(pieces), 2, 2, k, k))
    count = np.zeros((k, k), np.int64)
    dmin = np.full((k, k), np.inf)
    dmax = np.full((k, k), -np.inf)
    hist = np.zeros(k * k * bins, np.int64)

    def accumulate(d: np.ndarray, valid: np.ndarray, li: np.ndarray, lj: np.ndarray, out: np.ndarray) -> None:
        oi, oj = np.eye(k)[li], np.eye(k)[lj]
        dv = np.where(valid, d, 0.0)
        out[0] = oi.T @ dv @ oj
        out[1] = oi.T @ (dv * dv) @ oj
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

    for m, p in enumerate(pieces):
        i0, j0 = pairs[p]
        li, lj = labels[i0:i0 + block], labels[j0:j0 + block]
        d = pairwise(x[i0:i0 + block], x[j0:j0 + block], norm)
        valid = np.ones(d.shape, bool)
        if i0 == j0:
            np.fill_diagonal(valid, False)
        accumulate(d, valid, li, lj, sums[m, :, 0])
        if j0 != i0:
            accumulate(d.T, valid.T, lj, li, sums[m, :, 1])
        if on_block:
            on_block()
    return {"pieces": np.asarray(pieces, np.int64), "sums": sums, "count": count, "min": dmin, "max": dmax,
            "hist": hist}


def reduce_exact(parts: Sequence[dict[str, np.ndarray]], n_pieces: int, k: int, levels: tuple[float, ...],
                 width: float, bins: int) -> ClassPairStats:
    """The exact class-pair statistics from :func:`exact_pieces` results that cover every piece once: the
    float sums added piece by piece in :func:`block_pairs` order (so any split of the pieces, over ranks
    or not, gives the same bits), the rest combined."""
    sums = np.zeros((n_pieces, 2, 2, k, k))
    seen = np.zeros(n_pieces, np.int64)
    count = np.zeros((k, k), np.int64)
    dmin = np.full((k, k), np.inf)
    dmax = np.full((k, k), -np.inf)
    hist = np.zeros(k * k * bins, np.int64)
    for part in parts:
        sums[part["pieces"]] = part["sums"]
        np.add.at(seen, part["pieces"], 1)
        count += part["count"]
        dmin, dmax = np.minimum(dmin, part["min"]), np.maximum(dmax, part["max"])
        hist += part["hist"]
    if not (seen == 1).all():  # a bug in whoever split the pieces, not user input
        raise AssertionError(f"exact class-pair pieces counted {seen.tolist()} times, not once each")
    s1, s2 = np.zeros((k, k)), np.zeros((k, k))
    for p in range(n_pieces):
        for half in (0, 1):  # the block, then its transpose: one process's order
            s1 += sums[p, 0, half]
            s2 += sums[p, 1, half]
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
