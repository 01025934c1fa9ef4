"""Check calib's statistics on the full MNIST test split (10k) against plain NumPy.

Quantities (DESIGN.md), pixels x/255, the whole 10k as one set, self excluded:
the exact class-pair mean L2 matrix, per-class minimum L-inf d_diff, per-class median L2 d_same.
The plain computations use explicit NumPy distance blocks (float64 L2 via the expansion per class
block; L-inf by broadcasting), not calib code. Prints the largest absolute differences (the
requirement is 1e-4) and the original analysis's observation for class 2.

    python bench/verify_mnist_stats.py --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from calib.data import load_dataset
from calib.stats import class_pair_stats, same_diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/data")
    args = ap.parse_args()
    ds = load_dataset("mnist", args.data_dir)
    x, y = ds.images.reshape(len(ds), -1), ds.labels
    k = 10

    t = time.perf_counter()
    m = class_pair_stats(x, y, "l2", k, mode="exact")
    sd_inf = same_diff(x, y, x, y, "linf", self_match=True)
    sd_l2 = same_diff(x, y, x, y, "l2", self_match=True)
    ours_min_inf = np.array([sd_inf.d_diff[y == c].min() for c in range(k)])
    ours_med_l2 = np.array([np.median(sd_l2.d_same[y == c]) for c in range(k)])
    t_ours = time.perf_counter() - t

    t = time.perf_counter()
    x64 = x.astype(np.float64)
    sq = (x64 * x64).sum(1)
    plain_mean = np.zeros((k, k))
    plain_med = np.zeros(k)
    for a in range(k):
        ia = np.flatnonzero(y == a)
        d = np.sqrt(np.maximum(sq[ia, None] + sq[None, :] - 2 * x64[ia] @ x64.T, 0))
        d[np.arange(len(ia)), ia] = np.nan  # self-pairs
        for b in range(k):
            plain_mean[a, b] = np.nanmean(d[:, y == b])
        same = np.where(y[None, :] == a, d, np.inf)
        same[np.isnan(same)] = np.inf
        plain_med[a] = np.median(same.min(1))
    plain_min_inf = np.full(k, np.inf)
    for s in range(0, len(x), 8):
        d = np.abs(x[s:s + 8, None, :] - x[None, :, :]).max(-1)  # float32, as stored
        for r, i in enumerate(range(s, min(s + 8, len(x)))):
            other = y != y[i]
            plain_min_inf[y[i]] = min(plain_min_inf[y[i]], float(d[r, other].min()))
    t_plain = time.perf_counter() - t

    print(f"calib {t_ours:.1f} s, plain NumPy {t_plain:.1f} s")
    print(f"class-pair mean L2 matrix:   max |calib - numpy| = {np.abs(m.mean - plain_mean).max():.3e}")
    print(f"per-class min L-inf d_diff:  max |calib - numpy| = {np.abs(ours_min_inf - plain_min_inf).max():.3e}")
    print(f"per-class median L2 d_same:  max |calib - numpy| = {np.abs(ours_med_l2 - plain_med).max():.3e}")
    print("per-class min L-inf d_diff x255:", np.round(ours_min_inf * 255, 3).tolist())
    print("per-class median L2 d_same:", np.round(ours_med_l2, 4).tolist())
    print(f"class 2: mean L2 to class 1 = {m.mean[2, 1]:.4f}, to other 2s = {m.mean[2, 2]:.4f} "
          f"-> closer to 1s: {m.mean[2, 1] < m.mean[2, 2]}")
    linf_same = np.array([np.median(sd_inf.d_same[y == c]) for c in range(k)])
    print("share of images whose nearest same-class L-inf neighbour is >= 0.86 away:",
          f"{np.mean(sd_inf.d_same >= 0.86 - 1e-6):.3f}; per-class median:", np.round(linf_same, 3).tolist())


if __name__ == "__main__":
    main()
