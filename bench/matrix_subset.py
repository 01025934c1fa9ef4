"""How far exact class-pair matrices over a stratified subset are from those over the whole set.

``calib stats`` computes the exact matrices over at most ``exact_max_points`` points (10k): above
that, over a seeded stratified subset. This measures the subset's error where the whole set is
still affordable: MNIST's 10k with subsets of 10k/7 (Fashion-MNIST's 10k of 70k is the same
ratio) and larger, for every input norm: the largest relative error of a class-pair mean, and of
the 5 % / 50 % quantiles, over all K x K pairs, for several seeds.

    python bench/matrix_subset.py --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from calib.data import load_dataset
from calib.data.split import stratified_subset
from calib.stats.pairwise import class_pair_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--subsets", default="1429,3000")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    ds = load_dataset(args.dataset, args.data_dir)
    x, y, k = ds.images.reshape(len(ds), -1), ds.labels, ds.num_classes
    print(f"{args.dataset}: {len(ds)} points; exact matrices over all of them vs over stratified subsets")
    for norm in ("l2", "linf", "l1"):
        t = time.perf_counter()
        full = class_pair_stats(x, y, norm, k, mode="exact")
        t_full = time.perf_counter() - t
        print(f"  {norm}: whole set {t_full:.1f} s")
        for size in (int(s) for s in args.subsets.split(",")):
            errs = {"mean": [], "q05": [], "q50": []}
            for seed in range(args.seeds):
                sel = stratified_subset(y, size, seed)
                sub = class_pair_stats(x[sel], y[sel], norm, k, mode="exact")
                errs["mean"].append(np.nanmax(np.abs(sub.mean / full.mean - 1)))
                errs["q05"].append(np.nanmax(np.abs(sub.quantiles[0] / full.quantiles[0] - 1)))
                errs["q50"].append(np.nanmax(np.abs(sub.quantiles[2] / full.quantiles[2] - 1)))
            print(f"    subset {size:>5} ({size / len(ds):.0%}): largest relative error over {k}x{k} pairs and "
                  f"{args.seeds} seeds: mean {max(errs['mean']):.2%}, 5 % quantile {max(errs['q05']):.2%}, "
                  f"median {max(errs['q50']):.2%}")


if __name__ == "__main__":
    main()
