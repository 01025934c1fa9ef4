"""Units vs random directions (Szegedy et al. 2014, "Intriguing properties", section 3).

For single embedding coordinates e_i and for random unit directions v in embedding space, the
images x maximising <g(x), v> are collected. If single units were special, their top images would
share one class (or trait) more often than those of random directions. Measured: the label purity
of the top-k images (share of the most frequent class), per direction, and a gallery for the
reader's own judgement.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from calib.experiments.context import StageContext, save_experiment
from calib.models.infer import forward_batched


def top_images(embeddings: np.ndarray, directions: np.ndarray, top: int) -> np.ndarray:
    """(D, top) indices of the images with the largest projection on each direction (D, d)."""
    scores = embeddings @ directions.T  # (N, D)
    return np.argsort(-scores, axis=0, kind="stable")[:top].T


def purity(labels: np.ndarray) -> float:
    return float(np.bincount(labels).max() / len(labels))


def units_vs_random(ctx: StageContext, *,
                    n_units: int = 8, n_random: int = 8, top: int = 8,
                    progress: bool = False) -> dict[str, Any]:
    """Run the experiment on the test part; saves ``experiments/units.*`` (with the top images)."""
    t0 = time.perf_counter()
    test = ctx.splits.test
    e = forward_batched(ctx.model("embedding"), test.images).numpy().astype(np.float64)
    d = e.shape[1]
    rng = np.random.default_rng(ctx.seed)
    units = np.argsort(-e.var(0), kind="stable")[:n_units]  # the most active coordinates
    dirs_u = np.eye(d)[units]
    dirs_r = rng.standard_normal((n_random, d))
    dirs_r /= np.linalg.norm(dirs_r, axis=1, keepdims=True)
    tops_u, tops_r = top_images(e, dirs_u, top), top_images(e, dirs_r, top)
    y = test.labels
    pu = np.array([purity(y[t]) for t in tops_u])
    pr = np.array([purity(y[t]) for t in tops_r])
    # a null reference: purity of random sets of `top` test images
    null = np.array([purity(y[rng.choice(len(y), top, replace=False)]) for _ in range(200)])
    summary = {"top": top, "units": units.tolist(), "unit_purity": pu.tolist(), "random_purity": pr.tolist(),
               "mean_unit_purity": float(pu.mean()), "mean_random_purity": float(pr.mean()),
               "null_purity_mean": float(null.mean()),
               "unit_top_labels": y[tops_u].tolist(), "random_top_labels": y[tops_r].tolist(),
               "seconds": time.perf_counter() - t0, "provenance": ctx.provenance()}
    arrays = {"unit_images": test.images[tops_u], "random_images": test.images[tops_r],
              "unit_indices": test.indices[tops_u], "random_indices": test.indices[tops_r],
              "unit_labels": y[tops_u], "random_labels": y[tops_r], "random_directions": dirs_r,
              "unit_purity": pu, "random_purity": pr}
    save_experiment(ctx, "units", summary, arrays)
    return summary
