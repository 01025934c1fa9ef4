"""Semantic input budgets (DESIGN.md, "Budgets"): how far can an input move before the embedding moves
more than the class's embedding budget?

For class c and norm p, the semantic budget is the largest radius eps such that for at least 1-q
of class-c calibration points the worst-case embedding shift ``max_{||delta||_p <= eps}
||g(x+delta) - g(x)||`` stays <= eps_emb(c). The worst case is estimated by embedding-shift PGD, a
*lower* bound on the true maximum, so the semantic budget is an optimistic (upper) estimate: a
stronger attack can only lower it. The radius is found by bisection on [0, eps_geo(c)] (the final
budget is min(geometric, semantic), so larger radii are never needed); a class whose points all
pass at eps_geo is reported as *censored* (semantic >= geometric).

A plain triplet embedding is usually easy to move with tiny input changes, so its semantic budgets
collapse toward 0: that is a measurement of the embedding's robustness, reported as is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from calib.attacks.objectives import EmbeddingShift
from calib.attacks.pgd import pgd
from calib.errors import ConfigError
from calib.progress import progress

log = logging.getLogger(__name__)


@dataclass
class SemanticBudget:
    """Per class (K,): semantic eps, whether it is censored at the geometric budget, the share of
    class points whose measured worst-case shift is within eps_emb at that eps, and class sizes."""

    eps: np.ndarray
    censored: np.ndarray
    coverage: np.ndarray
    n: np.ndarray
    per_sample_ok: np.ndarray  # (N,) at the final eps


def worst_shift(embedding: nn.Module, x: torch.Tensor, eps: torch.Tensor, norm: str, *, steps: int, restarts: int,
                seed: int, batch_size: int = 512) -> torch.Tensor:
    """Embedding-shift PGD: the largest ``||g(x') - g(x)||`` found in each sample's ball, (N,)."""
    out = []
    for s in range(0, x.shape[0], batch_size):
        xb, eb = x[s:s + batch_size], eps[s:s + batch_size]
        res = pgd(EmbeddingShift(embedding, xb), xb, eb, norm, steps=steps, restarts=restarts, seed=seed)
        out.append(res.loss.clamp_min(0))
    return torch.cat(out)


def semantic_budget(embedding: nn.Module, x: np.ndarray, y: np.ndarray, eps_emb: np.ndarray, eps_hi: np.ndarray,
                    norm: str, q: float = 0.05, *, iters: int = 8, steps: int = 20, restarts: int = 1,
                    seed: int = 0, device: str | torch.device = "cpu", show_progress: bool = False) -> SemanticBudget:
    """Bisection, for all classes at once, on the largest radius whose coverage is >= 1-q.

    Args:
        embedding: g; x: calibration images (N, C, H, W); y: labels (N,).
        eps_emb: embedding budget per class (K,); eps_hi: upper end per class (K,), the geometric budget.
        norm: ``linf`` or ``l2``; q: allowed share of failing points; iters: bisection steps.
    """
    k = len(eps_emb)
    if not 0 <= q < 1:
        raise ConfigError(f"q must be in [0, 1); got {q}")
    xt = torch.from_numpy(x).to(device)
    yl = np.asarray(y, np.int64)
    n = np.bincount(yl, minlength=k)
    emb_budget = np.asarray(eps_emb, np.float64)[yl]

    def share_ok(eps_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = torch.from_numpy(eps_class[yl].astype(np.float32)).to(device)
        shift = worst_shift(embedding, xt, e, norm, steps=steps, restarts=restarts, seed=seed).cpu().numpy()
        ok = shift <= emb_budget
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(yl, weights=ok, minlength=k) / n, ok

    hi = np.asarray(eps_hi, np.float64).copy()
    lo = np.zeros(k)
    with progress(show_progress) as bar:
        task = bar.add_task(f"semantic {norm}", total=iters + 1, status="")
        share_hi, _ = share_ok(hi)
        censored = share_hi >= 1 - q
        lo[censored] = hi[censored]
        bar.advance(task)
        for _ in range(iters):
            mid = np.where(censored, hi, (lo + hi) / 2)
            share, _ = share_ok(mid)
            good = share >= 1 - q
            lo = np.where(~censored & good, mid, lo)
            hi = np.where(~censored & ~good, mid, hi)
            bar.advance(task)
            bar.update(task, status=" ".join(f"{v:.3g}" for v in lo))
    coverage, ok = share_ok(lo)
    log.info("semantic %s budgets: %s", norm, np.round(lo, 4).tolist())
    return SemanticBudget(lo, censored, coverage, n, ok)
