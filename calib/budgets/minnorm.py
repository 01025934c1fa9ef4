"""The judge's adversarial radius by a minimum-norm attack over several target classes (docs/design.md,
"Budgets"): tighter than bisection over PGD probes, in fewer judge evaluations.

For a point x of class y the radius is ``r_adv(x) = min_c min{ ||delta|| : x + delta in [0,1], the judge
gives x + delta a class other than y }``. calib estimates it per point with :func:`calib.perturb.fmn.fmn`
on several rows at once:

* one **untargeted** row on the judge's margin (the best other class may change along the way),
  warm-started from a known witness when there is one (the invariance path's);
* ``targets`` **targeted** rows on ``(z_y - z_c)`` for the classes c whose boundary is nearest to first
  order, ``(z_y - z_c) / ||grad (z_y - z_c)||_dual`` at x (judges with differentiable class scores).

Every candidate's verdict is re-evaluated by the judge; the best verified one is then pulled toward x
along its own ray (bisection on t in ``x + t delta``, forward passes only, each accepted point
verified), which can only shorten it. The result is an **upper** bound of the judge's radius (a
stronger attack can only lower it), backed by a witness; ``inf`` where no candidate changed the
verdict. ``tests/test_minnorm.py`` measures it against the exact radii of a linear judge.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from calib.errors import ConfigError
from calib.judges.base import Judge, top_other
from calib.perturb.fmn import fmn
from calib.perturb.invariants import VERDICT_GUARD, ConstraintViolation, check_ball, perturbation_norms
from calib.perturb.pgd import eval_mode
from calib.progress import progress

_DUAL = {"linf": 1.0, "l2": 2.0}
#: FMN's initial relative step per norm (measured on the digits knn judge: bench/radius_estimators.py)
ALPHA = {"linf": 0.5, "l2": 1.0}


def nearest_boundaries(judge: Judge, x: torch.Tensor, y: torch.Tensor, norm: str, k: int,
                       select: str = "linear") -> torch.Tensor:
    """(N, k) the other classes whose decision boundary against y is nearest x: to first order,
    ``(z_y - z_c) / ||grad (z_y - z_c)||_dual`` (``select="linear"``, one backward pass per class), or by
    the score gap ``z_y - z_c`` alone (``"gap"``, one forward pass)."""
    k = min(k, judge.num_classes - 1)
    own = torch.nn.functional.one_hot(y, judge.num_classes).bool()
    if select == "gap":
        with torch.no_grad():
            z = judge.logits(x)
            gap = (z.gather(1, y[:, None]) - z).masked_fill(own, math.inf)
        return gap.topk(k, dim=1, largest=False).indices
    if select != "linear":
        raise ConfigError(f"target selection is linear or gap; got {select!r}")
    est = []
    for c in range(judge.num_classes):
        xa = x.detach().requires_grad_(True)
        z = judge.logits(xa)
        diff = z.gather(1, y[:, None]).squeeze(1) - z[:, c]
        (g,) = torch.autograd.grad(diff.sum(), xa)
        with torch.no_grad():
            est.append(diff / torch.linalg.vector_norm(g.flatten(1), ord=_DUAL[norm], dim=1).clamp_min(1e-12))
    return torch.stack(est, 1).masked_fill(own, math.inf).topk(k, dim=1, largest=False).indices


@torch.no_grad()
def shorten_along_ray(judge: Judge, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Each verified witness ``w`` moved to ``x + t (w - x)``, t in (0, 1] found by bisection on the
    judge's verdict, then ``(1 + VERDICT_GUARD) t`` (the segment stays in the box). A point whose verdict
    does not hold at that t (rounding) keeps ``w``: the result is always a witness the judge confirmed."""
    lo = torch.zeros(len(x), device=x.device)
    hi = torch.ones(len(x), device=x.device)
    d = w - x
    shape = (-1, *([1] * (x.dim() - 1)))
    for _ in range(iters):
        mid = (lo + hi) / 2
        ch = judge.changed(x + mid.view(shape) * d, y)
        hi = torch.where(ch, mid, hi)
        lo = torch.where(ch, lo, mid)
    t = torch.clamp(hi * (1 + VERDICT_GUARD), max=1.0)
    out = x + t.view(shape) * d
    keep = judge.changed(out, y)
    return torch.where(keep.view(shape), out, w)


