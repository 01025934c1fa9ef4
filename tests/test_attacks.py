"""Attacks: invariants property-tested on random small models; checked against torchattacks on real data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from calib.attacks import (ClassifierLoss, ConstraintViolation, EmbeddingShift, embedding_pgd, fgsm,
                           perturbation_norms, pgd, resolve_eps)
from calib.attacks.probe import class_mixing_probe
from calib.errors import ConfigError


class TinyNet(nn.Module):
    def __init__(self, seed: int, out: int = 3, nan: bool = False, normalize: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, out)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5
        self.nan, self.normalize = nan, normalize
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = self.drop(torch.relu(self.conv(x))).flatten(1)
        if self.nan:
            h = torch.sqrt(h - 10.0)  # NaN values and NaN gradients everywhere
        z = self.fc(h)
        return nn.functional.normalize(z, dim=1) if self.normalize else z


inputs = st.tuples(st.integers(1, 6), st.integers(0, 10_000))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=inputs, norm=st.sampled_from(["linf", "l2"]), steps=st.integers(1, 4), rs=st.booleans(),
       restarts=st.integers(1, 2), nan=st.booleans(), loss=st.sampled_from(["ce", "margin"]),
       zero=st.booleans())
def test_pgd_outputs_are_always_feasible(shape, norm, steps, rs, restarts, nan, loss, zero):
    n, seed = shape
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((n, 1, 6, 6), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 3, n))
    eps = torch.from_numpy(rng.uniform(0, 1.5 if norm == "l2" else 0.5, n).astype(np.float32))
    if zero:
        eps[0] = 0.0
    model = TinyNet(seed, nan=nan)
    calls = []
    r = pgd(ClassifierLoss(model, y, loss), x, eps, norm, steps=steps, random_start=rs, restarts=restarts,
            seed=seed, on_step=lambda: calls.append(1))
    assert len(calls) == steps * restarts  # progress hears of every step
    assert 0 <= r.x_adv.min() and r.x_adv.max() <= 1
    assert (perturbation_norms(x, r.x_adv, norm) <= eps.double() + 1e-6).all()
    if zero:
        assert torch.equal(r.x_adv[0], x[0])
    assert model.training  # mode restored (TinyNet starts in train mode)
    assert all(p.requires_grad and p.is_contiguous() for p in model.parameters())  # flags and layout restored


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=inputs, method=st.sampled_from(["bisection", "newton", "tangent"]), iters=st.integers(1, 4),
       cap=st.one_of(st.none(), st.floats(0.0, 0.5)), nan=st.booleans(), segment=st.sampled_from(["previous", "clean"]))
def test_embedding_pgd_outputs_stay_in_the_embedding_ball(shape, method, iters, cap, nan, segment):
    n, seed = shape
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((n, 1, 6, 6), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 3, n))
    eps_emb = torch.from_numpy(rng.uniform(0, 0.5, n).astype(np.float32))
    eps_emb[0] = 0.0
    f, g = TinyNet(seed, nan=nan), TinyNet(seed + 1, out=4, normalize=True)
    r = embedding_pgd(f, g, x, y, eps_emb, cap=cap, method=method, iters=iters, newton_iters=iters, segment=segment,
                      steps=3, step_size=0.1)
    g.eval()
    with torch.no_grad():
        shift = torch.linalg.vector_norm(g(r.x_adv) - g(x), dim=1)
    assert (shift <= eps_emb + 1e-6).all()
    assert 0 <= r.x_adv.min() and r.x_adv.max() <= 1
    if cap is not None:
        assert (perturbation_norms(x, r.x_adv, "linf") <= cap + 1e-6).all()
    p = r.info["projection"]
    assert p["candidates"] == n * 4 and 0 <= p["active"] <= p["candidates"]


def test_fgsm_equals_torchattacks_exactly(digits_classifier, digits_splits):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = torch.from_numpy(digits_splits.test.images), torch.from_numpy(digits_splits.test.labels)
    ours = fgsm(ClassifierLoss(digits_classifier, y), x, 0.1).x_adv
    theirs = torchattacks.FGSM(digits_classifier, eps=0.1)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.6)])
def test_pgd_success_matches_torchattacks(digits_classifier, digits_splits, norm, eps):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = torch.from_numpy(digits_splits.test.images), torch.from_numpy(digits_splits.test.labels)
    ours = pgd(ClassifierLoss(digits_classifier, y), x, eps, norm, steps=20, seed=0).success.float().mean()
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    torch.manual_seed(0)
    adv = cls(digits_classifier, eps=eps, alpha=2.5 * eps / 20, steps=20, random_start=True)(x, y)
    with torch.no_grad():
        theirs = (digits_classifier(adv).argmax(1) != y).float().mean()
    assert abs(float(ours) - float(theirs)) <= 0.04  # 268 images: within sampling noise of one random start


def test_eps_table_budgets_and_zero_budget(digits_classifier, digits_splits, digits_table):
    x, y = torch.from_numpy(digits_splits.test.images), torch.from_numpy(digits_splits.test.labels)
    r = pgd(ClassifierLoss(digits_classifier, y), x, digits_table, "linf", labels=y, steps=5)
    per = torch.from_numpy(digits_table.eps("input", "linf")[y.numpy()])
    assert (perturbation_norms(x, r.x_adv, "linf") <= per + 1e-6).all()
    np.testing.assert_allclose(r.eps.numpy(), per.numpy(), rtol=1e-6)
    z = pgd(ClassifierLoss(digits_classifier, y), x, 0.0, "l2", steps=3)
    assert torch.equal(z.x_adv, x)


def test_resolve_eps_refuses_bad_budgets():
    with pytest.raises(ConfigError, match="finite"):
        resolve_eps(torch.tensor([0.1, float("nan")]), 2, torch.device("cpu"))
    with pytest.raises(ConfigError, match="finite and >= 0"):
        resolve_eps(-0.1, 2, torch.device("cpu"))
    with pytest.raises(ConfigError, match="3 budgets for 2"):
        resolve_eps([0.1, 0.2, 0.3], 2, torch.device("cpu"))


def test_embedding_shift_increases_with_radius(digits_splits):
    from calib.train import TrainConfig, train_embedding

    g = train_embedding(digits_splits.train, TrainConfig(epochs=2, seed=0, progress=False), dim=16).model
    x = torch.from_numpy(digits_splits.calibration.images[:60])
    shifts = [pgd(EmbeddingShift(g, x), x, e, "linf", steps=10).loss.mean().item() for e in (0.0, 0.02, 0.1)]
    assert shifts[0] == pytest.approx(0.0, abs=1e-6) and shifts[0] < shifts[1] < shifts[2]


def test_class_mixing_probe(digits, digits_splits):
    res = class_mixing_probe(digits.images, digits.labels, 0.3, seed=1)
    assert len(res.index0) == 90 and (res.class0 != res.class1).all()
    assert (res.input_distance["linf"] <= 0.3 + 1e-6).all()
    x0, x1 = digits.images[res.index0], digits.images[res.index1]
    np.testing.assert_allclose(res.images, np.clip(x0 + 0.3 * (x1 > 0), 0, 1), atol=1e-6)


def test_check_raises_on_infeasible_projector(digits_classifier, digits_splits):
    x, y = torch.from_numpy(digits_splits.test.images[:8]), torch.from_numpy(digits_splits.test.labels[:8])

    def bad_projector(x0, prev, cand):
        return torch.clamp(cand + 0.5, 0, 1)

    with pytest.raises(ConstraintViolation):
        pgd(ClassifierLoss(digits_classifier, y), x, 0.01, "linf", steps=2, projector=bad_projector)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(norm=st.sampled_from(["linf", "l2"]), eps=st.floats(0.0, 0.6), steps=st.integers(1, 8),
       seed=st.integers(0, 2 ** 16))
def test_early_stop_keeps_the_first_successful_iterate(digits_classifier, digits_splits, norm, eps, steps, seed):
    """Minimum-norm searches stop a sample at its first success: outputs stay feasible, and every
    sample reported successful really is (re-evaluated), as with the full loop."""
    from calib.budgets.semantic import JudgeObjective
    from calib.judges import ClassifierJudge

    te = digits_splits.test
    x, y = torch.from_numpy(te.images[:40]), torch.from_numpy(te.labels[:40])
    judge = ClassifierJudge(digits_classifier, 10)
    scale = eps if norm == "linf" else 8 * eps
    res = pgd(JudgeObjective(judge, y), x, scale, norm, steps=steps, seed=seed, early_stop=True)
    assert (res.x_adv >= 0).all() and (res.x_adv <= 1).all()
    assert torch.equal(res.success, judge.changed(res.x_adv, y))
    full = pgd(JudgeObjective(judge, y), x, scale, norm, steps=steps, seed=seed)
    assert int(res.success.sum()) >= int(full.success.sum()) - 2  # stopping early loses (almost) nothing
    with pytest.raises(ConfigError, match="early_stop"):
        pgd(ClassifierLoss(digits_classifier, y), x, 0.1, norm, early_stop=True)
