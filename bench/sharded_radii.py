"""Benchmark and check: a run's semantic radii recomputed sharded by point over torchrun ranks, against
the radii one process wrote (same models, same judge): equal, and how long each took.

    calib --threads 1 run --dataset digits --out R          # one process, one thread (as each rank)
    torchrun --standalone --nproc-per-node=2 bench/sharded_radii.py R

Each rank uses one thread (torchrun's default), as the one-process run above, since results depend on
the thread count in the last bits. Prints, per norm, the largest difference of the invariance and
adversarial radii and witnesses, and the seconds of both.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from calib import distributed as D
from calib.budgets.semantic import load_radii
from calib.pipeline import sharded  # noqa: F401 - registers the tasks
from calib.pipeline.config import SemanticConfig
from calib.pipeline.stages.semantic import measure_radii
from calib.runfolder import artefacts as A, open_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder written by one process")
    args = ap.parse_args()
    w = D.init_from_env("cpu")
    torch.set_num_threads(1)
    if not w.leader:
        D.serve()
        D.shutdown()
        return
    try:
        run = open_run(args.run)
        cfg = run.record["config"]
        sem = SemanticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["semantic"].items()})
        name = run.table().semantic_judge
        judge = run.judge(name)
        saved, doc, idx, _ = load_radii(run.file(A.SEMANTIC), name)
        t0 = time.perf_counter()
        radii, idx2, y, _ = measure_radii(run, judge, cfg.get("pair", "calibration-train"), sem, seed=cfg["seed"],
                                          progress=False, judge_config=run.judge_config())
        seconds = time.perf_counter() - t0
        assert np.array_equal(idx, idx2)
        print(f"world size {w.size} ({w.backend}), {len(y)} points, judge {name}: {seconds:.1f} s sharded; "
              f"one process: {sum(d.get('seconds', 0) + d['invariance']['seconds'] for d in doc['norms'].values()):.1f} s")
        for norm, r in radii.items():
            s = saved[norm]
            diffs = {"adversarial radius": np.nanmax(np.abs(np.nan_to_num(r.empirical - s.empirical, posinf=0))),
                     "invariance radius": np.nanmax(np.abs(np.nan_to_num(r.invariance - s.invariance, posinf=0))),
                     "adversarial witnesses": np.abs(r.witnesses - s.witnesses).max(),
                     "invariance witnesses": np.abs(r.invariance_witnesses - s.invariance_witnesses).max()}
            same = all(v == 0 for v in diffs.values()) and np.array_equal(np.isinf(r.empirical), np.isinf(s.empirical))
            print(f"  {norm}: " + ", ".join(f"{k} max |diff| {v:.3g}" for k, v in diffs.items())
                  + f"  -> {'identical' if same else 'DIFFERENT'}")
    finally:
        D.stop_followers()
        D.shutdown()


if __name__ == "__main__":
    main()
