"""The class-mixing probe: ``x0 + eps * sign(x1)`` for an image x0 of class a and x1 of class b.

With pixels in [0,1], ``sign(x1)`` is 1 on x1's strokes and 0 elsewhere, so the probe stamps a faint
copy of x1 onto x0. It lies inside the L-inf ball of radius eps around x0, yet at eps = 0.3 it is
often visibly a different symbol -- the demonstration that one global L-inf budget is too generous.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from calib.perturb.invariants import check_ball, perturbation_norms


@dataclass
class ProbeResult:
    """Probe images (P, C, H, W) with their sources and distances, all indexed by probe."""

    images: np.ndarray
    index0: np.ndarray
    index1: np.ndarray
    class0: np.ndarray
    class1: np.ndarray
    eps: float
    input_distance: dict[str, np.ndarray]
    embedding_to_x0: np.ndarray | None = None
    embedding_to_x1: np.ndarray | None = None


def class_mixing_probe(images: np.ndarray, labels: np.ndarray, eps: float = 0.3, *, per_pair: int = 1,
                       pairs: list[tuple[int, int]] | None = None, seed: int = 0,
                       embedding: nn.Module | None = None) -> ProbeResult:
    """Probe every ordered class pair (a, b), a != b (or ``pairs``), ``per_pair`` times.

    Args:
        images: (N, C, H, W) in [0,1]; labels: (N,).
        eps: L-inf radius of the stamp.
        seed: picks x0 and x1 (seeded numpy generator).
        embedding: if given, also report ``||g(probe) - g(x0)||`` and ``||g(probe) - g(x1)||``.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pairs = pairs or [(int(a), int(b)) for a in classes for b in classes if a != b]
    i0, i1 = [], []
    for a, b in pairs:
        i0 += rng.choice(np.flatnonzero(labels == a), per_pair).tolist()
        i1 += rng.choice(np.flatnonzero(labels == b), per_pair).tolist()
    i0, i1 = np.array(i0, np.int64), np.array(i1, np.int64)
    x0, x1 = torch.from_numpy(images[i0]), torch.from_numpy(images[i1])
    probe = torch.clamp(x0 + eps * torch.sign(x1), 0.0, 1.0)
    check_ball(x0, probe, eps, "linf", who="class_mixing_probe")
    dist = {n: perturbation_norms(x0, probe, n).numpy() for n in ("linf", "l2", "l1")}
    e0 = e1 = None
    if embedding is not None:
        was = embedding.training
        embedding.eval()
        with torch.no_grad():
            gp, g0, g1 = embedding(probe), embedding(x0), embedding(x1)
        embedding.train(was)
        e0 = torch.linalg.vector_norm(gp - g0, dim=1).numpy()
        e1 = torch.linalg.vector_norm(gp - g1, dim=1).numpy()
    return ProbeResult(probe.numpy(), i0, i1, labels[i0], labels[i1], float(eps), dist, e0, e1)
