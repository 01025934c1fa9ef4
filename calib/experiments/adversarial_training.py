"""Adversarial training with a global vs a per-class eps (Goodfellow et al. 2015).

Three classifiers on the run's training part, same architecture, seed and epochs:
``standard`` (alpha = 1), ``global`` (the mixture at the customary global eps) and ``per-class``
(the mixture at the run's table eps, per class). Each is scored on the test part: clean accuracy
and robust accuracy (PGD) under the global eps and under the per-class eps, per class.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from calib.pipeline.config import default_epochs
from calib.experiments.context import StageContext, per_class, save_experiment
from calib.models.infer import forward_batched
from calib.train import TrainConfig, train_classifier
from calib.train.adversarial import AdversarialMix

log = logging.getLogger(__name__)


def adversarial_training(ctx: StageContext, *, run: dict[str, Any] | None = None,
                         alpha: float = 0.5, attack: str = "fgsm", norm: str = "linf",
                         global_eps: float = 0.3, epochs: int | None = None, eval_steps: int = 20,
                         n: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Train and score the three classifiers; saves ``experiments/adversarial-training.*``.
    ``run``: the run's options (default: as the folder recorded them)."""
    import torch

    from calib.data.split import stratified_subset
    from calib.perturb.objectives import ClassifierLoss
    from calib.perturb.pgd import pgd

    run = run if run is not None else ctx.config

    t0 = time.perf_counter()
    names = list(ctx.dataset.class_names)
    table_eps = tuple(float(e) for e in ctx.table().eps("input", norm))
    epochs = epochs or int(run.get("classifier_epochs") or default_epochs(len(ctx.splits.train)))
    variants = {"standard": None,
                "global": AdversarialMix(alpha=alpha, eps=float(global_eps), norm=norm, attack=attack),
                "per-class": AdversarialMix(alpha=alpha, eps=table_eps, norm=norm, attack=attack)}
    test = ctx.splits.test
    sel = stratified_subset(test.labels, n, ctx.seed)
    x, y = test.images[sel], test.labels[sel]
    budgets = {"global": float(global_eps), "per-class": np.asarray(table_eps)[y]}
    results, arrays = {}, {"labels": y, "indices": test.indices[sel]}
    for vname, mix in variants.items():
        cfg = TrainConfig(epochs=epochs, seed=ctx.seed, device=ctx.device, progress=progress)
        trained = train_classifier(ctx.splits.train, cfg, test=None, adversarial=mix)
        f = trained.model
        clean = forward_batched(f, x).argmax(1).numpy() == y
        row: dict[str, Any] = {"mix": mix.describe() if mix else None, "training_seconds": trained.training["seconds"],
                               "clean_accuracy": float(clean.mean()), "per_class_clean": per_class(clean, y, names)}
        arrays[f"{vname}__clean"] = clean
        for bname, eps in budgets.items():
            robust = np.empty(len(y), bool)
            for s in range(0, len(y), 500):
                xb, yb = torch.from_numpy(x[s:s + 500]), torch.from_numpy(y[s:s + 500])
                e = eps if np.isscalar(eps) else torch.from_numpy(np.asarray(eps[s:s + 500], np.float32))
                r = pgd(ClassifierLoss(f, yb), xb, e, norm, steps=eval_steps, labels=yb, seed=ctx.seed)
                robust[s:s + 500] = ~r.success.numpy()
            arrays[f"{vname}__robust_{bname}"] = robust
            row[f"robust_accuracy_{bname}"] = float(robust.mean())
            row[f"per_class_robust_{bname}"] = per_class(robust, y, names)
        results[vname] = row
        log.info("adversarial training %s: clean %.3f, robust global %.3f, per-class %.3f", vname,
                 row["clean_accuracy"], row["robust_accuracy_global"], row["robust_accuracy_per-class"])
    summary = {"variants": results, "alpha": alpha, "attack": attack, "norm": norm, "global_eps": global_eps,
               "table_eps": list(table_eps), "epochs": epochs, "eval": {"attack": "pgd", "steps": eval_steps},
               "n": int(len(y)), "seconds": time.perf_counter() - t0, "provenance": ctx.provenance()}
    save_experiment(ctx, "adversarial-training", summary, arrays)
    return summary
