"""Robust triplet embedding: the adversarial-training mixture applied to the triplet loss.

The embedding that judges "the class changed" must itself be hard to move: a plain triplet embedding
can be moved across its class margin by imperceptible input changes, which collapses the semantic
budget (docs/design.md). Here g_r is trained with anchors that maximise the embedding shift inside an
input ball (:func:`calib.train.adversarial.mixed_triplet`; ``calib run --judge robust`` trains the
same model for the run), and both embeddings are measured as nearest-class judges exactly as the run
measures its judge: per class, the q-quantile of the robustness radius (per-point bisection of PGD
on the judge's margin, :mod:`calib.budgets.semantic`), and the share of points whose worst embedding
shift at a small probe radius stays within their embedding margin budget.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from calib.pipeline.config import default_epochs
from calib.experiments.context import StageContext, save_experiment
from calib.runfolder import artefacts as A
from calib.train import TrainConfig, train_embedding
from calib.train.adversarial import AdversarialMix

log = logging.getLogger(__name__)


def embedding_budget(g: torch.nn.Module, ctx: StageContext, policy) -> tuple[np.ndarray, np.ndarray]:
    """g's embedding margin budget per class (calibration vs train) and its coverage."""
    from calib.budgets.margin import margin_budget
    from calib.models.infer import forward_batched
    from calib.stats.neighbours import same_diff

    cal, tr = ctx.splits.calibration, ctx.splits.train
    ec, et = forward_batched(g, cal.images).numpy(), forward_batched(g, tr.images).numpy()
    nn_ = same_diff(ec, cal.labels, et, tr.labels, "l2")
    b = margin_budget(nn_.d_same, nn_.d_diff, cal.labels, ctx.dataset.num_classes, policy)
    return b.eps, b.coverage


def robust_embedding(ctx: StageContext, *, run: dict[str, Any] | None = None,
                     alpha: float = 0.5, eps: float = 0.1, norm: str = "linf",
                     attack: str = "pgd", steps: int = 3, epochs: int | None = None,
                     semantic_norms: tuple[str, ...] = ("linf",), probe_eps: float = 0.05,
                     progress: bool = False) -> dict[str, Any]:
    """Train g_r, measure both embeddings as nearest-class judges; saves ``experiments/robust-embedding.*``.
    ``run``: the run's options (default: as the folder recorded them)."""
    from calib.budgets import Policy
    from calib.budgets.invariance import invariance_radii, nearest_targets
    from calib.budgets.semantic import merge_invariance, robustness_radii, semantic_budget
    from calib.judges import KnnJudge
    from calib.perturb.objectives import EmbeddingShift
    from calib.perturb.pgd import pgd

    t0 = time.perf_counter()
    run = run if run is not None else ctx.config
    sem_cfg = run.get("semantic") or {"iters": 8, "steps": 10, "restarts": 1}
    k = int((run.get("judge") or {}).get("k", 1))
    policy = Policy(q=float(run.get("q", 0.05)), s=float(run.get("s", 1.0)), rule=run.get("rule", "quantile"))
    mix = AdversarialMix(alpha=alpha, eps=float(eps), norm=norm, attack=attack, steps=steps)
    epochs = epochs or int(run.get("embedding_epochs") or default_epochs(len(ctx.splits.train)))
    trained = train_embedding(ctx.splits.train, TrainConfig(epochs=epochs, seed=ctx.seed, device=ctx.device,
                                                            progress=progress),
                              test=ctx.splits.test, dim=int(run.get("embedding_dim", 64)),
                              margin=float(run.get("margin", 0.2)), miner=run.get("miner", "semihard"),
                              split_seed=ctx.seed, adversarial=mix)
    trained.save(ctx.file(A.experiment_model("robust-embedding")[1]))
    models = {"plain": ctx.model("embedding"), "robust": trained.model.eval()}
    names = list(ctx.dataset.class_names)
    cal, tr = ctx.splits.calibration, ctx.splits.train
    rule = run.get("semantic_rule", "invariance")
    targets = nearest_targets(cal.images, cal.labels, tr.images, tr.labels, ctx.dataset.num_classes)
    out: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {"labels": cal.labels}
    for mname, g in models.items():
        eps_emb, cov = embedding_budget(g, ctx, policy)
        row: dict[str, Any] = {"embedding_eps": eps_emb.tolist(), "embedding_coverage": cov.tolist()}
        if mname == "plain":
            row["metrics"] = ctx.model_config("embedding")["metrics"]
        else:
            row["metrics"] = trained.metrics
            row["training_seconds"] = trained.training["seconds"]
        xt = torch.from_numpy(cal.images)
        e = torch.full((len(cal),), float(probe_eps))
        shift = pgd(EmbeddingShift(g, xt), xt, e, norm, steps=int(sem_cfg["steps"]), seed=ctx.seed).loss.clamp_min(0)
        ratio = shift.numpy() / np.maximum(eps_emb[cal.labels], 1e-12)
        arrays[f"{mname}__shift_ratio"] = ratio
        row["probe"] = {"eps": probe_eps, "norm": norm,
                        "median_shift_over_budget": float(np.median(ratio)),
                        "share_within_budget": float((ratio <= 1).mean()),
                        "per_class_share_within_budget": {n: float((ratio[cal.labels == c] <= 1).mean())
                                                          for c, n in enumerate(names)}}
        judge = KnnJudge(g, tr.images, tr.labels, ctx.dataset.num_classes, k=k, name=mname, device=ctx.device)
        for sn in semantic_norms:
            b = ctx.table().budget("input", sn)
            hi = np.asarray(b.components.get("geometric", b.eps), float)
            radii = robustness_radii(judge, cal.images, cal.labels, sn, iters=int(sem_cfg["iters"]),
                                     steps=int(sem_cfg["steps"]), restarts=int(sem_cfg.get("restarts", 1)),
                                     seed=ctx.seed, device=ctx.device, show_progress=progress)
            inv = invariance_radii(judge, cal.images, cal.labels, tr.images, targets, sn,
                                   iters=int(sem_cfg.get("invariance_iters", 8)), device=ctx.device)
            radii = merge_invariance(radii, inv)  # measured as the run measures its judge
            sem = semantic_budget(radii, cal.labels, ctx.dataset.num_classes, policy.q, policy.s, rule=rule)
            row[f"semantic_{sn}"] = sem.empirical.tolist()
            row[f"geometric_{sn}"] = hi.tolist()
            arrays[f"{mname}__radius_{sn}"] = radii.empirical
        out[mname] = row
        log.info("%s embedding: semantic %s", mname, {sn: np.round(row[f"semantic_{sn}"], 4).tolist()
                                                       for sn in semantic_norms})
    summary = {"mix": mix.describe(), "epochs": epochs, "embeddings": out, "semantic": dict(sem_cfg),
               "semantic_norms": list(semantic_norms), "judge_k": k, "semantic_rule": rule,
               "policy": {"q": policy.q, "s": policy.s, "rule": policy.rule},
               "robust_weights_sha256": trained.weights_sha256, "seconds": time.perf_counter() - t0,
               "provenance": ctx.provenance()}
    save_experiment(ctx, "robust-embedding", summary, arrays)
    return summary
