"""calib's invariance examples of the development set's sources, against what people said.

Tramèr et al. 2020 moved 100 MNIST test images toward an image of another class (L-inf 0.4, their
automated invariance attack) and people relabelled 37 of them. This script builds calib's invariance
examples of the *same* 100 sources at L-inf 0.3 and 0.4 (one target per source, the other-class
target whose path removes the least ink; the nearest training image of the run's training part, with
any target class or with Tramèr et al.'s hand-made class map) and reports how often the run's judge
relabels them, beside people's rate on Tramèr et al.'s images of these sources. It also reports the
judge's verdict on Tramèr et al.'s own images (what `calib validate` measures in full).

The run must keep the sources out of training (`calib run --human DATA/human/invariance_examples`):

    python bench/invariance_vs_people.py --run reports/mnist-human --human DATA/human/invariance_examples
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from calib.budgets.invariance import nearest_targets, path_point, relabel_curve
from calib.human import load_human_sets
from calib.runfolder import open_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--human", required=True, help="the Tramèr-layout folder (invariance_examples)")
    ap.add_argument("--judge", default=None, help="default: the run's")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    run = open_run(args.run)
    judge = run.judge(args.judge)
    sets = load_human_sets(args.human)
    train = run.split("train")
    out = {"run": args.run, "judge": judge.name, "sets": {}}
    for s in sets:
        idx = s.check(run.dataset)
        if np.isin(idx, train.indices).any():
            raise SystemExit(f"{s.name}: some sources are training images of {args.run}; use a run made with --human")
        x, y = run.dataset.images[idx], run.dataset.labels[idx]
        people = float(np.mean(s.human_label[s.human_label >= 0] != y[s.human_label >= 0]))
        t0 = time.perf_counter()
        targets = nearest_targets(x, y, train.images, train.labels, len(run.class_names))
        row = {"n": len(y), "eps": s.eps, "norm": s.norm, "people_relabel_rate_on_their_images": people}
        for cmap in ("any", "tramer"):
            doc = relabel_curve(judge, x, y, train.images, targets, "linf", run.class_names, grid=(0.3, 0.4),
                                class_map=cmap, device=run.device)
            row[f"judge_relabel_rate_calib_examples_{cmap}"] = dict(zip(doc["eps"], doc["relabel_rate"]["all"]))
            row["judge_correct_sources"] = doc["n"]["all"]
        with torch.no_grad():
            theirs = judge.changed(torch.from_numpy(s.x), torch.from_numpy(y)).numpy()
        row["judge_relabel_rate_on_their_images"] = float(theirs.mean())
        row["seconds"] = time.perf_counter() - t0
        # how far calib's examples are from theirs (same sources, same eps): mean |difference|
        if s.eps is not None:
            best = _least_ink(x, y, train.images, targets, float(s.eps))
            row["mean_abs_difference_to_their_images"] = float(np.abs(best - s.x).mean())
        out["sets"][s.name] = row
        print(f"{s.name}: {len(y)} sources ({row['judge_correct_sources']} the judge gets right); people relabelled "
              f"{people:.0%} of Tramèr et al.'s images; judge {judge.name} relabels "
              f"{row['judge_relabel_rate_on_their_images']:.0%} of those")
        for cmap in ("any", "tramer"):
            r = row[f"judge_relabel_rate_calib_examples_{cmap}"]
            print(f"  calib's one-target invariance examples (targets: {cmap}): judge relabels "
                  f"{r[0.3]:.0%} at L-inf 0.3, {r[0.4]:.0%} at 0.4")
        if "mean_abs_difference_to_their_images" in row:
            print(f"  mean |calib's example - theirs| at eps {s.eps}: {row['mean_abs_difference_to_their_images']:.4f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


def _least_ink(x: np.ndarray, y: np.ndarray, ref: np.ndarray, targets: np.ndarray, eps: float) -> np.ndarray:
    xt = torch.from_numpy(x)
    best, best_ink = xt.clone(), torch.full((len(y),), float("inf"))
    for c in range(targets.shape[1]):
        ok = torch.from_numpy(targets[:, c] >= 0)
        xe = path_point(xt, torch.from_numpy(ref[np.maximum(targets[:, c], 0)]), torch.full((len(y),), eps), "linf")
        ink = (xt - xe).clamp_min(0).flatten(1).sum(1).masked_fill(~ok, float("inf"))
        take = ink < best_ink
        best_ink, best[take] = torch.where(take, ink, best_ink), xe[take]
    return best.numpy()


if __name__ == "__main__":
    main()
