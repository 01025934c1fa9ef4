"""Which judge agrees with people? Every judge of a run, and variants built from its models, measured
on human-labelled sets (the development set by default).

Needs a run that kept the sets' sources out of training::

    calib run --dataset mnist --data-dir ../shared/data --name mnist-human \\
        --human ../shared/data/human/invariance_examples      # with [judge] also = [...] for more judges
    python bench/judges_vs_people.py --run reports/mnist-human

Variants (no threshold is fitted: every judge says "changed" at its own margin 0, as any user with one
such set would use it; the sets only *measure*):

* each judge the run has (its models), and the nearest-class judges with k = 5 references per class;
* ``pixels``: the nearest-class rule in input space itself (g = identity, k = 1 and 5): no training, and
  certified with L = 1;
* ensembles of every pair and triple of those, by ``any`` and ``majority``;
* each single judge with a threshold from clean data only: "changed" when the margin falls below the
  5 % quantile of its clean calibration margins in the source's class (a conformal-style test);
* with ``--augment``: g retrained on the run's training part with natural, class-preserving
  augmentation (affine, elastic, stroke width), as the ``knn`` judge;
* with ``--robust-eps E,...``: robust triplet embeddings at other radii (each a training).

Prints balanced accuracy and ROC AUC (95 % bootstrap intervals) per variant, best first; writes the
rows to ``RUN/validation/variants.json``.
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calib.audit.audit import judge_verdicts
from calib.errors import CalibError
from calib.human import agreement, check_sets, load_human_sets
from calib.io import to_jsonable, write_json
from calib.judges import EnsembleJudge, KnnJudge
from calib.judges.ensemble import clean_margins, scale_of
from calib.runfolder import open_run
from calib.train import TrainConfig, train_embedding
from calib.train.adversarial import AdversarialMix


def measure(judge, sets, indices, ds, seed=0, threshold=None):
    """Agreement over all sets; ``threshold`` (K,): say "changed" when the margin is below it (default: 0)."""
    ys, hs, ch, sc, lab = [], [], [], [], []
    for s in sets:
        y = ds.labels[indices[s.name]]
        v = judge_verdicts(judge, ds.images[indices[s.name]], s.x, y)
        changed = v["class_changed"] if threshold is None else -v["judge_score"] < threshold[y]
        ys.append(y), hs.append(s.human_label), ch.append(changed), sc.append(v["judge_score"])
        lab.append(v["judge_label"])
    return agreement(*(np.concatenate(a) for a in (ys, hs, ch, sc, lab)), seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="reports/mnist-human")
    ap.add_argument("--human", default="../shared/data/human/invariance_examples")
    ap.add_argument("--augment", action="store_true", help="also train g with natural augmentation")
    ap.add_argument("--robust-eps", default="", help="comma-separated radii of extra robust embeddings")
    args = ap.parse_args()
    ctx = open_run(args.run)
    sets = load_human_sets(args.human)
    indices = check_sets(ctx, sets)
    ds, tr, cal = ctx.dataset, ctx.splits.train, ctx.splits.calibration
    run_cfg = ctx.config
    judges = {}
    for name in ("classifier", "knn", "knn2", "robust", "lipschitz"):
        try:
            judges[name] = ctx.judge(name)
        except CalibError as exc:  # a judge the run has no model for is skipped
            print(f"  (no {name}: {exc})")
    for name in [n for n in ("knn", "robust", "lipschitz") if n in judges]:
        j = judges[name]
        judges[f"{name} k=5"] = KnnJudge(j.g, tr.images, tr.labels, ds.num_classes, k=5, lipschitz=j.lipschitz,
                                         name=f"{name}-k5", kind=j.kind)
    for k in (1, 5):
        judges[f"pixels k={k}"] = KnnJudge(nn.Flatten(), tr.images, tr.labels, ds.num_classes, k=k, lipschitz=1.0,
                                           name=f"pixels-k{k}", kind="pixels")
    epochs = int(run_cfg.get("embedding_epochs", 20))
    base = TrainConfig(epochs=epochs, seed=ctx.seed, progress=False)
    opts = {"dim": int(run_cfg.get("embedding_dim", 64)), "margin": float(run_cfg.get("margin", 0.2))}
    if args.augment:
        t = time.perf_counter()
        g = train_embedding(tr, TrainConfig(epochs=epochs, seed=ctx.seed, progress=False,
                                            augment=("affine", "elastic", "thickness")), test=ctx.splits.test,
                            **opts)
        print(f"  augmented g: P@1 {g.metrics['test_precision_at_1']:.4f} in {time.perf_counter() - t:.0f} s")
        judges["knn augmented"] = KnnJudge(g.model, tr.images, tr.labels, ds.num_classes, name="knn-aug")
    for e in [float(v) for v in args.robust_eps.split(",") if v]:
        t = time.perf_counter()
        g = train_embedding(tr, base, test=ctx.splits.test, adversarial=AdversarialMix(eps=e, attack="pgd", steps=3),
                            **opts)
        print(f"  robust g eps {e}: P@1 {g.metrics['test_precision_at_1']:.4f} in {time.perf_counter() - t:.0f} s")
        judges[f"robust eps={e}"] = KnnJudge(g.model, tr.images, tr.labels, ds.num_classes, name=f"robust-{e}",
                                             kind="robust")
    singles = list(judges.items())
    xc, yc = torch.from_numpy(cal.images), torch.from_numpy(cal.labels)
    margins = {n: clean_margins(j, xc, yc) for n, j in singles if " k=5" not in n}  # once per judge
    scales = {n: scale_of(m) for n, m in margins.items()}  # what calibrate_scales would set
    for r in (2, 3):
        for combo in itertools.combinations(list(scales), r):
            for rule in ("any", "majority") if r == 3 else ("any",):
                e = EnsembleJudge([judges[n] for n in combo], rule=rule, name="+".join(combo))
                e.scales = [scales[n] for n in combo]
                judges[f"{rule}({', '.join(combo)})"] = e
    # thresholds from clean data only: "changed" below the per-class 5 % quantile of clean calibration margins
    thresholds = {}
    for n, m in margins.items():
        m = m.double().numpy()
        thresholds[f"{n} (clean 5% margin)"] = (judges[n], np.array([np.quantile(m[cal.labels == c], 0.05)
                                                                     for c in range(ds.num_classes)]))
    rows = []
    for name, (j, thr) in {**{n: (j, None) for n, j in judges.items()}, **thresholds}.items():
        a = measure(j, sets, indices, ds, ctx.seed, threshold=thr)
        rows.append({"judge": name, "single": name in dict(singles), **{k: a[k] for k in (
            "n", "balanced_accuracy", "balanced_accuracy_ci95", "auc", "auc_ci95", "confusion")},
            "label_agreement": a["label_agreement"]["value"]})
    rows.sort(key=lambda r: -(r["balanced_accuracy"] or 0))
    print(f"{'judge':<48} {'bal. acc.':>9} {'95%':>15} {'AUC':>7} {'95%':>15}  TP FP TN FN  label agr.")
    for r in rows:
        c = r["confusion"]
        ci = r["balanced_accuracy_ci95"] or (np.nan, np.nan)
        ca = r["auc_ci95"] or (np.nan, np.nan)
        print(f"{r['judge']:<48} {r['balanced_accuracy']:9.3f} [{ci[0]:.3f}, {ci[1]:.3f}] {r['auc']:7.3f} "
              f"[{ca[0]:.3f}, {ca[1]:.3f}]  {c['tp']:2d} {c['fp']:2d} {c['tn']:2d} {c['fn']:2d}  "
              f"{r['label_agreement']:.3f}")
    write_json(Path(args.run) / "validation" / "variants.json", to_jsonable(rows))


if __name__ == "__main__":
    main()
