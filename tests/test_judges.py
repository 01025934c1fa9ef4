"""Judges against plain computations on real digits: labels, margins, scores, ensembles, certificates."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calib.errors import ConfigError, DataError
from calib.judges import ClassifierJudge, EnsembleJudge, JudgeConfig, KnnJudge, build_judge
from calib.train import TrainConfig, embed, train_embedding


@pytest.fixture(scope="module")
def g(digits_splits):
    return train_embedding(digits_splits.train, TrainConfig(epochs=3, seed=0, progress=False), dim=16).model


@pytest.fixture(scope="module")
def lip(digits_splits):
    """A small certified-Lipschitz embedding (a few seconds)."""
    m = train_embedding(digits_splits.train, TrainConfig(epochs=3, seed=0, progress=False), arch="lipschitz-mlp",
                        width=64, depth=2, dim=16, margin=1.0)
    return m.model


@pytest.fixture(scope="module")
def query(digits_splits):
    cal = digits_splits.calibration
    rng = np.random.default_rng(0)
    x = np.clip(cal.images[:80] + rng.uniform(-0.15, 0.15, cal.images[:80].shape).astype(np.float32), 0, 1)
    return x, cal.labels[:80]


def _plain_class_distances(e_q: np.ndarray, e_r: np.ndarray, r_lab: np.ndarray, k: int) -> np.ndarray:
    """Mean distance to the k nearest references of each class, by a plain loop in float64."""
    out = np.empty((len(e_q), 10))
    for i, z in enumerate(e_q.astype(np.float64)):
        d = np.sqrt(((e_r.astype(np.float64) - z) ** 2).sum(1))
        for c in range(10):
            out[i, c] = np.sort(d[r_lab == c])[:k].mean()
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_knn_judge_matches_a_plain_loop(g, digits_splits, query, k):
    tr = digits_splits.train
    x, y = query
    judge = KnnJudge(g, tr.images, tr.labels, 10, k=k)
    dist = _plain_class_distances(embed(g, x), embed(g, tr.images), tr.labels, k)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    assert np.array_equal(judge.label(xt).numpy(), dist.argmin(1))
    other = np.where(np.eye(10, dtype=bool)[y], np.inf, dist).min(1)
    expect = (other - dist[np.arange(len(y)), y]) / 2  # DESIGN: (d_diff - d_same) / 2 for k = 1
    with torch.no_grad():
        np.testing.assert_allclose(judge.margin(xt, yt).numpy(), expect, atol=1e-6)  # float32 embeddings
        np.testing.assert_allclose(judge.score(xt, yt).numpy(), -expect, atol=1e-6)
    # the differentiable float32 path agrees with the float64 one
    with torch.enable_grad():
        np.testing.assert_allclose(judge.margin(xt, yt).detach().numpy(), expect, atol=2e-5)
    assert np.array_equal(judge.changed(xt, yt).numpy(), dist.argmin(1) != y)
    assert judge.certified_radius(xt, yt, "l2") is None and judge.lipschitz is None


def test_classifier_judge_is_the_logit_margin(digits_classifier, query):
    x, y = query
    judge = ClassifierJudge(digits_classifier, 10)
    with torch.no_grad():
        z = digits_classifier(torch.from_numpy(x)).numpy()
        m = judge.margin(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    zy = z[np.arange(len(y)), y]
    other = np.where(np.eye(10, dtype=bool)[y], -np.inf, z).max(1)
    np.testing.assert_allclose(m, zy - other, rtol=1e-5, atol=1e-5)
    assert np.array_equal(judge.changed(torch.from_numpy(x), torch.from_numpy(y)).numpy(), z.argmax(1) != y)


def test_ensemble_rules(g, lip, digits_classifier, digits_splits, query):
    from calib.models.lipschitz import lipschitz_constant

    tr = digits_splits.train
    x, y = torch.from_numpy(query[0]), torch.from_numpy(query[1])
    members = [KnnJudge(g, tr.images, tr.labels, 10, name="knn"), ClassifierJudge(digits_classifier, 10),
               KnnJudge(lip, tr.images, tr.labels, 10, lipschitz=lipschitz_constant(lip), name="lipschitz")]
    changed = torch.stack([m.changed(x, y) for m in members], 1).numpy()
    for rule, expect in (("any", changed.any(1)), ("majority", changed.sum(1) >= 2)):
        e = EnsembleJudge(members, rule=rule).calibrate_scales(x, y)
        got = e.changed(x, y).numpy()
        assert np.array_equal(got, expect)
        with torch.no_grad():
            m = e.margin(x, y).numpy()
        assert ((m < 0) == got)[m != 0].all()  # the ensemble margin's sign is its verdict
        assert all(s > 0 for s in e.scales)
    # certificates: any -> all members must be certified; majority -> the 2nd smallest member radius
    any_ = EnsembleJudge(members, rule="any")
    assert any_.certified_radius(x, y, "l2") is None
    maj = EnsembleJudge(members, rule="majority")
    assert maj.certified_radius(x, y, "l2") is None  # 2 of 3 uncertified: the 2nd smallest is a trivial 0
    lips = [KnnJudge(lip, tr.images, tr.labels, 10, lipschitz=lipschitz_constant(lip), name=f"lip{i}", k=i + 1)
            for i in range(3)]
    r = torch.stack([m.certified_radius(x, y, "l2") for m in lips], 1).numpy()
    np.testing.assert_allclose(EnsembleJudge(lips, rule="any").certified_radius(x, y, "l2").numpy(), r.min(1))
    np.testing.assert_allclose(EnsembleJudge(lips, rule="majority").certified_radius(x, y, "l2").numpy(),
                               np.sort(r, 1)[:, 1])
    with pytest.raises(ConfigError, match="at least 2"):
        EnsembleJudge(members[:1])
    with pytest.raises(ConfigError, match="rule"):
        EnsembleJudge(members, rule="most")


def test_judge_config_and_build_refuse_bad_input(g, digits_splits):
    with pytest.raises(ConfigError, match="unknown judge 'or acle'"):
        JudgeConfig(name="or acle")  # not even a fitted judge's name
    assert JudgeConfig(name="oracle").name == "oracle"  # could be a fitted judge: the run checks it has one
    with pytest.raises(ConfigError, match="member"):
        JudgeConfig(members=("knn", "ensemble"))
    with pytest.raises(ConfigError, match="distinct"):
        JudgeConfig(members=("knn", "knn"))
    assert JudgeConfig(name="ensemble", members=("knn", "lipschitz"), also=("classifier",)).models() == (
        "classifier", "embedding", "lipschitz-embedding")
    tr = digits_splits.train
    with pytest.raises(DataError, match="at least k"):
        KnnJudge(g, tr.images[:30], tr.labels[:30], 10, k=5)

    def load(stem):
        raise ConfigError(f"no model {stem}")

    with pytest.raises(ConfigError, match="no model lipschitz-embedding"):
        build_judge("lipschitz", JudgeConfig(), load, tr.images, tr.labels, 10)
