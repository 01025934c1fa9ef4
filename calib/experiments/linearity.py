"""Linearity and dimension (Goodfellow et al. 2015, the "eps * m * n" argument).

For a linear score ``w^T x`` and ``eta = eps * sign(w)``, the score moves by
``w^T eta = eps * ||w||_1 = eps * m * n`` (m: mean |w_i|, n: input dimensions): many small
changes add up, and the same eps does more the more dimensions there are. Measured on the run's
images resized to several resolutions (n = C * r * r; area down-sampling, bilinear up-sampling),
with a multinomial linear classifier (softmax regression) trained per resolution:

* ``predicted`` = eps * m * n for each class's weight vector (mean over classes);
* ``measured_unclipped`` = the score change of the true class for ``x - eps sign(w_y)``, which must
  equal the prediction up to float rounding (a check of the argument, not an estimate);
* ``measured_clipped`` = the same with x' clipped to [0,1] (dark pixels cannot get darker);
* ``fgsm_success`` = FGSM's success at eps on the test part (the library attack, clipped).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from calib.experiments.context import StageContext, save_experiment

log = logging.getLogger(__name__)


def resize(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, C, H, W) in [0,1] -> (N, C, size, size), area down-sampling or bilinear up-sampling."""
    x = torch.from_numpy(images)
    if size == x.shape[-1]:
        return x.clone()
    mode = "area" if size < x.shape[-1] else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=(size, size), mode=mode, **kw).clamp(0, 1)


def train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, epochs: int = 60, seed: int = 0,
                 weight_decay: float = 1e-4) -> nn.Sequential:
    """Softmax regression ``Flatten -> Linear`` trained with Adam (full-batch, seeded)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), num_classes))
    opt = torch.optim.Adam(model.parameters(), lr=0.05 / max(1.0, (x[0].numel() / 64) ** 0.5),
                           weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def linearity(ctx: StageContext, *,
              sizes: tuple[int, ...] | None = None, eps: float = 0.05, epochs: int = 60,
              progress: bool = False) -> dict[str, Any]:
    """Run the experiment; saves ``experiments/linearity.*``."""
    from calib.perturb.objectives import ClassifierLoss
    from calib.perturb.pgd import fgsm

    t0 = time.perf_counter()
    side = ctx.dataset.image_shape[-1]
    sizes = tuple(sizes or sorted({max(2, side // 2), side, side * 2, side * 4} if side < 16
                                  else {side // 4, side // 2, side, side * 2}))
    tr, te = ctx.splits.train, ctx.splits.test
    k = ctx.dataset.num_classes
    rows = []
    for r in sizes:
        xtr, xte = resize(tr.images, r), resize(te.images, r)
        ytr, yte = torch.from_numpy(tr.labels), torch.from_numpy(te.labels)
        model = train_linear(xtr, ytr, k, epochs=epochs, seed=ctx.seed)
        w = model[1].weight.detach().double()  # (K, n)
        n = w.shape[1]
        m = w.abs().mean(1)  # (K,)
        predicted = eps * m * n  # per class
        with torch.no_grad():
            wy = w[yte]  # (N, n)
            flat = xte.flatten(1).double()
            eta = -eps * torch.sign(wy)
            unclipped = ((flat + eta) * wy).sum(1) - (flat * wy).sum(1)
            clipped = ((flat + eta).clamp(0, 1) * wy).sum(1) - (flat * wy).sum(1)
            acc = float((model(xte).argmax(1) == yte).float().mean())
        res = fgsm(ClassifierLoss(model, yte), xte, eps, "linf", labels=yte)
        rows.append({"size": r, "n": n, "clean_accuracy": acc, "mean_abs_w": float(m.mean()),
                     "predicted": float(predicted.mean()),
                     "measured_unclipped": float((-unclipped).mean()),
                     "measured_clipped": float((-clipped).mean()),
                     "max_rel_error_unclipped": float(((-unclipped - predicted[yte]).abs() / predicted[yte]).max()),
                     "fgsm_success": float(res.success.float().mean())})
        log.info("linearity n=%d: predicted %.3f, clipped %.3f, FGSM %.3f", n, rows[-1]["predicted"],
                 rows[-1]["measured_clipped"], rows[-1]["fgsm_success"])
    summary = {"eps": eps, "epochs": epochs, "rows": rows, "seconds": time.perf_counter() - t0,
               "provenance": ctx.provenance()}
    arrays = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    save_experiment(ctx, "linearity", summary, arrays)
    return summary
