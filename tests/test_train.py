"""Training on real data: accuracy bars, bit-identical reruns, metrics against plain computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calib.data import load_dataset, split_dataset, stratified_indices
from calib.errors import ConfigError
from calib.train import (TrainConfig, accuracy, embed, predict, random_shift, retrieval_metrics,
                         train_classifier, train_embedding)


@pytest.fixture(scope="module")
def digits_models(digits_splits):
    s = digits_splits
    cfg = TrainConfig(epochs=20, seed=0, device="cpu", progress=False)
    clf = train_classifier(s.train, cfg, validation=s.calibration, test=s.test)
    emb = train_embedding(s.train, cfg, test=s.test)
    return clf, emb


def test_digits_quality_bar(digits_models):
    clf, emb = digits_models
    assert clf.metrics["test_accuracy"] >= 0.95
    assert emb.metrics["test_precision_at_1"] >= 0.95
    assert len(clf.training["history"]) == 20 and "val_accuracy" in clf.training["history"][-1]


def test_accuracy_matches_plain_count(digits_models, digits_splits):
    clf, _ = digits_models
    test = digits_splits.test
    with torch.no_grad():
        pred = clf.model(torch.from_numpy(test.images)).argmax(1).numpy()
    acc = accuracy(clf.model, test)
    assert acc["accuracy"] == pytest.approx((pred == test.labels).mean())
    assert acc["accuracy/3"] == pytest.approx((pred[test.labels == 3] == 3).mean())
    np.testing.assert_array_equal(predict(clf.model, test.images), pred)


def test_retrieval_metrics_match_plain_numpy(digits_models, digits_splits):
    _, emb = digits_models
    q, r = digits_splits.test, digits_splits.train
    eq, er = embed(emb.model, q.images).astype(np.float64), embed(emb.model, r.images).astype(np.float64)
    d = ((eq[:, None, :] - er[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")
    p_at_1 = (r.labels[order[:, 0]] == q.labels).mean()
    maps = []
    for i, y in enumerate(q.labels):  # MAP@R (Musgrave et al. 2020), R = number of same-class references
        R = int((r.labels == y).sum())
        rel = r.labels[order[i, :R]] == y
        prec = np.cumsum(rel) / np.arange(1, R + 1)
        maps.append((prec * rel).sum() / R)
    got = retrieval_metrics(emb.model, q, r)
    assert got["precision_at_1"] == pytest.approx(p_at_1, abs=1e-6)
    assert got["mean_average_precision_at_r"] == pytest.approx(np.mean(maps), abs=1e-4)


def test_same_seed_same_weights_other_seed_other_weights(digits_splits):
    s = digits_splits
    def run(seed, trainer):
        return trainer(s.train, TrainConfig(epochs=2, seed=seed, device="cpu", progress=False)).weights_sha256
    for trainer in (train_classifier, train_embedding):
        a, b, c = run(7, trainer), run(7, trainer), run(8, trainer)
        assert a == b != c


def test_embedding_batch_hard_miner_trains(digits_splits):
    s = digits_splits
    emb = train_embedding(s.train, TrainConfig(epochs=3, seed=0, device="cpu", progress=False), test=s.test,
                          miner="hard", dim=16, margin=0.3)
    assert emb.metrics["test_precision_at_1"] > 0.8
    assert emb.training["miner"] == "hard"


def test_bad_training_options(digits_splits):
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="unknown miner"):
        train_embedding(digits_splits.train, TrainConfig(epochs=1, progress=False), miner="bogus")
    with pytest.raises(ConfigError, match="CUDA is not available|unknown device"):
        train_classifier(digits_splits.train, TrainConfig(epochs=1, device="cuda:7", progress=False))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), h=st.integers(3, 12), w=st.integers(3, 12), s=st.integers(0, 3),
       seed=st.integers(0, 1000))
def test_random_shift_is_a_translation(n, h, w, s, seed):
    x = torch.rand(n, 1, h, w)
    y = random_shift(x, s, torch.Generator().manual_seed(seed))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    pad = torch.nn.functional.pad(x, (s, s, s, s))
    for i in range(n):  # each output equals some window of the zero-padded input
        windows = [pad[i, :, a:a + h, b:b + w] for a in range(2 * s + 1) for b in range(2 * s + 1)]
        assert any(torch.equal(y[i], win) for win in windows)


def test_mnist_slice_trains_well(mnist_dir):
    """A 3,000-image stratified slice of the real MNIST test split's train part, 8 epochs."""
    s = split_dataset(load_dataset("mnist", mnist_dir), seed=0)
    keep = stratified_indices(s.train.labels, (3000 / len(s.train), 1 - 3000 / len(s.train)), seed=0)[0]
    train = s.train.subset(keep, "train3k")
    cfg = TrainConfig(epochs=8, seed=0, device="cpu", progress=False)
    clf = train_classifier(train, cfg, test=s.test)
    emb = train_embedding(train, cfg, test=s.test)
    assert clf.metrics["test_accuracy"] >= 0.95
    assert emb.metrics["test_precision_at_1"] >= 0.95
