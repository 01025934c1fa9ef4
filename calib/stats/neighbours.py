"""Nearest-neighbour distances: ``d_same(x)`` and ``d_diff(x)`` (docs/design.md, "Quantities").

Backends (all exact flat search, nothing approximate):

* ``l2``: faiss ``IndexFlatL2`` (on the GPU with faiss-gpu when ``use_gpu``) proposes the
  ``candidates`` nearest by squared distance (faiss's ``METRIC_L2`` returns squares, computed with a
  GEMM that loses precision near 0); the distances to those candidates are then recomputed in
  float64 from the vectors and the nearest re-chosen, so exact duplicates come out as 0, not ~1e-3.
* ``linf``, ``l1``: the exact numba kernels of :mod:`calib.stats.kernels` (default), warm-started at
  the L2 nearest neighbour; or faiss ``METRIC_Linf`` / ``METRIC_L1`` with ``backend="faiss"``
  (the reference: ~40x slower for L-inf, ~9x for L1 on MNIST), re-ranked in float64 likewise.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from calib.errors import ConfigError
from calib.stats.kernels import nearest_exact

log = logging.getLogger(__name__)

NORMS = ("l2", "linf", "l1")
BACKENDS = ("auto", "faiss", "numba")


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a declared dependency
        raise ImportError("calib's statistics need faiss: pip install faiss-cpu (or faiss-gpu)") from exc
    return faiss


def _flat_index(dim: int, metric: str, use_gpu: bool):
    faiss = _faiss()
    metric_id = {"l2": faiss.METRIC_L2, "linf": faiss.METRIC_Linf, "l1": faiss.METRIC_L1}[metric]
    index = faiss.IndexFlat(dim, metric_id)
    if use_gpu and metric == "l2" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = gpu_index(faiss, index)
    return index


def gpu_index(faiss, index):
    """``index`` on the GPUs this process may use: under torchrun its rank's own GPU (the other ranks
    search their own shards of the queries on theirs); in one process with several GPUs the reference set
    *sharded* over all of them (``GpuMultipleClonerOptions.shard``: each holds 1/G of the rows, the
    results merged exactly), with one GPU a copy on it."""
    from calib.distributed import world

    w = world()
    if w.parallel:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), w.local_rank, index)
    if faiss.get_num_gpus() > 1:
        co = faiss.GpuMultipleClonerOptions()
        co.shard = True
        return faiss.index_cpu_to_all_gpus(index, co=co)
    return faiss.index_cpu_to_all_gpus(index)


def _exact_rows(q: np.ndarray, r: np.ndarray, cand: np.ndarray, norm: str, chunk: int = 256) -> np.ndarray:
    """float64 distances from each query to its candidate rows; -1 candidates get ``inf``."""
    out = np.full(cand.shape, np.inf)
    for s in range(0, q.shape[0], chunk):
        c = cand[s:s + chunk]
        diff = q[s:s + chunk, None, :].astype(np.float64) - r[np.maximum(c, 0)].astype(np.float64)
        if norm == "l2":
            d = np.sqrt((diff * diff).sum(-1))
        elif norm == "linf":
            d = np.abs(diff).max(-1)
        else:
            d = np.abs(diff).sum(-1)
        out[s:s + chunk] = np.where(c >= 0, d, np.inf)
    return out


def nearest(query: np.ndarray, reference: np.ndarray, norm: str = "l2", *, exclude: np.ndarray | None = None,
            backend: str = "auto", use_gpu: bool = False, candidates: int = 16,
            image_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distance to, and index of, the nearest ``reference`` row of each ``query`` row.

    Args:
        query: (nq, d) float32 (flattened images or embeddings).
        reference: (nr, d) float32.
        norm: ``l2``, ``linf`` or ``l1``.
        exclude: (nq,) reference index each query must skip (itself), -1 for none.
        backend: ``auto`` (faiss for l2, numba for linf/l1), ``faiss`` or ``numba``.
        use_gpu: put the faiss L2 index on the GPU(s) when faiss-gpu is installed.
        candidates: faiss candidates re-ranked exactly.
        image_shape: (C, H, W) of a row, for the L1 kernel's block-sum bound.

    Returns:
        (distances (nq,) float64, indices (nq,) int64); ``inf`` / -1 where no reference is left.
    """
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    q = np.ascontiguousarray(query, dtype=np.float32)
    r = np.ascontiguousarray(reference, dtype=np.float32)
    nq, nr = q.shape[0], r.shape[0]
    ex = np.full(nq, -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    if nq == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    if nr == 0:
        return np.full(nq, np.inf), np.full(nq, -1, np.int64)
    if norm == "l2" and backend == "numba":
        raise ConfigError("backend 'numba' is for linf/l1; l2 uses faiss")
    if norm != "l2" and backend in ("auto", "numba"):
        _, warm = _faiss_candidates(q, r, "l2", ex, 1, use_gpu)
        return nearest_exact(q, r, norm, ex, init=warm[:, 0], image_shape=image_shape)
    dist, cand = _faiss_candidates(q, r, norm, ex, candidates, use_gpu)
    dist = _exact_rows(q, r, cand, norm)
    best = np.argmin(dist, axis=1)
    rows = np.arange(nq)
    d, i = dist[rows, best], cand[rows, best]
    return np.where(i >= 0, d, np.inf), np.where(np.isfinite(d), i, -1)


def _faiss_candidates(q: np.ndarray, r: np.ndarray, norm: str, exclude: np.ndarray, k: int,
                      use_gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    """faiss flat search for the ``k`` nearest (plus one, dropped where it is the excluded index)."""
    index = _flat_index(q.shape[1], norm, use_gpu)
    index.add(r)
    dist, cand = index.search(q, min(r.shape[0], k + 1))
    cand = np.where(cand == exclude[:, None], -1, cand).astype(np.int64)
    order = np.argsort(cand < 0, axis=1, kind="stable")  # move the excluded hit to the end
    return np.take_along_axis(dist, order, 1)[:, :k], np.take_along_axis(cand, order, 1)[:, :k]


@dataclass(frozen=True)
class SameDiff:
    """Per-query nearest same-class and different-class references (docs/design.md).

    All arrays have shape (nq,). Indices point into the reference set; ``inf``/-1 mean none exists.
    """

    d_same: np.ndarray
    i_same: np.ndarray
    d_diff: np.ndarray
    i_diff: np.ndarray


def same_diff(query: np.ndarray, query_labels: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray,
              norm: str = "l2", *, self_match: bool = False, backend: str = "auto", use_gpu: bool = False,
              image_shape: tuple[int, ...] | None = None, self_index: np.ndarray | None = None) -> SameDiff:
    """``d_same`` and ``d_diff`` for every query against the reference set, exactly.

    Args:
        query: (nq, d) float32; reference: (nr, d) float32; labels int (nq,) and (nr,).
        self_match: the queries *are* the reference set (row i is reference i); each query then
            skips itself (by index: an exact duplicate elsewhere still counts, at distance 0).
        self_index: (nq,) with ``self_match``, the reference row of each query, when the queries are a
            subset of the reference set (default: row i is reference i).
    """
    q = np.ascontiguousarray(query.reshape(len(query), -1), dtype=np.float32)
    r = np.ascontiguousarray(reference.reshape(len(reference), -1), dtype=np.float32)
    if q.shape[1] != r.shape[1]:
        raise ConfigError(f"query and reference widths differ: {q.shape[1]} vs {r.shape[1]}")
    if len(query_labels) != len(q) or len(reference_labels) != len(r):
        raise ConfigError("labels must have one entry per row")
    if self_match and self_index is None:
        if q.shape != r.shape:
            raise ConfigError("self_match needs the query set to be the reference set (or self_index)")
        self_index = np.arange(len(q))
    if self_match and (len(self_index) != len(q) or self_index.min(initial=0) < 0
                       or self_index.max(initial=0) >= len(r)):
        raise ConfigError("self_index must give one reference row per query")
    nq = len(q)
    out = {k: np.full(nq, np.inf) for k in ("d_same", "d_diff")}
    out |= {k: np.full(nq, -1, np.int64) for k in ("i_same", "i_diff")}
    for c in np.unique(query_labels):
        qi = np.flatnonzero(query_labels == c)
        for kind, rmask in (("same", reference_labels == c), ("diff", reference_labels != c)):
            ri = np.flatnonzero(rmask)
            exclude = None
            if self_match and kind == "same":
                pos = np.full(len(r), -1, np.int64)
                pos[ri] = np.arange(len(ri))
                exclude = pos[self_index[qi]]
            d, i = nearest(q[qi], r[ri], norm, exclude=exclude, backend=backend, use_gpu=use_gpu,
                           image_shape=image_shape)
            out[f"d_{kind}"][qi] = d
            out[f"i_{kind}"][qi] = np.where(i >= 0, ri[np.maximum(i, 0)], -1)
    return SameDiff(**out)
