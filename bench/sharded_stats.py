"""Benchmark and check: a run's statistics recomputed over torchrun ranks (queries sharded by block, exact
class-pair matrices by piece), against the statistics one process wrote: equal, and how long each took.

    calib --threads 1 run --dataset mnist --data-dir DATA --out R      # one process, one thread
    torchrun --standalone --nproc-per-node=2 bench/sharded_stats.py R

Each rank uses one thread (torchrun's default), as the one-process run, since results depend on the
thread count in the last bits. Prints the seconds of both, the seconds of each part on the leader (the
neighbour searches, the exact and the sampled matrices) and, for every neighbour array and matrix, the
largest difference from R's (0: identical).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from calib import distributed as D
from calib.pipeline import sharded
from calib.pipeline.stages.stats import measure_stats, stats_config
from calib.pipeline.config import run_config_from_mapping
from calib.runfolder import artefacts as A, open_run
from calib.stats import Stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder written by one process (--threads 1)")
    args = ap.parse_args()
    w = D.init_from_env("cpu")
    torch.set_num_threads(1)
    if not w.leader:
        D.serve()
        D.shutdown()
        return
    try:
        run = open_run(args.run)
        doc = {k: v for k, v in run.record["config"].items() if k != "threads"}
        config = stats_config(run_config_from_mapping(doc, str(run.file(A.RECORD))))
        parts: dict[str, float] = {"searches": 0.0, "exact matrices": 0.0, "sampled matrices": 0.0}
        real_search, real_pieces = sharded.same_diff, sharded.matrix_pieces

        def timed_search(*a, **k):
            t = time.perf_counter()
            out = real_search(*a, **k)
            parts["searches"] += time.perf_counter() - t
            return out

        def timed_pieces(*a, **k):
            t = time.perf_counter()
            out = real_pieces(*a, **k)
            parts["exact matrices"] += time.perf_counter() - t
            return out

        sharded.same_diff, sharded.matrix_pieces = timed_search, timed_pieces
        t0 = time.perf_counter()
        mine = measure_stats(run, config, progress=False)
        seconds = time.perf_counter() - t0
        saved = Stats.load(run.file(A.STATS))
        one = json.loads(run.file(A.SUMMARY).read_text())["stages"]["stats"]["seconds"]
        print(f"world size {w.size} ({w.backend}): statistics {seconds:.1f} s; one process {one:.1f} s")
        parts["sampled matrices"] = seconds - parts["searches"] - parts["exact matrices"]
        print("  leader's wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
              + " (sampled matrices: the rest, with the embedding pass)")
        worst: dict[str, float] = {}
        for key, p in saved.pairs.items():
            q = mine.pairs[key]
            for field in ("d_same", "d_diff", "i_same", "i_diff"):
                a, b = getattr(p.nn, field), getattr(q.nn, field)
                worst["neighbours"] = max(worst.get("neighbours", 0.0),
                                          float(np.abs(a.astype(np.float64) - b).max(initial=0.0)))
        for key, m in saved.matrices.items():
            for name, arr in m.arrays().items():
                other = mine.matrices[key].arrays()[name]
                fin = np.isfinite(arr)
                d = float(np.abs(arr[fin] - other[fin]).max(initial=0.0)) + float(
                    not np.array_equal(np.isfinite(other), fin))
                worst[f"{key[2]} matrices"] = max(worst.get(f"{key[2]} matrices", 0.0), d)
        print(f"  largest |difference| from one process's: "
              + ", ".join(f"{k} {v:.3g}" for k, v in worst.items())
              + f" ({len(saved.pairs)} neighbour sets, {len(saved.matrices)} matrices)")
    finally:
        D.stop_followers()
        D.shutdown()


if __name__ == "__main__":
    main()
