"""Benchmark: estimators of a judge's adversarial radius (the smallest input change that changes its
verdict), on the same judge and points, in one process.

Methods: calib's bisection over PGD probes (the reference, ``method="bisection"``), calib's minimum-norm
estimator (``method="fmn"``, :mod:`calib.budgets.minnorm`; cold, and warm-started from the invariance
witnesses as a run does), adv-lib's FMN and FAB, and torchattacks' FAB. Each library attack gets the
judge as a module returning its class scores (``judge.logits``); every method's output is re-checked
by the judge (a point whose verdict did not change counts as "not found", radius inf), and its distance
measured by calib.

Two parts:

1. **exact**: a linear judge on digits (logistic regression on the train part), where the
   box-constrained minimal radius has a closed form (``tests/test_minnorm.py``): each method's ratio to
   the exact radius.
2. **run** (``--run RUN``): the run's judge on ``--n`` calibration points: each method's ratio to the
   best radius any method found, and its time.

    python bench/radius_estimators.py                                  # part 1 only
    python bench/radius_estimators.py --run reports/mnist-seed0 --n 300 --threads 2

adv-lib imports torchvision (a perceptual distance) and visdom (a plot logger) at package import, and
this bench uses neither: where they are missing, stub modules stand in for them (printed). Install
adv-lib with ``pip install --no-deps adv-lib``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import types
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from calib.budgets.invariance import invariance_radii, nearest_targets  # noqa: E402
from calib.budgets.semantic import robustness_radii  # noqa: E402
from calib.judges.base import Judge  # noqa: E402
from calib.perturb.invariants import perturbation_norms  # noqa: E402
from calib.perturb.pgd import eval_mode  # noqa: E402

P = {"linf": float("inf"), "l2": 2.0}


class Scores(torch.nn.Module):
    """A judge as a module: images -> its class scores (what the library attacks expect)."""

    def __init__(self, judge: Judge) -> None:
        super().__init__()
        self.judge = judge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.judge.logits(x)


def _stub(name: str, **attrs) -> None:
    """A stand-in for a module adv-lib imports at package import but this bench never calls."""
    try:
        __import__(name)
    except ImportError:
        mod = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(mod, k, v)
        sys.modules[name] = mod
        for k, v in attrs.items():
            if isinstance(v, types.ModuleType):
                sys.modules[f"{name}.{k}"] = v
        print(f"({name} missing: a stub module stands in for adv-lib's unused import of it)")


def _adv_lib():
    _stub("torchvision", models=types.ModuleType("torchvision.models"))
    _stub("visdom", Visdom=object)
    from adv_lib.attacks import fab, fmn

    return fmn, fab


def library_methods(norm: str, n_inputs: int) -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    try:
        fmn, fab = _adv_lib()
        out["adv-lib fmn (100 steps)"] = lambda m, x, y: fmn(m, x, y, norm=P[norm], steps=100)
        out["adv-lib fab (100 iters)"] = lambda m, x, y: fab(m, x, y, norm=P[norm], n_iter=100)
    except ImportError as exc:
        print(f"adv-lib not available ({exc}); pip install --no-deps adv-lib")
    try:
        import torchattacks

        big = 1.0 if norm == "linf" else math.sqrt(n_inputs)

        def ta_fab(m, x, y):
            return torchattacks.FAB(m, norm="Linf" if norm == "linf" else "L2", eps=big, steps=100,
                                    n_classes=10)(x, y)
        out["torchattacks FAB (100 steps)"] = ta_fab
    except ImportError as exc:
        print(f"torchattacks not available ({exc})")
    return out


def verified_radius(judge: Judge, x: np.ndarray, y: np.ndarray, x_adv: torch.Tensor, norm: str) -> np.ndarray:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    x_adv = x_adv.detach().float().clamp(0, 1)
    with torch.no_grad():
        ch = judge.changed(x_adv, yt).numpy() & ~judge.changed(xt, yt).numpy()
    r = perturbation_norms(xt, x_adv, norm).double().numpy()
    return np.where(ch, r, np.inf)


def run_methods(judge: Judge, x: np.ndarray, y: np.ndarray, norm: str, start: np.ndarray | None,
                libraries: bool = True, batch: int = 100) -> dict[str, tuple[np.ndarray, float]]:
    res: dict[str, tuple[np.ndarray, float]] = {}
    t0 = time.perf_counter()
    res["calib bisection (reference)"] = (robustness_radii(judge, x, y, norm, method="bisection").empirical,
                                          time.perf_counter() - t0)
    t0 = time.perf_counter()
    res["calib fmn (cold)"] = (robustness_radii(judge, x, y, norm, method="fmn").empirical, time.perf_counter() - t0)
    if start is not None:
        t0 = time.perf_counter()
        res["calib fmn (warm, as a run)"] = (robustness_radii(judge, x, y, norm, method="fmn", start=start).empirical,
                                             time.perf_counter() - t0)
    if libraries:
        model = Scores(judge)
        for name, attack in library_methods(norm, int(np.prod(x.shape[1:]))).items():
            t0 = time.perf_counter()
            parts = []
            with eval_mode(*judge.modules):
                for s in range(0, len(y), batch):
                    xb = torch.from_numpy(x[s:s + batch])
                    yb = torch.from_numpy(y[s:s + batch].astype(np.int64))
                    parts.append(verified_radius(judge, x[s:s + batch], y[s:s + batch], attack(model, xb, yb), norm))
            r = np.concatenate(parts)
            with torch.no_grad():
                r[judge.changed(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))).numpy()] = 0.0
            res[name] = (r, time.perf_counter() - t0)
    return res


def summarise(res: dict[str, tuple[np.ndarray, float]], ref: np.ndarray, against: str) -> None:
    ok = np.isfinite(ref) & (ref > 0)
    t_ref = res["calib bisection (reference)"][1]
    print(f"  {'method':32s} {'median':>8s} {'p95':>8s} {'max':>8s} {'below':>6s} {'none':>5s} {'seconds':>8s} "
          f"{'time/ref':>8s}   (radius / {against}, over {int(ok.sum())} points)")
    for name, (r, t) in res.items():
        rat = r[ok] / ref[ok]
        fin = np.isfinite(rat)
        below = int((rat[fin] < 1 - 1e-4).sum())
        med = np.median(rat) if fin.any() else np.inf
        p95 = np.percentile(rat, 95) if fin.any() else np.inf
        print(f"  {name:32s} {med:8.4f} {p95:8.4f} {rat.max():8.3f} {below:6d} {int((~fin).sum()):5d} {t:8.2f} "
              f"{t / t_ref:8.2f}")


def exact_part(libraries: bool) -> None:
    from sklearn.linear_model import LogisticRegression
    from test_minnorm import exact_radii

    from calib.data.sources import load_dataset
    from calib.data.split import SplitSpec
    from calib.judges.classifier import ClassifierJudge

    sp = SplitSpec().build(load_dataset("digits"))
    tr, cal = sp.train, sp.calibration
    clf = LogisticRegression(max_iter=3000).fit(tr.images.reshape(len(tr), -1), tr.labels)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(clf.coef_).float())
        net[1].bias.copy_(torch.from_numpy(clf.intercept_).float())
    judge = ClassifierJudge(net, 10, name="linear")
    x, y = cal.images, cal.labels
    print(f"\n== exact: linear judge on digits, {len(y)} calibration points ==")
    for norm in ("linf", "l2"):
        exact = exact_radii(clf.coef_, clf.intercept_, x, y, norm)
        print(f"{norm}:")
        summarise(run_methods(judge, x, y, norm, None, libraries), exact, "exact")


def run_part(path: str, judge_name: str | None, n: int, libraries: bool) -> None:
    from calib.runfolder import open_run

    run = open_run(path)
    name = judge_name or run.table().semantic_judge or "knn"
    judge = run.judge(name)
    cal, tr = run.split("calibration"), run.split("train")
    sel = np.random.default_rng(0).choice(len(cal), min(n, len(cal)), replace=False)
    x, y = cal.images[np.sort(sel)], cal.labels[np.sort(sel)]
    targets = nearest_targets(x, y, tr.images, tr.labels, len(run.class_names))
    print(f"\n== run {path}: judge {name}, {len(y)} calibration points ==")
    for norm in ("linf", "l2"):
        inv = invariance_radii(judge, x, y, tr.images, targets, norm)
        start = (np.where(np.isfinite(inv.radius) & (inv.radius > 0), 0.0, np.nan)[:, None, None, None]
                 + inv.witnesses).astype(np.float32)
        res = run_methods(judge, x, y, norm, start, libraries)
        best = np.minimum.reduce([r for r, _ in res.values()])
        print(f"{norm} (invariance radii first: {inv.info['seconds']:.2f} s):")
        summarise(res, best, "best of all methods")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="a run folder: its judge on its calibration points")
    ap.add_argument("--judge", default=None, help="default: the run table's semantic judge")
    ap.add_argument("--n", type=int, default=300, help="calibration points of the run part")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-libraries", action="store_true", help="calib's methods only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    exact_part(not args.no_libraries)
    if args.run:
        run_part(args.run, args.judge, args.n, not args.no_libraries)


if __name__ == "__main__":
    main()
