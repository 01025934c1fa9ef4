"""Benchmark and check: a whole run's sharded stages under torchrun against one process, with the same
models.

    calib --threads 1 run --dataset digits --out R          # one process, one thread (as each rank)
    torchrun --standalone --nproc-per-node=2 bench/sharded_run.py R R-sharded

Rank 0 copies R to R-sharded and forgets every cached stage but the trained models (training under
DistributedDataParallel gives other weights, so its stages' keys carry the world size; here the models are
R's, kept as they are). The pipeline then runs under torchrun with R's options: statistics, radii,
budgets, attacks, audits and the report are recomputed, the sharded ones over every rank. Prints each
stage's seconds in both runs, and for the epsilon table (every column, every class) and every array the
stages wrote (statistics, radii, attacks, audits) the largest difference from R's: 0 means identical.
Each rank uses one thread (torchrun's default on 2 cores), as the one-process run, since results depend
on the thread count in the last bits.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shutil
from pathlib import Path

import numpy as np


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for sub in ("stats.npz", "semantic", "attacks", "audits"):
        for f in sorted((folder / sub).glob("*.npz")) if (folder / sub).is_dir() else [folder / sub]:
            if f.exists():
                with np.load(f, allow_pickle=False) as z:
                    out |= {f"{f.relative_to(folder)}:{k}": z[k] for k in z.files}
    return out


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.dtype.kind in "fc":
        same_nan = np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(np.isinf(a), np.isinf(b))
        if not same_nan:
            return float("inf")
        fin = np.isfinite(a)
        return float(np.abs(a[fin].astype(np.float64) - b[fin]).max(initial=0.0)) + float(
            not np.array_equal(a[~fin], b[~fin]))
    return float((a != b).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a run folder written by one process (--threads 1)")
    ap.add_argument("out", type=Path, help="the copy the sharded stages are recomputed in (replaced)")
    a = ap.parse_args()
    import torch.distributed as dist

    from calib import distributed as D
    from calib.pipeline.run import run as run_pipeline
    from calib.pipeline.config import run_config_from_mapping
    from calib.pipeline.stages import models
    from calib.runfolder import artefacts as A

    w = D.init_from_env("cpu")
    if w.leader:
        if a.out.exists():
            shutil.rmtree(a.out)
        shutil.copytree(a.run, a.out)
        for f in (a.out / A.CACHE).glob("*.json"):
            if f.stem not in models.MODEL_STAGES:
                f.unlink()
        real = models.model_stages  # the run's own models, as trained by one process

        def kept(*args, **kwargs):
            return [dataclasses.replace(s, world_dependent=False) for s in real(*args, **kwargs)]

        importlib.import_module("calib.pipeline.run").model_stages = kept  # (where build_stages finds it)
    if w.parallel:
        dist.barrier()
    record = json.loads((a.run / A.RECORD).read_text())
    doc = {k: v for k, v in record["config"].items() if k != "threads"} | {"out": str(a.out), "progress": False}
    summary = run_pipeline(run_config_from_mapping(doc, str(a.run / A.RECORD)))
    if not w.leader:
        return
    one = json.loads((a.run / A.SUMMARY).read_text())
    print(f"world size {summary['world_size']} ({summary['backend']}) against one process; seconds per stage:")
    for name, st in summary["stages"].items():
        ref = one["stages"].get(name, {})
        tag = "kept" if st["reused"] else f"{st['seconds']:7.1f} s"
        print(f"  {name:32s} one process {ref.get('seconds', float('nan')):7.1f} s   sharded run {tag}")
    t1, t2 = (json.loads((f / A.EPS_TABLE).read_text())["budgets"] for f in (a.run, a.out))
    worst = max(float(np.abs(np.asarray(t1[c]["eps"]) - np.asarray(t2[c]["eps"])).max()) for c in t1)
    print(f"epsilon table: {len(t1)} columns x {len(t1[next(iter(t1))]['eps'])} classes, largest |difference| {worst:.3g}")
    for c in t1:
        print(f"  {c:14s} one process " + " ".join(f"{v:.4f}" for v in t1[c]["eps"]))
        print(f"  {'':14s} sharded     " + " ".join(f"{v:.4f}" for v in t2[c]["eps"]))
    x1, x2 = _arrays(a.run), _arrays(a.out)
    diffs = {k: _diff(x1[k], x2[k]) for k in x1 if k in x2}
    bad = {k: v for k, v in diffs.items() if v != 0}
    print(f"arrays: {len(diffs)} compared ({len(set(x1) ^ set(x2))} in one run only), {len(bad)} differ"
          + "".join(f"\n  {k}: {v:.3g}" for k, v in sorted(bad.items())[:20]))
    print(f"wall: one process {one['seconds']:.1f} s, sharded run {summary['seconds']:.1f} s (its models kept)")


if __name__ == "__main__":
    main()
