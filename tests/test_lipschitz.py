"""The certified-Lipschitz embedding: the computed constant is checked, not assumed.

* it equals the product of the layers' spectral norms (NumPy SVD) and bounds the Jacobian's
  spectral norm measured on real digits;
* no perturbation found by random search, random directions or PGD on the embedding shift ever
  moves g by more than ``L * ||delta||_2`` (hypothesis);
* no PGD attack on the judge's margin changes its label inside the certified radius.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from calib.perturb.invariants import perturbation_norms
from calib.perturb.objectives import EmbeddingShift
from calib.perturb.pgd import pgd
from calib.budgets.semantic import JudgeObjective
from calib.errors import ArtefactError
from calib.judges import KnnJudge
from calib.models import load_model
from calib.models.lipschitz import LipschitzEmbedding, MaxMin, lipschitz_constant
from calib.train import TrainConfig, train_embedding

TOL = 1e-5


@pytest.fixture(scope="module")
def trained(digits_splits):
    return train_embedding(digits_splits.train, TrainConfig(epochs=4, seed=0, progress=False), arch="lipschitz-mlp",
                           width=64, depth=2, dim=16, margin=1.0, test=digits_splits.test)


@pytest.fixture(scope="module")
def judge(trained, digits_splits):
    tr = digits_splits.train
    return KnnJudge(trained.model, tr.images, tr.labels, 10, lipschitz=lipschitz_constant(trained.model),
                    name="lipschitz", kind="lipschitz")


def test_constant_is_the_product_of_spectral_norms(trained):
    g = trained.model
    weights = [m.weight.detach().double().numpy() for m in g.modules() if isinstance(m, torch.nn.Linear)]
    plain = float(np.prod([np.linalg.svd(w, compute_uv=False)[0] for w in weights]))
    assert lipschitz_constant(g) == pytest.approx(plain, rel=1e-12)
    assert trained.metrics["lipschitz_l2"] == pytest.approx(plain, rel=1e-12)
    assert abs(plain - 1.0) < 1e-3  # orthogonal training keeps every layer at spectral norm 1
    assert trained.metrics["test_precision_at_1"] > 0.8  # and it still embeds digits usefully


def test_constant_bounds_the_jacobian_on_real_inputs(trained, digits_splits):
    g = trained.model
    L = lipschitz_constant(g)
    for x in torch.from_numpy(digits_splits.test.images[:25]):
        jac = torch.autograd.functional.jacobian(lambda v: g(v.view(1, *x.shape))[0], x.double().flatten().float())
        sigma = float(torch.linalg.matrix_norm(jac.double(), ord=2))
        assert sigma <= L * (1 + TOL)


def test_maxmin_is_one_lipschitz():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 8, generator=gen), torch.randn(500, 8, generator=gen)
    ratio = torch.linalg.vector_norm(MaxMin()(a) - MaxMin()(b), dim=1) / torch.linalg.vector_norm(a - b, dim=1)
    assert float(ratio.max()) <= 1 + 1e-6


def test_artefact_roundtrip_keeps_the_constant(trained, tmp_path):
    trained.save(tmp_path / "lip")
    model, cfg = load_model(tmp_path / "lip")
    assert isinstance(model, LipschitzEmbedding) and cfg["spec"]["arch"] == "lipschitz-mlp"
    assert lipschitz_constant(model) == lipschitz_constant(trained.model)


def test_unknown_layers_are_refused():
    with pytest.raises(ArtefactError, match="cannot bound"):
        lipschitz_constant(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Tanh()))


def _check(g, x, x2, L):
    shift = torch.linalg.vector_norm((g(x2) - g(x)).double(), dim=1)
    d2 = perturbation_norms(x, x2, "l2")
    assert (shift <= L * d2 * (1 + TOL) + 1e-6).all(), float((shift / d2).max())
    return int(len(x))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 16), scale=st.floats(1e-3, 3.0), start=st.integers(0, 200))
def test_random_perturbations_never_beat_the_bound(trained, digits_splits, seed, scale, start):
    g = trained.model
    L = lipschitz_constant(g)
    x = torch.from_numpy(digits_splits.test.images[start:start + 16])
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(x.shape, generator=gen)
    d = d / torch.linalg.vector_norm(d.flatten(1), dim=1).view(-1, 1, 1, 1) * scale
    with torch.no_grad():
        _check(g, x, (x + d).clamp(0, 1), L)
        _check(g, x, x + d, L)  # outside the box too: the bound holds everywhere


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 16), eps=st.floats(0.01, 2.0), norm=st.sampled_from(["l2", "linf"]))
def test_pgd_on_the_shift_never_beats_the_bound(trained, digits_splits, seed, eps, norm):
    g = trained.model
    L = lipschitz_constant(g)
    x = torch.from_numpy(digits_splits.calibration.images[:32])
    res = pgd(EmbeddingShift(g, x), x, eps, norm, steps=15, seed=seed)
    with torch.no_grad():
        _check(g, x, res.x_adv, L)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 16), frac=st.floats(0.5, 0.999), norm=st.sampled_from(["l2", "linf"]))
def test_no_attack_changes_the_label_inside_the_certified_radius(judge, digits_splits, seed, frac, norm):
    cal = digits_splits.calibration
    x, y = torch.from_numpy(cal.images[:64]), torch.from_numpy(cal.labels[:64])
    r = judge.certified_radius(x, y, norm)
    keep = r > 0
    x, y, r = x[keep], y[keep], r[keep]
    res = pgd(JudgeObjective(judge, y), x, (frac * r).float(), norm, steps=20, restarts=2, seed=seed)
    assert not res.success.any()
    assert not judge.changed(res.x_adv, y).any()