def minimum_norm_radii(judge: Judge, x: np.ndarray, y: np.ndarray, norm: str, *, steps: int = 30,
                       targets: int = 2, select: str = "linear", start: np.ndarray | None = None,
                       batch_size: int = 128, alpha: float | None = None, gamma: float = 0.1,
                       device: str | torch.device = "cpu", show_progress: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The judge's adversarial radius at every point (see the module docstring).

    Args:
        judge: the judge (its modules on ``device``).
        x: (N, C, H, W) in [0, 1]; y: (N,) labels.
        norm: ``linf`` or ``l2``.
        steps: FMN iterations per row; targets: targeted rows per point (0: untargeted only; judges
            without differentiable class scores, such as a vote, get untargeted rows only); select: how
            the targets are chosen (:func:`nearest_boundaries`).
        start: (N, C, H, W) warm starts (NaN rows: none), e.g. invariance witnesses.
        alpha, gamma: FMN's initial relative step (default :data:`ALPHA` of the norm) and radius change
            (:func:`calib.perturb.fmn.fmn`).

    Returns:
        ``(radius, witnesses, clean_wrong, info)``: (N,) radii (0 where the judge errs on x, inf where
        nothing was found), (N, C, H, W) witnesses (x where none), (N,) bool, settings and timings.
    """
    if norm not in _DUAL:
        raise ConfigError(f"minimum-norm radii are linf or l2; got {norm!r}")
    if steps < 1 or targets < 0:
        raise ConfigError("minimum-norm radii need steps >= 1 and targets >= 0")
    alpha = ALPHA[norm] if alpha is None else alpha
    n = len(y)
    radius = np.full(n, np.inf)
    witnesses = np.array(x, np.float32, copy=True)
    wrong = np.zeros(n, bool)
    k = targets if judge.differentiable_logits else 0
    t0 = time.perf_counter()
    with progress(show_progress) as bar, eval_mode(*judge.modules):
        task = bar.add_task(f"min-norm radius {judge.name} {norm}", total=n, status="")
        for s in range(0, n, batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size], np.float32)).to(device)
            yb = torch.from_numpy(np.asarray(y[s:s + batch_size], np.int64)).to(device)
            nb = len(yb)
            wb = judge.changed(xb, yb)
            wrong[s:s + nb] = wb.cpu().numpy()
            tc = nearest_boundaries(judge, xb, yb, norm, k, select) if k else torch.zeros((nb, 0), dtype=torch.long)
            rows_x = [xb] + [xb] * tc.shape[1]
            rows_y = [yb] + [yb] * tc.shape[1]
            rows_t = [torch.full_like(yb, -1)] + [tc[:, j] for j in range(tc.shape[1])]
            st = torch.full_like(xb, float("nan"))
            if start is not None:
                st = torch.from_numpy(np.ascontiguousarray(start[s:s + nb], np.float32)).to(device)
            rows_s = [st] + [torch.full_like(xb, float("nan"))] * tc.shape[1]
            X, Y, T, S = (torch.cat(v) for v in (rows_x, rows_y, rows_t, rows_s))

            def margin(xa: torch.Tensor, rows: torch.Tensor, Y=Y, T=T) -> torch.Tensor:
                yr, tr = Y[rows], T[rows]
                if not k:
                    return judge.margin(xa, yr)
                z = judge.logits(xa)  # one forward pass for both kinds of row (FMN is scale-free)
                other = z.gather(1, tr.clamp_min(0)[:, None]).squeeze(1)
                other = torch.where(tr >= 0, other, top_other(z, yr))
                return z.gather(1, yr[:, None]).squeeze(1) - other

            best, found = fmn(margin, X, norm, steps=steps, start=S, alpha=alpha, gamma=gamma)
            with torch.no_grad():
                ok = found & judge.changed(best, Y)
                if start is not None:  # the warm start itself, when it is a witness
                    has = torch.isfinite(st.flatten(1)).all(1)
                    okst = torch.zeros_like(has)
                    okst[has] = judge.changed(st[has], yb[has])
                    best = torch.cat([best, st])
                    ok = torch.cat([ok, okst])
                    X, Y = torch.cat([X, xb]), torch.cat([Y, yb])
                dist = perturbation_norms(X, best, norm).double()
                dist = torch.where(ok, dist, torch.full_like(dist, math.inf)).reshape(-1, nb)
                j = dist.argmin(0)
                pick = j * nb + torch.arange(nb, device=xb.device)
                has = torch.isfinite(dist.min(0).values) & ~wb
                w = xb.clone()
                w[has] = shorten_along_ray(judge, xb[has], yb[has], best[pick][has])
                still = judge.changed(w, yb)[has]
                if not bool(still.all()):  # the same batch as the final check: a broken invariant
                    raise ConstraintViolation(f"min-norm radius[{judge.name}]: a shortened witness lost its verdict")
                r = torch.full((nb,), math.inf, dtype=torch.float64, device=xb.device)
                r[has] = perturbation_norms(xb[has], w[has], norm).double()
                r[wb] = 0.0
            radius[s:s + nb] = r.cpu().numpy()
            witnesses[s:s + nb] = w.cpu().numpy()
            bar.advance(task, nb)
    found = np.isfinite(radius) & ~wrong
    if found.any():
        check_ball(x[found], witnesses[found], radius[found], norm, tol=1e-5, who=f"min-norm radius[{judge.name}]")
    info = {"method": "fmn", "steps": steps, "alpha": alpha, "gamma": gamma, "targets": k, "select": select, "warm_start": start is not None,
            "seconds": time.perf_counter() - t0, "found": int(found.sum()),
            "not_found": int((~np.isfinite(radius)).sum()), "clean_wrong": int(wrong.sum())}
    return radius, witnesses, wrong, info


__all__ = ["minimum_norm_radii", "nearest_boundaries", "shorten_along_ray"]
