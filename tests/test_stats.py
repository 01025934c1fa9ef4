"""Statistics against independent plain NumPy computations on real data (digits, MNIST)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from calib.data import Dataset, load_dataset, split_dataset
from calib.errors import ConfigError, DataError
from calib.stats import (Stats, StatsConfig, class_pair_stats, compute_stats, nearest, nearest_exact,
                         same_diff)


def plain_dist(a: np.ndarray, b: np.ndarray, norm: str) -> np.ndarray:
    """Reference distances by explicit differences, float64, in row chunks."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    out = np.empty((len(a), len(b)))
    step = max(1, int(4e6 // (len(b) * a.shape[1])))
    for s in range(0, len(a), step):
        diff = np.abs(a[s:s + step, None, :] - b[None])
        out[s:s + step] = {"l2": lambda d: np.sqrt((d * d).sum(-1)), "linf": lambda d: d.max(-1),
                         "l1": lambda d: d.sum(-1)}[norm](diff)
    return out


def plain_same_diff(x, y, xr, yr, norm, self_match):
    d = plain_dist(x, xr, norm)
    if self_match:
        np.fill_diagonal(d, np.inf)
    same = y[:, None] == yr[None, :]
    return np.where(same, d, np.inf).min(1), np.where(~same, d, np.inf).min(1)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", mnist_dir)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_same_diff_matches_plain_on_digits(digits_splits, norm):
    tr, ca = digits_splits.train, digits_splits.calibration
    for q, r, self_match in ((tr, tr, True), (ca, tr, False)):
        got = same_diff(q.images, q.labels, r.images, r.labels, norm, self_match=self_match,
                        image_shape=q.image_shape)
        ref_same, ref_diff = plain_same_diff(q.images, q.labels, r.images, r.labels, norm, self_match)
        np.testing.assert_allclose(got.d_same, ref_same, rtol=0, atol=1e-9)
        np.testing.assert_allclose(got.d_diff, ref_diff, rtol=0, atol=1e-9)
        # the returned indices realise the distances, have the right labels, and are never self
        xq, xr = q.images.reshape(len(q), -1), r.images.reshape(len(r), -1)
        d_at = plain_dist(xq[:50], xr, norm)[np.arange(50), got.i_same[:50]]
        np.testing.assert_allclose(d_at, got.d_same[:50], atol=1e-9)
        assert (r.labels[got.i_same] == q.labels).all() and (r.labels[got.i_diff] != q.labels).all()
        if self_match:
            assert (got.i_same != np.arange(len(q))).all()


def test_linf_fast_path_is_exactly_faiss(mnist):
    x = mnist.images.reshape(len(mnist), -1)[:3000]
    q = x[:300]
    fast_d, fast_i = nearest(q, x, "linf", exclude=np.arange(300))
    ref_d, ref_i = nearest(q, x, "linf", exclude=np.arange(300), backend="faiss")
    import faiss

    index = faiss.IndexFlat(x.shape[1], faiss.METRIC_Linf)
    index.add(x)
    raw_d, raw_i = index.search(q, 2)
    faiss_d = np.where(raw_i[:, 0] == np.arange(300), raw_d[:, 1], raw_d[:, 0])
    kern_d, _ = nearest_exact(q, x, "linf", exclude=np.arange(300))
    np.testing.assert_array_equal(kern_d.astype(np.float32), faiss_d)  # bit-identical float32
    np.testing.assert_allclose(fast_d, ref_d, atol=1e-6)
    assert (fast_d == kern_d).all()
    # L-inf distances of 8-bit images are multiples of 1/255
    np.testing.assert_allclose(fast_d * 255, np.round(fast_d * 255), atol=1e-4)


def test_l1_fast_path_matches_plain_and_faiss(mnist):
    x = mnist.images.reshape(len(mnist), -1)[:2000]
    q = x[:150]
    d, i = nearest(q, x, "l1", exclude=np.arange(150), image_shape=(1, 28, 28))
    ref = plain_dist(q, x, "l1")
    ref[np.arange(150), np.arange(150)] = np.inf
    np.testing.assert_allclose(d, ref.min(1), rtol=0, atol=1e-9)
    fd, _ = nearest(q, x, "l1", exclude=np.arange(150), backend="faiss")
    np.testing.assert_allclose(d, fd, rtol=1e-6)


def test_mnist_slice_quantities_match_plain(mnist):
    """On a 1,200-image slice of the real MNIST test split: mean L2 matrix, per-class min L-inf
    d_diff and median L2 d_same against plain NumPy to 1e-4 (the full 10k: bench/verify_mnist_stats.py)."""
    n = 1200
    sl = mnist.subset(np.arange(n), "slice")
    x, y = sl.images.reshape(n, -1), sl.labels
    m = class_pair_stats(x, y, "l2", 10, mode="exact", block=512)
    d = plain_dist(x, x, "l2")
    np.fill_diagonal(d, np.nan)
    plain_mean = np.array([[np.nanmean(d[np.ix_(y == a, y == b)]) for b in range(10)] for a in range(10)])
    np.testing.assert_allclose(m.mean, plain_mean, atol=1e-4)
    sd_inf = same_diff(x, y, x, y, "linf", self_match=True)
    _, ref_diff = plain_same_diff(x, y, x, y, "linf", True)
    for c in range(10):
        assert abs(sd_inf.d_diff[y == c].min() - ref_diff[y == c].min()) < 1e-4
    sd_l2 = same_diff(x, y, x, y, "l2", self_match=True)
    ref_same, _ = plain_same_diff(x, y, x, y, "l2", True)
    for c in range(10):
        assert abs(np.median(sd_l2.d_same[y == c]) - np.median(ref_same[y == c])) < 1e-4


def test_mnist_class_2_is_closer_to_1_than_to_other_2s(mnist):
    """The original analysis's observation, on all 10k images, exact mode."""
    m = class_pair_stats(mnist.images.reshape(len(mnist), -1), mnist.labels, "l2", 10, mode="exact")
    assert m.mean[2, 1] < m.mean[2, 2]
    assert m.count[2, 2] == 1032 * 1031 and m.count[2, 1] == 1032 * 1135
    np.testing.assert_allclose(m.mean, m.mean.T, atol=1e-9)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_class_pair_exact_and_sampled_match_plain(digits, norm):
    x, y = digits.images.reshape(len(digits), -1), digits.labels
    d = plain_dist(x, x, norm)
    np.fill_diagonal(d, np.nan)
    ex = class_pair_stats(x, y, norm, 10, mode="exact", block=500)
    for a, b in ((0, 0), (2, 1), (9, 4)):
        v = d[np.ix_(y == a, y == b)].ravel()
        v = v[~np.isnan(v)]
        assert ex.count[a, b] == v.size
        np.testing.assert_allclose([ex.mean[a, b], ex.std[a, b], ex.min[a, b], ex.max[a, b]],
                                   [v.mean(), v.std(), v.min(), v.max()], atol=1e-9)
        np.testing.assert_allclose(ex.quantiles[:, a, b], np.quantile(v, ex.levels),
                                   atol=ex.quantile_resolution)
    sa = class_pair_stats(x, y, norm, 10, mode="sampled", n_per_class=30, seed=5)
    assert (np.diag(sa.count) == 30 * 29).all() and sa.count[0, 1] == 900
    assert sa.mean[3, 3] != pytest.approx(ex.mean[3, 3], abs=0)  # a sample, not the exact value
    again = class_pair_stats(x, y, norm, 10, mode="sampled", n_per_class=30, seed=5)
    np.testing.assert_array_equal(again.mean, sa.mean)


@settings(max_examples=8, deadline=None)
@given(groups=st.integers(1, 5), seed=st.integers(0, 2**16), norm=st.sampled_from(["l2", "linf", "l1"]))
def test_exact_matrices_split_into_any_pieces_give_the_same_bits(digits, groups, seed, norm):
    """However the exact mode's pieces are dealt (over torchrun ranks: calib.pipeline.sharded.matrix_pieces),
    the matrices are those of one pass, bit for bit; pieces not covered exactly once are a bug."""
    import importlib

    P = importlib.import_module("calib.stats.pairwise")
    x, y = digits.images.reshape(len(digits), -1)[:700], digits.labels[:700]
    whole = class_pair_stats(x, y, norm, 10, mode="exact", block=128)

    def dealt(xs, ls, nm, k, n, **kw):
        perm = np.random.default_rng(seed).permutation(n)
        return [P.exact_pieces(xs, ls, nm, k, sorted(g), **kw) for g in np.array_split(perm, groups)]

    split = class_pair_stats(x, y, norm, 10, mode="exact", block=128, pieces=dealt)
    for name, arr in whole.arrays().items():
        assert np.array_equal(arr, split.arrays()[name], equal_nan=True), name

    def twice(xs, ls, nm, k, n, **kw):
        return [P.exact_pieces(xs, ls, nm, k, range(n), **kw), P.exact_pieces(xs, ls, nm, k, [0], **kw)]

    with pytest.raises(AssertionError, match="not once each"):
        class_pair_stats(x, y, norm, 10, mode="exact", block=128, pieces=twice)


def test_duplicates_are_counted_never_dropped(digits):
    # append exact copies of 5 images (same label) and 1 copy with another label
    extra = np.r_[np.arange(5), 10]
    images = np.concatenate([digits.images, digits.images[extra]])
    labels = np.concatenate([digits.labels, digits.labels[extra[:5]], [(digits.labels[10] + 1) % 10]])
    ds = Dataset("dup", images, labels, digits.class_names, "f" * 64)
    x = ds.images.reshape(len(ds), -1)
    for norm in ("l2", "linf", "l1"):
        sd = same_diff(x, labels, x, labels, norm, self_match=True, image_shape=(1, 8, 8))
        assert (sd.d_same == 0).sum() == 10  # 5 originals and their 5 copies
        assert (sd.d_diff == 0).sum() == 2  # image 10 and its differently-labelled copy
        assert (sd.i_same != np.arange(len(ds))).all()


def test_compute_stats_save_load_round_trip(tmp_path, digits, digits_splits):
    emb = np.random.default_rng(0).normal(size=(len(digits), 8)).astype(np.float32)
    cfg = StatsConfig(matrix_modes=("sampled",), n_per_class=20)
    st = compute_stats(digits, digits_splits, cfg, embeddings=emb, show_progress=False)
    st.save(tmp_path / "stats")
    back = Stats.load(tmp_path / "stats")
    assert set(back.pairs) == set(st.pairs) and set(back.matrices) == set(st.matrices)
    for k in st.pairs:
        np.testing.assert_array_equal(back.pairs[k].nn.d_same, st.pairs[k].nn.d_same)
    s = back.summary()["neighbours"]["input/linf/train-train"]
    assert s["separation"] == pytest.approx(0.5 * st.pairs[("input", "linf", "train-train")].nn.d_diff.min())
    assert back.meta["dataset"]["fingerprint"] == digits.fingerprint
    (tmp_path / "stats.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt statistics"):
        Stats.load(tmp_path / "stats")


def test_stats_config_and_inputs_are_validated(digits, digits_splits):
    with pytest.raises(ConfigError, match="unknown norm"):
        StatsConfig(input_norms=("l3",))
    with pytest.raises(ConfigError, match="bad pair"):
        StatsConfig(pairs=("train-validation",))
    with pytest.raises(ConfigError, match="one embedding per image"):
        compute_stats(digits, digits_splits, StatsConfig(), show_progress=False)
    other = split_dataset(load_dataset("digits").subset(np.arange(1000), "x"), seed=0)
    with pytest.raises(DataError, match="do not belong"):
        compute_stats(digits, other, StatsConfig(embedding=False), show_progress=False)
