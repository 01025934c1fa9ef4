"""Semantic input budgets (docs/design.md, "Budgets"): the judge's robustness radius.

For a calibration point x of class y and a judge J (:mod:`calib.judges`), the robustness radius in
input norm p is ``r(x) = min{ ||delta||_p : J(x + delta) != y, x + delta in [0,1] }``: the smallest
input change that changes the judge's class. Per class c, ``eps_sem(c) = s * Q_q{ r(x) : y=c }``.
Every estimate says which side it bounds:

* **empirical (upper bound)**, by default a minimum-norm attack (:mod:`calib.budgets.minnorm`: FMN over
  the untargeted margin and the nearest target classes, warm-started from the invariance witness,
  each candidate re-checked, then shortened along its ray); the reference ``method="bisection"`` is
  per-point bisection on the radius, each probe a PGD attack (random
  start, ``steps`` steps) that ascends the judge's "class changed" score inside the ball, a sample
  leaving the attack at its first successful iterate (only *a* witness per probe is needed). Every
  success is a *witness* x' whose judge verdict was re-evaluated and whose distance was measured;
  r(x) <= ||x' - x||, so the budget it yields is optimistic: a stronger attack can only lower it.
  Bisection is geometric (in log radius) between a floor of ``max_radius / 4096`` (or the certified
  radius, when larger) and the smallest witness so far, so ``iters`` probes give a relative
  precision of ``4096 ** (2 ** -iters)`` (3 % at 8). A point without a witness at ``max_radius``
  (L-inf 1: the whole box) has r = inf ("no change found").
* **certified (lower bound)**: for a judge with a Lipschitz certificate, ``r(x) >= m(x) / L`` (L2) and
  ``m(x) / (L sqrt(n))`` (L-inf) with m the judge's margin: the budget it yields is guaranteed for
  that judge. Certificates are checked, not assumed: a witness closer than the certified radius, or
  an embedding move larger than ``L ||delta||_2``, raises :class:`~calib.attacks.ConstraintViolation`
  (a bug, not a user error); the number of witnesses checked is recorded.

A point the judge already gets wrong has r = 0 under both bounds and counts against coverage.
A semantic budget measures the judge, not the truth (docs/design.md): a plain triplet net is moved across
its class margin by imperceptible changes, so its r(x) is small.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calib.perturb.invariants import ConstraintViolation, check_ball, perturbation_norms
from calib.perturb.pgd import eval_mode, pgd
from calib.errors import ConfigError, DataError
from calib.io import read_json, to_jsonable, write_json, write_npz
from calib.judges.base import Judge
from calib.progress import progress

log = logging.getLogger(__name__)

#: ratio between the largest radius tried and the floor of the geometric bisection
FLOOR_RATIO = 4096.0
#: stands for "no change found" (inf) inside quantiles
_SENTINEL = 1e300
#: a witness may sit below the certified radius by at most this (relative) rounding before it is a bug
CERT_TOL = 1e-5


class JudgeObjective:
    """PGD loss hook: the judge's "class changed" score ``-margin`` of the source labels ``y``;
    success = the judge's verdict (re-evaluated in float64 by :meth:`evaluate`)."""

    def __init__(self, judge: Judge, y: torch.Tensor) -> None:
        self.judge, self.y = judge, y
        self.modules = judge.modules

    def __call__(self, x_adv: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.judge.score(x_adv, self.y if idx is None else self.y[idx])

    @staticmethod
    def succeeded(score: torch.Tensor) -> torch.Tensor:
        """Success read from the step's own score (> 0: another class); re-checked by :meth:`evaluate`."""
        return score > 0

    @torch.no_grad()
    def evaluate(self, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.judge.score(x_adv, self.y), self.judge.changed(x_adv, self.y)


def max_radius_of(norm: str, n_inputs: int) -> float:
    """The radius whose ball covers the whole box [0,1]^n from any point: 1 (L-inf), sqrt(n) (L2)."""
    if norm == "linf":
        return 1.0
    if norm == "l2":
        return math.sqrt(n_inputs)
    raise ConfigError(f"semantic radii are measured in linf or l2; got {norm!r}")


@dataclass
class Radii:
    """Per-point robustness radii of one judge in one norm (all (N,)).

    Attributes:
        empirical: the smallest witnessed radius (upper bound; ``inf`` = no change found up to
            ``max_radius``); 0 where the judge already errs on the clean point.
        certified: the certified radius (lower bound), or ``None`` without a certificate.
        clean_wrong: the judge does not give the clean point its label.
        witnesses: (N, C, H, W) the witness x' per point (x itself where none was found).
        checked: witnesses checked against the certificate; info: settings and timings.
    """

    norm: str
    empirical: np.ndarray
    certified: np.ndarray | None
    clean_wrong: np.ndarray
    witnesses: np.ndarray
    checked: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    invariance: np.ndarray | None = None
    invariance_target: np.ndarray | None = None
    invariance_witnesses: np.ndarray | None = None

    def upper(self, rule: str = "adversarial") -> np.ndarray:
        """The upper estimate the semantic budget uses: the adversarial radius (``empirical``) or the
        invariance radius (:mod:`calib.budgets.invariance`)."""
        if rule == "adversarial":
            return self.empirical
        if rule == "invariance":
            if self.invariance is None:
                raise ConfigError("these radii have no invariance radii; measure them again (calib run)")
            return self.invariance
        raise ConfigError(f"unknown semantic rule {rule!r}; choose invariance or adversarial")


def merge_invariance(radii: Radii, inv: Any, cert_tol: float = CERT_TOL) -> Radii:
    """Add invariance radii to adversarial ones. The true radii satisfy r_adv <= r_inv, so an invariance
    witness closer than the attack's best is a tighter adversarial witness and replaces it (how often:
    ``info["invariance_tightened"]``, a measure of how loose the attack is). A certified radius above
    any witness, invariance witnesses included, is a bug: :class:`ConstraintViolation`."""
    emp = radii.empirical.copy()
    wit = radii.witnesses.copy()
    closer = np.isfinite(inv.radius) & (inv.radius < emp) & ~radii.clean_wrong
    emp[closer] = inv.radius[closer]
    if wit.size:
        wit[closer] = inv.witnesses[closer]
    if radii.certified is not None:
        has = np.isfinite(inv.radius) & ~inv.clean_wrong
        below = inv.radius[has] < radii.certified[has] * (1 - cert_tol) - 1e-9
        if below.any():
            i = int(np.flatnonzero(below)[0])
            raise ConstraintViolation(f"certificate violated: an invariance witness at {radii.norm} radius "
                                      f"{inv.radius[has][i]:.6g} < certified {radii.certified[has][i]:.6g}")
    info = {**radii.info, "invariance": inv.info, "invariance_tightened": int(closer.sum())}
    return Radii(radii.norm, emp, radii.certified, radii.clean_wrong, wit, radii.checked, info, inv.radius,
                 inv.target_class, inv.witnesses)


#: how the adversarial radius is estimated: a minimum-norm attack (default) or bisection over PGD probes
METHODS = ("fmn", "bisection")


def robustness_radii(judge: Judge, x: np.ndarray, y: np.ndarray, norm: str, *, method: str = "bisection",
                     iters: int = 8, steps: int = 10, restarts: int = 1, fmn_steps: int = 20, fmn_targets: int = 2,
                     start: np.ndarray | None = None, max_radius: float | None = None, seed: int = 0,
                     batch_size: int = 256, device: str | torch.device = "cpu", show_progress: bool = False) -> Radii:
    """Empirical (attack) and certified radii of ``judge`` at every point (see the module docstring).

    Args:
        judge: the judge (its modules on ``device``).
        x: (N, C, H, W) clean images in [0,1]; y: (N,) their labels.
        norm: ``linf`` or ``l2``.
        method: ``bisection`` (the reference: PGD probes, ``iters``, ``steps``, ``restarts``) or ``fmn``
            (:mod:`calib.budgets.minnorm`: a minimum-norm attack of ``fmn_steps`` over the untargeted
            margin and ``fmn_targets`` target classes, warm-started from ``start``).
        iters: bisection probes after the first attack at ``max_radius``; steps, restarts: PGD per probe.
        start: (N, C, H, W) known witnesses to start from (``fmn``; NaN rows: none).
        max_radius: the largest radius tried (default: the whole box, :func:`max_radius_of`).
        seed: seeds every random start.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown radius method {method!r}; choose {' or '.join(METHODS)}")
    if iters < 0 or steps < 1 or restarts < 1:
        raise ConfigError("semantic iters must be >= 0, steps and restarts >= 1")
    n = len(y)
    hi_max = float(max_radius) if max_radius is not None else max_radius_of(norm, int(np.prod(x.shape[1:])))
    t0 = time.perf_counter()
    cert = _certified(judge, x, y, norm, batch_size, device)
    if method == "fmn":
        from calib.budgets.minnorm import minimum_norm_radii

        emp, witnesses, wrong, minfo = minimum_norm_radii(judge, x, y, norm, steps=fmn_steps, targets=fmn_targets,
                                                          start=start, device=device, show_progress=show_progress)
        emp = np.where(emp <= hi_max, emp, np.inf)
        settings: dict[str, Any] = {"method": "fmn", "fmn": minfo}
    else:
        emp, witnesses, wrong = _bisection(judge, x, y, norm, iters, steps, restarts, hi_max, cert, seed, batch_size,
                                           device, show_progress)
        settings = {"method": "bisection", "iters": iters, "steps": steps, "restarts": restarts,
                    "floor": hi_max / FLOOR_RATIO}
    checked = 0
    if cert is not None:
        for s in range(0, n, batch_size):
            xb = torch.from_numpy(x[s:s + batch_size]).to(device)
            yb = torch.from_numpy(np.asarray(y[s:s + batch_size], np.int64)).to(device)
            checked += _check_certificate(judge, xb, yb, witnesses[s:s + batch_size], emp[s:s + batch_size],
                                          cert[s:s + batch_size], norm, device)
    found = np.isfinite(emp) & ~wrong
    if found.any():  # every witness: in the box, and the judge really changed its verdict
        check_ball(x[found], witnesses[found], emp[found], norm, tol=1e-5, who=f"radius[{judge.name}]")
        with torch.no_grad(), eval_mode(*judge.modules):
            for s in range(0, int(found.sum()), batch_size):
                i = np.flatnonzero(found)[s:s + batch_size]
                still = judge.changed(torch.from_numpy(witnesses[i]).to(device),
                                      torch.from_numpy(np.asarray(y[i], np.int64)).to(device)).cpu().numpy()
                if not still.all():
                    raise ConstraintViolation(f"radius[{judge.name}]: {int((~still).sum())} witness(es) no longer "
                                              "change the judge")
    info = {**settings, "max_radius": hi_max, "seed": seed, "seconds": time.perf_counter() - t0,
            "found": int(found.sum()), "not_found": int((~np.isfinite(emp)).sum()), "clean_wrong": int(wrong.sum())}
    log.info("radii %s %s (%s): median empirical %.4g, %d without a witness, %d clean errors", judge.name, norm,
             method, float(np.median(emp)), info["not_found"], info["clean_wrong"])
    return Radii(norm, emp, cert, wrong, witnesses, checked, info)


def _certified(judge: Judge, x: np.ndarray, y: np.ndarray, norm: str, batch_size: int,
               device: str | torch.device) -> np.ndarray | None:
    """(N,) the judge's certified radius (0 where it errs on x), or ``None`` without a certificate."""
    out = []
    with torch.no_grad(), eval_mode(*judge.modules):
        for s in range(0, len(y), batch_size):
            xb = torch.from_numpy(x[s:s + batch_size]).to(device)
            yb = torch.from_numpy(np.asarray(y[s:s + batch_size], np.int64)).to(device)
            cb = judge.certified_radius(xb, yb, norm)
            if cb is None:
                return None
            out.append(np.where(judge.changed(xb, yb).cpu().numpy(), 0.0, cb.double().cpu().numpy()))
    return np.concatenate(out) if out else np.zeros(0)


def _bisection(judge: Judge, x: np.ndarray, y: np.ndarray, norm: str, iters: int, steps: int, restarts: int,
               hi_max: float, cert: np.ndarray | None, seed: int, batch_size: int, device: str | torch.device,
               show_progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-point geometric bisection over PGD probes (the module docstring); (radius, witnesses, wrong)."""
    n = len(y)
    floor = hi_max / FLOOR_RATIO
    emp = np.full(n, np.inf)
    wrong = np.zeros(n, bool)
    witnesses = np.array(x, dtype=np.float32, copy=True)
    with progress(show_progress) as bar, eval_mode(*judge.modules):
        task = bar.add_task(f"radius {judge.name} {norm}", total=n * (iters + 1), status="")
        for s in range(0, n, batch_size):
            xb = torch.from_numpy(x[s:s + batch_size]).to(device)
            yb = torch.from_numpy(np.asarray(y[s:s + batch_size], np.int64)).to(device)
            nb = len(yb)
            wb = judge.changed(xb, yb).cpu().numpy()
            lo = np.full(nb, floor) if cert is None else np.maximum(cert[s:s + nb], floor)
            hi = np.full(nb, np.inf)
            for it in range(iters + 1):
                if it == 0:
                    act = ~wb
                    eps = np.full(nb, hi_max)
                else:
                    act = ~wb & np.isfinite(hi) & (lo < hi)
                    eps = np.sqrt(lo * np.where(np.isfinite(hi), hi, hi_max))
                if act.any():
                    ia = np.flatnonzero(act)
                    xa, ya = xb[ia], yb[ia]
                    res = pgd(JudgeObjective(judge, ya), xa, torch.from_numpy(eps[ia].astype(np.float32)), norm,
                              steps=steps, restarts=restarts, seed=seed + 7919 * it, early_stop=True)
                    succ = res.success.cpu().numpy()
                    dist = perturbation_norms(xa, res.x_adv, norm).cpu().numpy()
                    better = succ & (dist < hi[ia])
                    hi[ia[better]] = dist[better]
                    witnesses[s + ia[better]] = res.x_adv[torch.from_numpy(better).to(res.x_adv.device)].cpu().numpy()
                    lo[ia[~succ]] = np.maximum(lo[ia[~succ]], eps[ia[~succ]])
                bar.advance(task, nb)
            emp[s:s + nb] = np.where(wb, 0.0, hi)
            wrong[s:s + nb] = wb
    return emp, witnesses, wrong


def _check_certificate(judge: Judge, x: torch.Tensor, y: torch.Tensor, witnesses: np.ndarray, emp: np.ndarray,
                       cert: np.ndarray, norm: str, device: str | torch.device) -> int:
    """Raise :class:`ConstraintViolation` if a witness beats the certificate; returns how many were checked."""
    has = np.isfinite(emp) & (emp > 0)
    if not has.any():
        return 0
    xa = torch.from_numpy(witnesses[has]).to(device)
    with torch.no_grad():
        still = ~judge.changed(xa, y[torch.from_numpy(has).to(y.device)]).cpu().numpy()
    if still.any():
        raise ConstraintViolation(f"radius[{judge.name}]: {int(still.sum())} witness(es) no longer change the judge")
    below = emp[has] < cert[has] * (1 - CERT_TOL) - 1e-9
    if below.any():
        i = int(np.flatnonzero(below)[0])
        raise ConstraintViolation(f"certificate of judge {judge.name} violated: a change at {norm} radius "
                                  f"{emp[has][i]:.6g} < certified {cert[has][i]:.6g}")
    xc = x[torch.from_numpy(has).to(x.device)]
    d2 = perturbation_norms(xc, xa, "l2")
    for member in getattr(judge, "members", [judge]):  # every Lipschitz embedding involved
        bound, g = getattr(member, "lipschitz", None), getattr(member, "g", None)
        if bound is None or g is None:
            continue
        with torch.no_grad():
            shift = torch.linalg.vector_norm(g(xa) - g(xc), dim=1).double()
        over = shift > bound * d2 * (1 + CERT_TOL) + 1e-6
        if over.any():
            raise ConstraintViolation(f"judge {member.name}: an input change of L2 {float(d2[over][0]):.6g} moved the "
                                      f"embedding by {float(shift[over][0]):.6g} > L = {bound:.6g} times it")
    return int(has.sum())


def class_quantile(values: np.ndarray, labels: np.ndarray, num_classes: int, q: float, s: float = 1.0,
                   method: str = "linear", mask: np.ndarray | None = None) -> np.ndarray:
    """``s * Q_q{ values : y=c }`` per class (K,) over the points of ``mask`` (default all); ``inf`` where
    the quantile falls among points with an infinite value (no change found); 0 for a class with no
    point in ``mask`` (nothing is known there, so nothing is allowed)."""
    out = np.empty(num_classes)
    labels = np.asarray(labels)
    keep = np.ones(len(labels), bool) if mask is None else np.asarray(mask, bool)
    for c in range(num_classes):
        if not (labels == c).any():
            raise ConfigError(f"class {c} has no calibration points")
        v = np.asarray(values, np.float64)[keep & (labels == c)]
        if v.size == 0:
            out[c] = 0.0
            continue
        qv = np.quantile(np.where(np.isinf(v), _SENTINEL, v), q, method=method)  # inf - inf would give NaN
        out[c] = np.inf if qv >= _SENTINEL / 2 else s * qv
    return out


@dataclass
class SemanticBudget:
    """Per class (K,) for one judge and norm: the budget under each bound (``certified`` None
    without a certificate; ``inf`` = no change found) with their 95 % intervals (K, 2), the class
    sizes, the judge-correct points the quantiles are taken over, and the judge's clean error."""

    empirical: np.ndarray
    certified: np.ndarray | None
    n: np.ndarray
    empirical_interval: np.ndarray | None = None
    certified_interval: np.ndarray | None = None
    n_correct: np.ndarray | None = None
    clean_error: np.ndarray | None = None
    rule: str = "adversarial"


def semantic_budget(radii: Radii, labels: np.ndarray, num_classes: int, q: float = 0.05, s: float = 1.0,
                    method: str = "linear", rule: str = "adversarial", alpha: float = 0.05) -> SemanticBudget:
    """``eps_sem(c) = s * Q_q{ r(x) : y=c, the judge right on x }`` for the upper estimate of ``rule``
    (adversarial or invariance radius) and, if present, the certified radius; each with its
    distribution-free interval (:mod:`calib.budgets.intervals`, level ``1 - alpha``)."""
    from calib.budgets.intervals import class_intervals

    if not 0 <= q < 1:
        raise ConfigError(f"q must be in [0, 1); got {q}")
    labels = np.asarray(labels, np.int64)
    right = ~np.asarray(radii.clean_wrong, bool)
    upper = radii.upper(rule)
    emp = class_quantile(upper, labels, num_classes, q, s, method, mask=right)
    cert = None if radii.certified is None else class_quantile(radii.certified, labels, num_classes, q, s, method,
                                                               mask=right)
    if cert is not None and (cert > emp + 1e-12).any():
        raise ConstraintViolation(f"certified semantic budget above the empirical one for classes "
                                  f"{np.flatnonzero(cert > emp + 1e-12).tolist()}")
    n = np.bincount(labels, minlength=num_classes)
    n_right = np.bincount(labels[right], minlength=num_classes)
    return SemanticBudget(emp, cert, n, class_intervals(upper, labels, num_classes, q, s, alpha, right),
                          None if radii.certified is None else
                          class_intervals(radii.certified, labels, num_classes, q, s, alpha, right),
                          n_right, 1.0 - n_right / np.maximum(n, 1), rule)


def save_radii(folder: str | os.PathLike[str], name: str, radii: dict[str, Radii], indices: np.ndarray,
               labels: np.ndarray, judge: dict[str, Any], witnesses: bool = True) -> Path:
    """``<name>.npz`` (per point: dataset ``indices``, ``labels``, and per norm ``empirical_<norm>``,
    ``certified_<norm>``, ``clean_wrong_<norm>``, ``witness_<norm>``) and ``<name>.json`` (the judge,
    settings, timings, certificate checks), written atomically."""
    folder = Path(folder)
    arrays: dict[str, np.ndarray] = {"indices": np.asarray(indices), "labels": np.asarray(labels)}
    info: dict[str, Any] = {}
    for norm, r in radii.items():
        arrays[f"empirical_{norm}"] = r.empirical
        arrays[f"clean_wrong_{norm}"] = r.clean_wrong
        if r.certified is not None:
            arrays[f"certified_{norm}"] = r.certified
        if witnesses:
            arrays[f"witness_{norm}"] = r.witnesses
        if r.invariance is not None:
            arrays[f"invariance_{norm}"] = r.invariance
            arrays[f"invariance_target_{norm}"] = r.invariance_target
            if witnesses:
                arrays[f"invariance_witness_{norm}"] = r.invariance_witnesses
        info[norm] = {**r.info, "certificate_checked": r.checked, "certified": r.certified is not None}
    write_npz(folder / f"{name}.npz", arrays)
    write_json(folder / f"{name}.json", to_jsonable({"judge": judge, "norms": info}))
    return folder / f"{name}.json"


def load_radii(folder: str | os.PathLike[str], name: str) -> tuple[dict[str, Radii], dict[str, Any],
                                                                     np.ndarray, np.ndarray]:
    """Read what :func:`save_radii` wrote: (norm -> Radii, the JSON document, indices, labels)."""
    folder = Path(folder)
    doc = read_json(folder / f"{name}.json", DataError, "semantic radii")
    try:
        with np.load(folder / f"{name}.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder / name}.npz: unreadable semantic radii ({exc})") from exc
    out = {}
    for norm, info in doc["norms"].items():
        out[norm] = Radii(norm, arrays[f"empirical_{norm}"], arrays.get(f"certified_{norm}"),
                          arrays[f"clean_wrong_{norm}"],
                          arrays.get(f"witness_{norm}", np.empty((0,), np.float32)),
                          int(info.get("certificate_checked", 0)), info, arrays.get(f"invariance_{norm}"),
                          arrays.get(f"invariance_target_{norm}"), arrays.get(f"invariance_witness_{norm}"))
    return out, doc, arrays["indices"], arrays["labels"]


__all__ = ["JudgeObjective", "Radii", "merge_invariance", "robustness_radii", "SemanticBudget", "semantic_budget", "class_quantile",
           "max_radius_of", "save_radii", "load_radii"]
