"""Benchmark: the 10k x 10k MNIST nearest-neighbour job in L-inf and L1, calib's exact path vs faiss.

For every image of the real MNIST test split (10,000), find its nearest other image (self
excluded) under L-inf and L1. faiss (``IndexFlat`` with ``METRIC_Linf`` / ``METRIC_L1``, k=2, self
dropped) is the reference, measured in the same run; the script checks the distances agree (L-inf:
bit-identical in float32; L1: to float32 rounding) and prints the speed ratio.

    python bench/linf_nn.py --data-dir ../shared/data [--queries 10000]
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from calib.data import load_dataset
from calib.stats import nearest


def faiss_nn(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    import faiss

    index = faiss.IndexFlat(x.shape[1], {"linf": faiss.METRIC_Linf, "l1": faiss.METRIC_L1}[metric])
    index.add(x)
    d, i = index.search(q, 2)
    own = i[:, 0] == np.arange(len(q))
    return np.where(own, d[:, 1], d[:, 0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--queries", type=int, default=10000, help="queries (all 10k = the full job)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    ds = load_dataset("mnist", args.data_dir)
    x = ds.images.reshape(len(ds), -1)
    q = x[: args.queries]
    nearest(x[:50], x[:500], "linf", exclude=np.arange(50))  # compile the numba kernels outside the timing
    nearest(x[:50], x[:500], "l1", exclude=np.arange(50), image_shape=ds.image_shape)
    print(f"MNIST test split: {len(q)} queries x {len(x)} references, d={x.shape[1]}, self excluded")
    for metric in ("linf", "l1"):
        t = time.perf_counter()
        ours, _ = nearest(q, x, metric, exclude=np.arange(len(q)), image_shape=ds.image_shape)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        ref = faiss_nn(x, q, metric)
        t_faiss = time.perf_counter() - t
        if metric == "linf":
            same = bool(np.array_equal(ours.astype(np.float32), ref))
            agree = f"bit-identical float32 distances: {same}"
        else:
            err = float(np.max(np.abs(ours - ref) / np.maximum(ref, 1e-12)))
            agree = f"max relative difference {err:.2e} (faiss sums in float32)"
        print(f"{metric:>4}: calib {t_ours:7.2f} s | faiss METRIC_{metric.capitalize()} {t_faiss:7.2f} s | "
              f"speed-up x{t_faiss / t_ours:5.1f} | {agree}")


if __name__ == "__main__":
    main()
