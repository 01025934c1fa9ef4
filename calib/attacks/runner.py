"""Run one attack over a dataset part in batches and summarise it per class (``calib attack``)."""
from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from calib.attacks.embedding_pgd import embedding_pgd
from calib.data.dataset import standard_layout
from calib.perturb.invariants import perturbation_norms
from calib.perturb.objectives import ClassifierLoss, EmbeddingShift
from calib.perturb.pgd import fgsm, pgd
from calib.errors import ConfigError
from calib.io import write_json, write_npz
from calib.progress import progress

ATTACKS = ("fgsm", "pgd", "embedding-pgd", "shift", "invariance")


@dataclass(frozen=True)
class AttackSpec:
    """Which attack, under which budget.

    Attributes:
        attack: ``fgsm``, ``pgd`` (classifier), ``embedding-pgd`` (classifier, embedding-ball
            projection), ``shift`` (embedding-shift PGD) or ``invariance`` (toward the least-ink image of
            another class, :mod:`calib.budgets.invariance`; needs the run's training part).
        norm: input norm (``linf``/``l2``); for ``embedding-pgd`` the norm of the optional ``cap``.
        eps: a global budget (input radius, or the embedding radius for ``embedding-pgd``), or
            ``None`` to take per-class budgets from the table.
        steps, restarts, rel_step: PGD settings (step = rel_step * eps; default 2.5 / steps).
        step_size: absolute input step for ``embedding-pgd``.
        method, iters, segment: embedding projection (``bisection``/``newton``), its iterations and
            the segment bisection searches (``previous`` iterate or ``clean`` x).
        cap: optional input cap for ``embedding-pgd``; loss: ``ce`` or ``margin``.
    """

    attack: str = "pgd"
    norm: str = "linf"
    eps: float | None = None
    steps: int = 10
    restarts: int = 1
    rel_step: float | None = None
    step_size: float = 0.02
    method: str = "bisection"
    iters: int = 1
    newton_iters: int = 1
    segment: str = "previous"
    cap: float | None = None
    loss: str = "ce"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ConfigError(f"unknown attack {self.attack!r}; choose one of {', '.join(ATTACKS)}")
        if self.eps is not None and not (np.isfinite(self.eps) and self.eps >= 0):
            raise ConfigError(f"eps must be a finite number >= 0; got {self.eps}")

    @property
    def models(self) -> tuple[str, ...]:
        """The run's models (``models/<stem>``) this attack needs."""
        return ("classifier", "embedding") if self.attack in ("embedding-pgd", "shift") else ("classifier",)

    @property
    def table_column(self) -> tuple[str, str]:
        """The (space, norm) of an epsilon table the attack takes its per-class budgets from (the
        embedding ball for embedding-projected PGD, else the input ball of ``norm``)."""
        return ("embedding", "l2") if self.attack == "embedding-pgd" else ("input", self.norm)


def run_attack(spec: AttackSpec, classifier: nn.Module, embedding: nn.Module | None, images: np.ndarray,
               labels: np.ndarray, *, table=None, eps: np.ndarray | None = None, batch_size: int = 500,
               device: str | torch.device = "cpu", show_progress: bool = True) -> dict[str, Any]:
    """Attack ``images``/``labels`` batch by batch; returns arrays (``x_adv``, ``success``, ``eps``,
    distances, predictions) and a JSON-ready ``summary`` with per-class rates.

    The budget: ``spec.eps`` (global), else ``eps`` (N,) per example, else the ``table``'s per-class
    column ``spec.table_column``. Every batch is seeded with ``spec.seed``, so a batch's result depends
    on its rows only (the sharded attack, :mod:`calib.pipeline.sharded`, relies on it)."""
    t0 = time.perf_counter()
    arrays, proj = attack_batches(spec, classifier, embedding, images, labels, table=table, eps=eps,
                                  batch_size=batch_size, device=device, show_progress=show_progress)
    k = int(labels.max()) + 1 if table is None else len(table.class_names)
    return summarise_attack(spec, images, labels, arrays, proj, time.perf_counter() - t0, k,
                            "global" if spec.eps is not None else "eps table")


