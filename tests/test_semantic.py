"""Semantic budgets: bisection on the radius against embedding-shift PGD, on real digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calib.budgets import final_table, geometric_table
from calib.budgets.semantic import semantic_budget, worst_shift
from calib.stats import StatsConfig, compute_stats
from calib.train import TrainConfig, embed, train_embedding


@pytest.fixture(scope="module")
def setup(digits, digits_splits):
    g = train_embedding(digits_splits.train, TrainConfig(epochs=5, seed=0, progress=False), dim=16).model
    stats = compute_stats(digits, digits_splits, StatsConfig(input_norms=("linf", "l2"), matrix_modes=("sampled",)),
                          embeddings=embed(g, digits.images), show_progress=False)
    return g, stats, geometric_table(stats)


def test_semantic_budget_is_the_largest_radius_with_coverage(setup, digits):
    g, stats, geo = setup
    ps = stats.pair("input", "linf", "calibration-train")
    x, y = digits.images[ps.query_indices], ps.query_labels
    eps_emb, hi = geo.eps("embedding", "l2"), geo.eps("input", "linf")
    sem = semantic_budget(g, x, y, eps_emb, hi, "linf", q=0.1, iters=5, steps=5)
    assert (sem.eps <= hi + 1e-12).all() and (sem.eps >= 0).all()
    assert (sem.coverage >= 0.9 - 1e-12).all()  # the returned radius always meets the target
    # and one bisection bracket above it does not (unless censored at the geometric budget)
    for c in np.flatnonzero(~sem.censored)[:3]:
        above = sem.eps.copy()
        above[c] = min(sem.eps[c] + hi[c] / 2 ** 5, hi[c])
        e = torch.from_numpy(above[y].astype(np.float32))
        shift = worst_shift(g, torch.from_numpy(x), e, "linf", steps=5, restarts=1, seed=0).numpy()
        assert np.mean(shift[y == c] <= eps_emb[c]) < 0.9 + 1e-12


def test_final_table_is_min_of_geometric_and_semantic(setup, digits):
    g, stats, geo = setup
    fin = final_table(geo, stats, g, digits.images, ("linf", "l2"), q=0.1, iters=4, steps=5)
    assert fin.policy["method"] == "final"
    for norm in ("linf", "l2"):
        b = fin.budgets[f"input/{norm}"]
        c = b["components"]
        np.testing.assert_allclose(b["eps"], np.minimum(c["geometric"], c["semantic"]))
        assert all(0 <= v <= 1 for v in b["coverage"])
    assert fin.to_dict()["budgets"]["embedding/l2"] == geo.to_dict()["budgets"]["embedding/l2"]


def test_zero_upper_bound_gives_zero(setup, digits):
    g, stats, geo = setup
    ps = stats.pair("input", "l2", "calibration-train")
    sem = semantic_budget(g, digits.images[ps.query_indices], ps.query_labels, geo.eps("embedding", "l2"),
                          np.zeros(10), "l2", iters=2, steps=2)
    assert (sem.eps == 0).all() and sem.censored.all()
