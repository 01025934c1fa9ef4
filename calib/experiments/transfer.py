"""Transferability (Szegedy et al. 2014; Goodfellow et al. 2015).

f1 and f2 differ in architecture and hyper-parameters (f1: the run's CNN; f2: an MLP with another
learning rate, dropout and seed) and are trained on *disjoint halves* of the training part.
Adversarial examples are crafted on f1 only -- under the global eps, the per-class eps of the
run's table, and with embedding-projected PGD -- and the transfer rate is the share of f1's
successful examples (on test points both models classify correctly) that also fool f2, per class.
f1's and f2's held-out accuracies are the reference.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any


from calib.pipeline.config import default_epochs
from calib.data.split import stratified_indices
from calib.experiments.context import StageContext, per_class, save_experiment
from calib.models.infer import forward_batched
from calib.train import TrainConfig, train_classifier

log = logging.getLogger(__name__)


def transferability(ctx: StageContext, *, run: dict[str, Any] | None = None,
                    epochs: int | None = None, steps: int = 20, n: int | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Run the experiment on ``ctx``; saves ``experiments/transfer.*`` and returns the summary."""
    run = run if run is not None else ctx.config
    from calib.attacks.runner import run_attack
    from calib.data.split import stratified_subset
    from calib.pipeline.config import AttackConfig, attack_plan

    t0 = time.perf_counter()
    seed = ctx.seed
    train = ctx.splits.train
    half1, half2 = stratified_indices(train.labels, (0.5, 0.5), seed + 7)
    d1 = ctx.dataset.subset(train.indices[half1], "transfer-half1")
    d2 = ctx.dataset.subset(train.indices[half2], "transfer-half2")
    epochs = epochs or int(run.get("classifier_epochs") or default_epochs(len(ctx.splits.train)))
    common = {"device": ctx.device, "progress": progress}
    f1 = train_classifier(d1, TrainConfig(epochs=epochs, seed=seed + 11, **common), test=ctx.splits.test).model
    f2 = train_classifier(d2, TrainConfig(epochs=epochs, seed=seed + 13, lr=2e-3, **common), test=ctx.splits.test,
                          arch="mlp", dropout=0.5).model
    test = ctx.splits.test
    sel = stratified_subset(test.labels, n, seed)
    x, y = test.images[sel], test.labels[sel]
    ok1 = forward_batched(f1, x).argmax(1).numpy() == y
    ok2 = forward_batched(f2, x).argmax(1).numpy() == y
    both = ok1 & ok2
    names = list(ctx.dataset.class_names)
    acfg = AttackConfig(steps=steps)
    results, arrays = {}, {"labels": y, "indices": test.indices[sel], "f1_correct": ok1, "f2_correct": ok2}
    for item in [i for i in attack_plan(acfg) if i["spec"].attack != "invariance"]:  # (needs the run folder)
        spec = dataclasses.replace(item["spec"], seed=seed)
        emb = ctx.model("embedding") if spec.attack == "embedding-pgd" else None
        res = run_attack(spec, f1, emb, x, y, table=ctx.table() if spec.eps is None else None, device=ctx.device,
                         show_progress=progress)
        x_adv = res["arrays"]["x_adv"]
        s1 = forward_batched(f1, x_adv).argmax(1).numpy() != y
        s2 = forward_batched(f2, x_adv).argmax(1).numpy() != y
        counted = both & s1
        name = item["name"]
        arrays |= {f"{name}__f1_fooled": s1, f"{name}__f2_fooled": s2}
        results[name] = {
            "budget": item["budget"], "norm": spec.norm,
            "n_both_correct": int(both.sum()), "f1_success": float(s1[both].mean()) if both.any() else None,
            "transfer_rate": float(s2[counted].mean()) if counted.any() else None,
            "f2_fooled_overall": float(s2[both].mean()) if both.any() else None,
            "per_class_f1_success": per_class(s1, y, names, both),
            "per_class_transfer_rate": per_class(s2, y, names, counted),
            "mean_linf": float(res["arrays"]["dist_linf"].mean()),
        }
        log.info("transfer %s: f1 success %.3f, transfer %.3f", name, results[name]["f1_success"] or 0,
                 results[name]["transfer_rate"] or 0)
    summary = {
        "models": {"f1": {"arch": "default CNN", "lr": 1e-3, "dropout": 0.25, "seed": seed + 11,
                          "train_size": len(d1), "test_accuracy": float(ok1.mean()),
                          "per_class_accuracy": per_class(ok1, y, names)},
                   "f2": {"arch": "mlp", "lr": 2e-3, "dropout": 0.5, "seed": seed + 13, "train_size": len(d2),
                          "test_accuracy": float(ok2.mean()), "per_class_accuracy": per_class(ok2, y, names)},
                   "disjoint": bool(not set(d1.indices) & set(d2.indices)), "epochs": epochs},
        "attacks": results, "n": int(len(y)), "steps": steps, "seconds": time.perf_counter() - t0,
        "provenance": ctx.provenance()}
    save_experiment(ctx, "transfer", summary, arrays)
    return summary
