"""Benchmark: the semantic-budget stage, new (the judge's robustness radius) vs the previous one.

Reference (calib 0.1 before the judges, re-implemented here as it was): per class and norm, bisection
on one input radius for the whole class (7 probes), each probe an embedding-shift PGD (10 steps) on
every calibration point, accepting the radius while >= 1-q of the class keeps its worst shift within
the embedding budget min(Q_q{d_diff_g/2}, Q_q{d_same_g}). New: per-point bisection (8 probes after
a first attack on the whole box, 10 PGD steps each) on the margin of the run's ``knn`` judge (and
of any other judge whose model the run has). Both on the same calibration points, in the same
process, alternating; prints seconds, the ratio new/reference, and the budgets each yields.

    calib run --dataset mnist --data-dir ../shared/data           # the run folder (once)
    python bench/semantic_stage.py --run reports/mnist-seed0 --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from calib.perturb.objectives import EmbeddingShift
from calib.perturb.pgd import pgd
from calib.budgets import Policy, geometric_budget
from calib.budgets.semantic import robustness_radii, semantic_budget
from calib.runfolder import open_run


def reference_semantic(g, x, y, eps_emb, eps_hi, norm, q=0.05, iters=7, steps=10, seed=0, batch=512):
    """The previous semantic stage: class-wise bisection against embedding-shift PGD."""
    k = len(eps_emb)
    xt = torch.from_numpy(x)
    n = np.bincount(y, minlength=k)
    budget = np.asarray(eps_emb)[y]

    def share_ok(eps_class):
        e = torch.from_numpy(eps_class[y].astype(np.float32))
        shift = torch.cat([pgd(EmbeddingShift(g, xt[s:s + batch]), xt[s:s + batch], e[s:s + batch], norm, steps=steps,
                               seed=seed).loss.clamp_min(0) for s in range(0, len(y), batch)]).numpy()
        return np.bincount(y, weights=shift <= budget, minlength=k) / n

    hi, lo = np.asarray(eps_hi, float).copy(), np.zeros(k)
    censored = share_ok(hi) >= 1 - q
    lo[censored] = hi[censored]
    for _ in range(iters):
        mid = np.where(censored, hi, (lo + hi) / 2)
        good = share_ok(mid) >= 1 - q
        lo = np.where(~censored & good, mid, lo)
        hi = np.where(~censored & ~good, mid, hi)
    return lo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="reports/mnist-seed0")
    ap.add_argument("--norms", default="linf,l2")
    ap.add_argument("--judges", default="knn", help="comma-separated judges to time (their models must exist)")
    args = ap.parse_args()
    folder = open_run(Path(args.run))
    cfg, ds, splits, stats = folder.config, folder.dataset, folder.splits, folder.stats()
    policy = Policy(q=float(cfg["q"]), s=float(cfg["s"]))
    pe = stats.pair("embedding", "l2", "calibration-train")
    old_emb = geometric_budget(pe.nn.d_same, pe.nn.d_diff, pe.query_labels, ds.num_classes, policy).eps
    cal = splits.calibration
    x, y = cal.images, cal.labels
    g = folder.model("embedding")
    torch.set_num_threads(torch.get_num_threads())
    print(f"{cfg['dataset']}: {len(y)} calibration points, {torch.get_num_threads()} threads")
    t_ref = {}
    for norm in args.norms.split(","):
        ps = stats.pair("input", norm, "calibration-train")
        hi = geometric_budget(ps.nn.d_same, ps.nn.d_diff, ps.query_labels, ds.num_classes, policy).eps
        t = time.perf_counter()
        old = reference_semantic(g, x, y, old_emb, hi, norm, q=policy.q)
        t_ref[norm] = time.perf_counter() - t
        print(f"  reference {norm}: {t_ref[norm]:7.1f} s  budgets {np.round(old, 4).tolist()}")
    for name in args.judges.split(","):
        judge = folder.judge(name)
        for norm in args.norms.split(","):
            t = time.perf_counter()
            r = robustness_radii(judge, x, y, norm, iters=8, steps=10)
            dt = time.perf_counter() - t
            sb = semantic_budget(r, y, ds.num_classes, policy.q, policy.s)
            cert = "" if sb.certified is None else f" certified {np.round(sb.certified, 4).tolist()}"
            print(f"  judge {name} {norm}: {dt:7.1f} s  x{dt / t_ref[norm]:.2f} of the reference  empirical "
                  f"{np.round(sb.empirical, 4).tolist()}{cert}  ({r.checked} witnesses checked)")


if __name__ == "__main__":
    main()
