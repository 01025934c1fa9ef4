"""Invariance radii and relabel curves (docs/design.md, "Budgets"): how far a point can move *toward an
image of another class* before the judge sees that class.

Threat model: for a point x of class y and, for every other class c, its *target* t_c (the nearest
reference image of class c, in L2 pixel distance, as in Tramèr et al. 2020's automated invariance
attack), the path toward t_c at radius eps is the projection of t_c onto the ball and the box,

* L-inf: ``x_eps = clip(t, x - eps, x + eps)`` (each pixel as close to the target as the ball allows);
* L2:    ``x_eps = x + min(1, eps / ||t - x||) (t - x)``,

which stays in [0, 1] because x and t do. The invariance radius ``r_inv(x)`` is the smallest eps at
which the judge gives some path point another class than y: a grid of eps (all targets at once; a
point leaves the grid at its first change), then bisection inside the grid step on each target that
changed there. Every radius is backed by a *witness*, a path point the judge was asked about again.
It is an **upper** bound for the judge (a stronger invariance attack can only lower it); a point the
judge already gets wrong has r_inv = 0, a point no path changes (even at the targets themselves) has
r_inv = inf.

The *relabel curve* predicts how many such images people would relabel: at each eps of a grid, the
share of judge-correct points whose invariance example the judge relabels, with **one** target per
point chosen without asking the judge, the other-class target whose path at eps removes the least ink
``sum max(x - x_eps, 0)`` (optionally among Tramèr et al.'s hand-made target classes for MNIST digits,
:data:`TRAMER_TARGETS`). The union over all targets (what the budget uses) relabels more.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from calib.errors import ConfigError
from calib.judges.base import Judge
from calib.perturb.invariants import VERDICT_GUARD, ConstraintViolation, check_ball, perturbation_norms
from calib.perturb.pgd import eval_mode
from calib.progress import progress

log = logging.getLogger(__name__)

NORMS = ("linf", "l2")
#: the eps grid of the radius search, per norm (a step; the grid runs to the farthest target)
GRID_STEP = {"linf": 0.05, "l2": 0.25}
#: the eps grid of the relabel curves, per norm
RELABEL_GRID = {"linf": tuple(round(0.05 * i, 2) for i in range(1, 11)),
                "l2": tuple(round(0.5 * i, 1) for i in range(1, 13))}
#: people's published relabel rates for Tramèr et al.'s automated L-inf invariance attack on MNIST
HUMAN_RELABEL = {"linf": {0.3: 0.21, 0.4: 0.37}}
#: the target classes Tramèr et al. chose by hand per source digit (their linf notebook); an option
TRAMER_TARGETS = {0: (4, 6, 8, 9), 1: (4, 6, 7, 9), 2: (8,), 3: (8,), 4: (8, 9), 5: (3, 8), 6: (0,), 7: (2, 3),
                  8: (3,), 9: (3, 4, 5)}


def nearest_targets(x: np.ndarray, y: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray, num_classes: int,
                    chunk: int = 1024) -> np.ndarray:
    """(N, K) index into ``ref`` of the nearest reference image (L2 in pixels) of each class; -1 for the
    point's own class. ``x`` (N, ...) and ``ref`` (R, ...) in [0, 1]."""
    xf = torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), -1), np.float32))
    rf = torch.from_numpy(np.ascontiguousarray(ref.reshape(len(ref), -1), np.float32))
    out = np.full((len(x), num_classes), -1, np.int64)
    for c in range(num_classes):
        idx = np.flatnonzero(ref_labels == c)
        if idx.size == 0:
            raise ConfigError(f"class {c} has no reference image to move toward")
        rc = rf[torch.from_numpy(idx)]
        r2 = (rc * rc).sum(1)
        for s in range(0, len(x), chunk):
            xb = xf[s:s + chunk]
            d = r2[None, :] - 2.0 * xb @ rc.T  # + ||x||^2, the same for every candidate
            out[s:s + chunk, c] = idx[d.argmin(1).numpy()]
    out[np.arange(len(x)), y] = -1
    return out


