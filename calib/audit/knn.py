"""k-nearest-neighbour labels in an embedding space (faiss flat L2 search).

Used to decide whether a perturbed image *means* another class: its k nearest reference embeddings
vote (majority; a tie goes to the class of the nearest among the tied classes).
"""
from __future__ import annotations

import numpy as np

from calib.errors import ConfigError
from calib.stats.neighbours import _flat_index


def knn_labels(query: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray, k: int = 5,
               num_classes: int | None = None) -> np.ndarray:
    """Majority label of the ``k`` nearest ``reference`` rows (L2) of each ``query`` row.

    Args:
        query: (nq, d) embeddings; reference: (nr, d); reference_labels: (nr,) ints.
    Returns:
        (nq,) int64 labels.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1; got {k}")
    if len(reference) < k:
        raise ConfigError(f"k = {k} exceeds the {len(reference)} reference points")
    q = np.ascontiguousarray(query, np.float32)
    r = np.ascontiguousarray(reference, np.float32)
    index = _flat_index(r.shape[1], "l2", False)
    index.add(r)
    _, idx = index.search(q, k)
    votes_labels = np.asarray(reference_labels, np.int64)[idx]  # (nq, k), nearest first
    kc = int(num_classes if num_classes is not None else reference_labels.max() + 1)
    counts = np.zeros((len(q), kc), np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(q)), k), votes_labels.ravel()), 1)
    top = counts.max(1, keepdims=True)
    tied = counts == top  # (nq, K)
    # the first neighbour (nearest first) whose class is among the tied maxima
    first = np.argmax(np.take_along_axis(tied, votes_labels, 1), axis=1)
    return votes_labels[np.arange(len(q)), first]
