"""A judge's semantic budgets on an existing run, without the pipeline (no retraining, nothing written
to the run): the invariance and adversarial radii at the calibration points exactly as the semantic
stage measures them (:func:`calib.pipeline.stages.semantic.measure_radii`), then the per-class budget
``Q_q`` of the invariance radius over the points the judge gets right, with its 95 % interval
(:func:`calib.budgets.semantic.semantic_budget`), and the relabel rates at L-inf 0.3 and 0.4.

    python bench/judge_budgets.py --run RUN --judge fitted --norm linf --threads 2 [--out FILE.json]

Prints one line per class and the time taken; the numbers are the semantic budget before the geometric
cap of the epsilon table (which on MNIST L-inf never binds).
"""
from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--norm", default="linf", choices=("linf", "l2"))
    ap.add_argument("--q", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    from dataclasses import replace

    from calib.budgets.semantic import semantic_budget
    from calib.pipeline.config import SemanticConfig
    from calib.pipeline.stages.semantic import measure_radii
    from calib.runfolder import open_run

    folder = open_run(a.run)
    jc = folder.judge_config()
    judge = folder.judge(a.judge, replace(jc.identity(a.judge), name=a.judge))
    t0 = time.perf_counter()
    radii, idx, y, curves = measure_radii(folder, judge, "calibration-train", SemanticConfig(norms=(a.norm,)),
                                          seed=folder.seed, progress=False, judge_config=jc.identity(a.judge))
    seconds = time.perf_counter() - t0
    r = radii[a.norm]
    k = len(folder.class_names)
    inv = semantic_budget(r, y, k, q=a.q, rule="invariance")
    adv = semantic_budget(r, y, k, q=a.q, rule="adversarial")
    rates = dict(zip(curves[a.norm]["eps"], curves[a.norm]["relabel_rate"]["all"]))
    doc = {"judge": a.judge, "norm": a.norm, "q": a.q, "threads": a.threads, "seconds": seconds, "n": int(len(y)),
           "invariance_budget": inv.empirical.tolist(), "invariance_interval": np.asarray(inv.empirical_interval).tolist(),
           "adversarial_budget": adv.empirical.tolist(), "clean_wrong": inv.clean_error.tolist(),
           "relabel_rate": {str(e): v for e, v in rates.items()}}
    for c, name in enumerate(folder.class_names):
        lo, hi = np.asarray(inv.empirical_interval)[c]
        print(f"class {name}: invariance budget {inv.empirical[c]:.3f} [{lo:.3f}, {hi:.3f}]  "
              f"adversarial Q{a.q:g} {adv.empirical[c]:.3f}  judge wrong on {inv.clean_error[c]:.3f} of clean points")
    print(f"relabel rate (one least-ink target): " + ", ".join(f"{e}: {v:.3f}" for e, v in rates.items()
                                                              if float(e) in (0.3, 0.4)))
    print(f"{len(y)} calibration points, {seconds:.0f} s on {a.threads} thread(s)")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(doc, fh, indent=2)


if __name__ == "__main__":
    main()