def path_point(x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """The projection of the target ``t`` onto ``B_norm(x, eps)`` and [0, 1], batched ((N, C, H, W),
    eps (N,))."""
    e = eps.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    if norm == "linf":
        return torch.minimum(torch.maximum(t, x - e), x + e).clamp(0, 1)
    if norm == "l2":
        d = t - x
        length = torch.linalg.vector_norm(d.flatten(1), dim=1).reshape(e.shape)
        return (x + torch.clamp(e / length.clamp_min(1e-12), max=1.0) * d).clamp(0, 1)
    raise ConfigError(f"invariance paths are linf or l2; got {norm!r}")


def path_length(x: torch.Tensor, t: torch.Tensor, norm: str) -> torch.Tensor:
    """(N,) the eps at which the path reaches its target."""
    return perturbation_norms(x, t, norm)


def removed_ink(x: torch.Tensor, x_eps: torch.Tensor) -> torch.Tensor:
    """(N,) ``sum max(x - x_eps, 0)``: how much of the source's strokes the path erases."""
    return (x - x_eps).clamp_min(0).flatten(1).sum(1)


@dataclass
class Invariance:
    """Invariance radii of one judge in one norm, all (N,).

    Attributes:
        radius: r_inv (upper bound; 0 where the judge errs on x, inf where no path changes it).
        target_class: the class whose path gave the radius (-1 where none).
        witnesses: (N, C, H, W) the witness x' per point (x itself where none).
        clean_wrong: the judge errs on the clean point.
        info: settings and timings.
    """

    norm: str
    radius: np.ndarray
    target_class: np.ndarray
    witnesses: np.ndarray
    clean_wrong: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def invariance_radii(judge: Judge, x: np.ndarray, y: np.ndarray, ref: np.ndarray, targets: np.ndarray, norm: str,
                     *, step: float | None = None, iters: int = 8, batch_size: int = 128,
                     device: str | torch.device = "cpu", show_progress: bool = False) -> Invariance:
    """r_inv at every point (see the module docstring).

    Args:
        judge: the judge.
        x: (N, C, H, W) clean images in [0,1]; y: (N,) labels.
        ref, targets: the reference images and, per point and class, the index of its target
            (:func:`nearest_targets`; -1 for the own class).
        step: the grid step (default :data:`GRID_STEP`); iters: bisection steps inside it.
    """
    if norm not in NORMS:
        raise ConfigError(f"invariance radii are linf or l2; got {norm!r}")
    step = float(step or GRID_STEP[norm])
    n, k = targets.shape
    radius = np.full(n, np.inf)
    tclass = np.full(n, -1, np.int64)
    wrong = np.zeros(n, bool)
    witnesses = np.array(x, dtype=np.float32, copy=True)
    t0 = time.perf_counter()
    evaluated = 0
    with progress(show_progress) as bar, eval_mode(*judge.modules):
        task = bar.add_task(f"invariance {judge.name} {norm}", total=n, status="")
        for s in range(0, n, batch_size):
            xb = torch.from_numpy(x[s:s + batch_size]).to(device)
            yb = torch.from_numpy(np.asarray(y[s:s + batch_size], np.int64)).to(device)
            tb = targets[s:s + batch_size]
            nb = len(yb)
            wb = judge.changed(xb, yb).cpu().numpy()
            wrong[s:s + nb] = wb
            radius[s:s + nb][wb] = 0.0
            # every (point, target) pair as one row
            rows_i, rows_c = np.nonzero(tb >= 0)
            xr = xb[torch.from_numpy(rows_i).to(device)]
            tr = torch.from_numpy(ref[tb[rows_i, rows_c]]).to(device)
            yr = yb[torch.from_numpy(rows_i).to(device)]
            end = path_length(xr, tr, norm).double().cpu().numpy()
            live = ~wb[rows_i]  # rows of points still searching
            lo = np.zeros(len(rows_i))
            grid_max = float(end.max()) if end.size else 0.0
            eps = 0.0
            while live.any() and eps < grid_max:
                eps = min(eps + step, grid_max)
                ia = np.flatnonzero(live & (lo < end))  # a path past its end stays at its target (checked once)
                if ia.size == 0:
                    break
                e = np.minimum(eps, end[ia])
                changed = _changed(judge, xr[ia], tr[ia], yr[ia], e, norm)
                evaluated += ia.size
                hit = ia[changed]
                lo[ia[~changed]] = e[~changed]
                if hit.size:
                    done_points = np.unique(rows_i[hit])
                    r, w = _bisect(judge, xr, tr, yr, hit, lo[hit], np.minimum(eps, end[hit]), norm, iters)
                    evaluated += hit.size * (iters + (1 if iters else 0))
                    for p in done_points:
                        mine = rows_i[hit] == p
                        j = int(np.argmin(r[mine]))
                        radius[s + p], tclass[s + p] = r[mine][j], rows_c[hit][mine][j]
                        witnesses[s + p] = w[mine][j]
                    live &= ~np.isin(rows_i, done_points)
            bar.advance(task, nb)
    _check_witnesses(judge, x, y, witnesses, radius, wrong, norm, device)
    info = {"grid_step": step, "iters": iters, "seconds": time.perf_counter() - t0, "evaluations": int(evaluated),
            "found": int((np.isfinite(radius) & ~wrong).sum()), "not_found": int((~np.isfinite(radius)).sum()),
            "clean_wrong": int(wrong.sum()), "targets": "nearest reference image of each other class (L2)"}
    log.info("invariance %s %s: median %.4g over judge-correct points, %d without a change, %d clean errors",
             judge.name, norm, float(np.median(radius[~wrong])) if (~wrong).any() else float("nan"),
             info["not_found"], info["clean_wrong"])
    return Invariance(norm, radius, tclass, witnesses, wrong, info)


@torch.no_grad()
def _changed(judge: Judge, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, eps: np.ndarray, norm: str,
             chunk: int = 2048) -> np.ndarray:
    out = []
    for s in range(0, len(y), chunk):
        e = torch.from_numpy(eps[s:s + chunk]).to(x.device, torch.float32)
        out.append(judge.changed(path_point(x[s:s + chunk], t[s:s + chunk], e, norm), y[s:s + chunk]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, bool)


def _bisect(judge: Judge, xr: torch.Tensor, tr: torch.Tensor, yr: torch.Tensor, rows: np.ndarray, lo: np.ndarray,
            hi: np.ndarray, norm: str, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """The crossing in (lo, hi] of each row (hi changes the judge): the witness's distance from x (its
    radius) and the witness."""
    lo, hi = lo.astype(np.float64).copy(), hi.astype(np.float64).copy()
    x, t, y = xr[rows], tr[rows], yr[rows]
    grid_hi = hi.copy()
    for _ in range(iters):
        mid = (lo + hi) / 2
        ch = _changed(judge, x, t, y, mid, norm)
        hi = np.where(ch, mid, hi)
        lo = np.where(ch, lo, mid)
    if iters:  # stop VERDICT_GUARD past the last change seen (else keep the grid point, which changed)
        guarded = np.minimum(hi * (1 + VERDICT_GUARD), grid_hi)
        hi = np.where(_changed(judge, x, t, y, guarded, norm), guarded, grid_hi)
    with torch.no_grad():
        w = path_point(x, t, torch.from_numpy(hi).to(x.device, torch.float32), norm)
        dist = perturbation_norms(x, w, norm).double().cpu().numpy()
    return dist, w.cpu().numpy()


def _check_witnesses(judge: Judge, x: np.ndarray, y: np.ndarray, witnesses: np.ndarray, radius: np.ndarray,
                     wrong: np.ndarray, norm: str, device: str | torch.device) -> None:
    """Every witness: inside its ball and the box, and the judge (asked again) sees another class."""
    has = np.isfinite(radius) & ~wrong
    if not has.any():
        return
    check_ball(x[has], witnesses[has], radius[has], norm, tol=1e-5, who=f"invariance[{judge.name}]")
    with torch.no_grad():
        still = ~judge.changed(torch.from_numpy(witnesses[has]).to(device),
                               torch.from_numpy(np.asarray(y, np.int64)[has]).to(device)).cpu().numpy()
    if still.any():
        raise ConstraintViolation(f"invariance[{judge.name}]: {int(still.sum())} witness(es) do not change the judge")


def relabel_curve(judge: Judge, x: np.ndarray, y: np.ndarray, ref: np.ndarray, targets: np.ndarray, norm: str,
                  class_names: list[str], *, grid: tuple[float, ...] | None = None, class_map: str = "any",
                  device: str | torch.device = "cpu", batch_size: int = 256) -> dict[str, Any]:
    """The judge's relabel rate of one-target invariance examples, per eps of ``grid`` (default
    :data:`RELABEL_GRID`), over the judge-correct points, per class and overall; ``class_map``:
    ``any`` other class, or ``tramer`` (their hand-made target classes; 10-class digit data only).

    Returns the document ``{"norm", "eps", "relabel_rate": {"all": [...], name: [...]},
    "n": {"all": N, name: n}}`` plus the target choice (``"targets"``)."""
    grid = tuple(grid or RELABEL_GRID[norm])
    allowed = _allowed(targets, y, class_map)
    relabelled = np.zeros((len(grid), len(y)), bool)
    right = np.zeros(len(y), bool)
    with eval_mode(*judge.modules):
        for s in range(0, len(y), batch_size):
            xb = torch.from_numpy(x[s:s + batch_size]).to(device)
            yb = torch.from_numpy(np.asarray(y[s:s + batch_size], np.int64)).to(device)
            right[s:s + len(yb)] = ~judge.changed(xb, yb).cpu().numpy()
            ab = allowed[s:s + batch_size]
            for gi, eps in enumerate(grid):
                e = torch.full((len(yb),), float(eps), device=device)
                best_ink = torch.full((len(yb),), float("inf"), device=device, dtype=torch.float64)
                best = xb.clone()
                for c in range(targets.shape[1]):
                    ok = torch.from_numpy(ab[:, c]).to(device)
                    if not ok.any():
                        continue
                    t = torch.from_numpy(ref[np.maximum(targets[s:s + batch_size, c], 0)]).to(device)
                    xe = path_point(xb, t, e, norm)
                    ink = removed_ink(xb, xe).double().masked_fill(~ok, float("inf"))
                    take = ink < best_ink
                    best_ink = torch.where(take, ink, best_ink)
                    best[take] = xe[take]
                relabelled[gi, s:s + len(yb)] = judge.changed(best, yb).cpu().numpy()
    y = np.asarray(y)
    doc: dict[str, Any] = {"norm": norm, "eps": list(grid), "relabel_rate": {}, "n": {}}
    groups = [("all", right)] + [(name, right & (y == c)) for c, name in enumerate(class_names)]
    for name, m in groups:
        doc["relabel_rate"][name] = [float(relabelled[g][m].mean()) if m.any() else None for g in range(len(grid))]
        doc["n"][name] = int(m.sum())
    doc["targets"] = {"choice": "least removed ink sum max(x - x_eps, 0) at each eps, without asking the judge",
                      "classes": class_map}
    return doc


def least_ink_examples(x: np.ndarray, y: np.ndarray, ref: np.ndarray, targets: np.ndarray, eps: np.ndarray,
                       norm: str, class_map: str = "any", batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Each point's one-target invariance example at its own ``eps`` (N,): the path point toward the
    other-class target that removes the least ink (no judge asked); returns (examples, target classes)."""
    allowed = _allowed(targets, y, class_map)
    out, chosen = np.array(x, np.float32, copy=True), np.full(len(y), -1, np.int64)
    for s in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[s:s + batch_size])
        e = torch.from_numpy(np.asarray(eps[s:s + batch_size], np.float32))
        best_ink = torch.full((len(xb),), float("inf"), dtype=torch.float64)
        for c in range(targets.shape[1]):
            ok = torch.from_numpy(allowed[s:s + batch_size, c])
            if not ok.any():
                continue
            xe = path_point(xb, torch.from_numpy(ref[np.maximum(targets[s:s + batch_size, c], 0)]), e, norm)
            ink = removed_ink(xb, xe).double().masked_fill(~ok, float("inf"))
            take = ink < best_ink
            best_ink = torch.where(take, ink, best_ink)
            out[s:s + batch_size][take.numpy()] = xe[take].numpy()
            chosen[s:s + batch_size][take.numpy()] = c
    return out, chosen


def _allowed(targets: np.ndarray, y: np.ndarray, class_map: str) -> np.ndarray:
    allowed = targets >= 0
    if class_map == "any":
        return allowed
    if class_map != "tramer":
        raise ConfigError(f"relabel targets must be any or tramer; got {class_map!r}")
    if targets.shape[1] != 10:
        raise ConfigError("Tramèr et al.'s target classes are for 10-class digit data")
    mask = np.zeros_like(allowed)
    for src, tgts in TRAMER_TARGETS.items():
        mask[np.ix_(np.flatnonzero(np.asarray(y) == src), list(tgts))] = True
    return allowed & mask


def union_rate(inv: Invariance, y: np.ndarray, grid: tuple[float, ...]) -> list[float]:
    """Share of judge-correct points whose invariance radius (over all targets) is <= eps, per eps."""
    ok = ~inv.clean_wrong
    return [float((inv.radius[ok] <= e).mean()) if ok.any() else float("nan") for e in grid]


__all__ = ["nearest_targets", "path_point", "removed_ink", "Invariance", "invariance_radii", "relabel_curve",
           "least_ink_examples",
           "union_rate", "GRID_STEP", "RELABEL_GRID", "HUMAN_RELABEL", "TRAMER_TARGETS"]