def attack_batches(spec: AttackSpec, classifier: nn.Module, embedding: nn.Module | None, images: np.ndarray,
                   labels: np.ndarray, *, table=None, eps: np.ndarray | None = None, batch_size: int = 500,
                   device: str | torch.device = "cpu", show_progress: bool = True
                   ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The attack's per-example arrays (``x_adv`` (N, C, H, W), ``success``, ``loss``, ``eps``, ``pred``
    (N,)) and its embedding projection's counts summed over batches (empty for other attacks)."""
    if spec.eps is None and table is None and eps is None:
        raise ConfigError("give a global --eps or an eps table")
    if spec.attack == "invariance":
        raise ConfigError("the invariance attack moves toward reference images: run it through a run folder "
                          "(calib run; calib.pipeline.stages.attacks)")
    if spec.attack in ("embedding-pgd", "shift") and embedding is None:
        raise ConfigError(f"attack {spec.attack!r} needs the embedding model")
    if eps is not None and len(eps) != len(labels):
        raise ConfigError(f"got {len(eps)} budgets for {len(labels)} examples")
    n = len(labels)
    out = {k: [] for k in ("x_adv", "success", "loss", "eps", "pred")}
    proj: dict[str, float] = {}
    with progress(show_progress) as bar:
        # sample-steps, so a batch that takes minutes still moves the bar (and the plain log's ETA)
        per_sample = 1 if spec.attack == "fgsm" else spec.steps * spec.restarts
        task = bar.add_task(spec.attack, total=n * per_sample, status="")
        for s in range(0, n, batch_size):
            # standard strides, so a batch gives the same examples however its rows were sliced
            x = torch.from_numpy(standard_layout(images[s:s + batch_size])).to(device)
            y = torch.from_numpy(labels[s:s + batch_size]).to(device)
            budget = (spec.eps if spec.eps is not None else
                      np.asarray(eps[s:s + batch_size], np.float32) if eps is not None else table)
            step = functools.partial(bar.advance, task, len(y))
            if spec.attack == "fgsm":
                r = fgsm(ClassifierLoss(classifier, y, spec.loss), x, budget, spec.norm, labels=y, seed=spec.seed,
                         on_step=step)
            elif spec.attack == "pgd":
                r = pgd(ClassifierLoss(classifier, y, spec.loss), x, budget, spec.norm, steps=spec.steps,
                        restarts=spec.restarts, rel_step=spec.rel_step, labels=y, seed=spec.seed, on_step=step)
            elif spec.attack == "shift":
                r = pgd(EmbeddingShift(embedding, x), x, budget, spec.norm, steps=spec.steps, restarts=spec.restarts,
                        rel_step=spec.rel_step, labels=y, seed=spec.seed, on_step=step)
            else:
                r = embedding_pgd(classifier, embedding, x, y, budget, cap=spec.cap, cap_norm=spec.norm,
                                  method=spec.method, iters=spec.iters, newton_iters=spec.newton_iters,
                                  segment=spec.segment, steps=spec.steps,
                                  step_size=spec.step_size,
                                  loss=spec.loss, restarts=spec.restarts, seed=spec.seed, on_step=step)
                for key, v in r.info["projection"].items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        proj[key] = proj.get(key, 0) + v
            with torch.no_grad():
                pred = classifier(r.x_adv).argmax(1)
            for key, v in (("x_adv", r.x_adv), ("success", r.success), ("loss", r.loss), ("eps", r.eps),
                           ("pred", pred)):
                out[key].append(v.detach().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}, proj


def summarise_attack(spec: AttackSpec, images: np.ndarray, labels: np.ndarray, arrays: dict[str, np.ndarray],
                     proj: dict[str, float], seconds: float, num_classes: int, budget: str) -> dict[str, Any]:
    """The attack's result: ``arrays`` completed with the perturbation norms and labels, and a JSON-ready
    ``summary`` (overall and per-class success rates, mean budgets and distances, projection rates)."""
    arrays = dict(arrays)
    xa, xc = torch.from_numpy(arrays["x_adv"]), torch.from_numpy(images)
    for nm in ("linf", "l2", "l1"):
        arrays[f"dist_{nm}"] = perturbation_norms(xc, xa, nm).numpy()
    proj = dict(proj)
    if proj:
        proj["active_rate"] = proj.get("active", 0) / max(proj.get("candidates", 1), 1)
        proj["g_forward_per_candidate"] = proj.get("g_forward", 0) / max(proj.get("candidates", 1), 1)
    arrays["labels"] = labels
    per_class = {}
    for c in range(num_classes):
        m = labels == c
        if m.any():
            per_class[str(c)] = {"n": int(m.sum()), "success_rate": float(arrays["success"][m].mean()),
                                 "mean_eps": float(arrays["eps"][m].mean()),
                                 "mean_linf": float(arrays["dist_linf"][m].mean()),
                                 "mean_l2": float(arrays["dist_l2"][m].mean())}
    summary = {"spec": asdict(spec), "n": int(len(labels)), "success_rate": float(arrays["success"].mean()),
               "seconds": seconds, "per_class": per_class, "projection": proj or None, "budget": budget}
    return {"arrays": arrays, "summary": summary}


def save_attack(result: dict[str, Any], folder: str | os.PathLike[str], name: str, **provenance: Any) -> Path:
    """Write ``<name>.npz`` (arrays) and ``<name>.json`` (summary + provenance) atomically."""
    folder = Path(folder)
    write_npz(folder / f"{name}.npz", result["arrays"])
    write_json(folder / f"{name}.json", {**result["summary"], "provenance": provenance})
    return folder / f"{name}.json"


__all__ = ["AttackSpec", "run_attack", "attack_batches", "summarise_attack", "save_attack", "ATTACKS"]
