"""The audit against plain NumPy computations on real digits, and its verdict logic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from calib.audit import (AuditConfig, AuditResult, audit, ball_has_wrong, interpolation,
                         perceptibility, ssim)
from calib.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def parts(digits_splits):
    tr, te = digits_splits.train, digits_splits.test
    return tr.images, tr.labels, te.images[:60], te.labels[:60]


def _perturbed(x, seed=0, eps=0.2):
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.uniform(-eps, eps, x.shape).astype(np.float32), 0, 1)


def test_perceptibility_matches_plain_numpy(parts):
    _, _, x, _ = parts
    xa = _perturbed(x)
    p = perceptibility(x, xa)
    for i in range(len(x)):
        d = (xa[i].astype(np.float64) - x[i]).ravel()
        assert p["linf"][i] == pytest.approx(np.max(np.abs(d)))
        assert p["l2"][i] == pytest.approx(np.sqrt(np.sum(d ** 2)))
        assert p["l0"][i] == sum(abs(v) > 1 / 255 for v in d)
        bg = x[i].ravel() == 0
        n_bg = sum(1 for j in range(d.size) if bg[j] and abs(d[j]) > 1 / 255)
        assert p["background_changed"][i] == n_bg
        assert p["background_share"][i] == pytest.approx(n_bg / bg.sum())
        assert p["detected"][i] == (n_bg > 0)


def test_ssim_is_scikit_image_and_behaves(parts):
    from skimage.metrics import structural_similarity

    _, _, x, _ = parts
    xa = _perturbed(x, eps=0.1)
    s = ssim(x, xa)
    assert s[3] == pytest.approx(structural_similarity(x[3, 0].astype(np.float64), xa[3, 0].astype(np.float64),
                                                       data_range=1.0, win_size=7))
    assert np.allclose(ssim(x, x), 1.0)
    assert np.allclose(ssim(xa, x), s)  # symmetric
    assert (ssim(x, _perturbed(x, eps=0.4)) < s).mean() > 0.9  # more noise, less similar
    with pytest.raises(DataError, match="too small"):
        ssim(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.float32))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_interpolation_and_ball_match_brute_force(parts, norm):
    rx, ry, x, y = parts
    r = rx.reshape(len(rx), -1)
    xf = x.reshape(len(x), -1)
    xa = _perturbed(x, eps=0.35).reshape(len(x), -1)
    for i in range(0, len(x), 2):  # move half the points most of the way to a same-class image
        j = np.flatnonzero(ry == y[i])[i % 5]
        xa[i] = 0.3 * xf[i] + 0.7 * r[j]
    got = interpolation(xf, xa, y, r, ry, norm)
    dist = (lambda a, b: np.sqrt(((a - b) ** 2).sum(-1))) if norm == "l2" else (lambda a, b: np.abs(a - b).max(-1))
    wrong = np.zeros(len(ry), bool)
    wrong[np.random.default_rng(1).choice(len(ry), 40, replace=False)] = True
    eps = np.full(len(y), 0.5 if norm == "linf" else 3.0)
    ball = ball_has_wrong(xf, y, eps, r, ry, wrong, norm)
    for i in range(len(y)):
        same = np.flatnonzero(ry == y[i])
        d_same = min(dist(xa[i].astype(np.float64), r[j].astype(np.float64)) for j in same)
        to_x = dist(xa[i].astype(np.float64), xf[i].astype(np.float64))
        assert got["dist_to_same"][i] == pytest.approx(d_same, abs=1e-5)
        assert got["dist_to_x"][i] == pytest.approx(to_x, abs=1e-5)
        assert got["interpolated"][i] == (d_same < to_x - 1e-6) or abs(d_same - to_x) < 1e-5
        cand = [dist(xf[i].astype(np.float64), r[j].astype(np.float64)) for j in same if wrong[j]]
        want = min(cand) if cand else np.inf
        assert ball["dist_to_wrong"][i] == pytest.approx(want, abs=1e-5)
        assert ball["has_wrong"][i] == (want <= eps[i])
    assert got["interpolated"].any() and not got["interpolated"].all()


class _Identity(torch.nn.Module):
    """An 'embedding' that is the flattened, L2-normalised image: fully transparent for tests."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.nn.functional.normalize(x.flatten(1), dim=1)


@pytest.fixture(scope="module")
def reference(parts, digits_classifier):
    from calib.audit import build_reference

    rx, ry, _, _ = parts
    return build_reference(digits_classifier, {"g": _Identity()}, rx, ry)


@pytest.fixture(scope="module")
def judge(parts):
    """The nearest-class judge over the transparent 'embedding': its verdicts can be checked by hand."""
    from calib.judges import KnnJudge

    rx, ry, _, _ = parts
    return KnnJudge(_Identity(), rx, ry, 10, k=3, name="pixels")


def test_audit_of_unperturbed_points(parts, reference, judge, digits_classifier):
    _, _, x, y = parts
    pred = digits_classifier(torch.from_numpy(x)).argmax(1).numpy()
    res = audit(x, x.copy(), y, pred, norm="linf", eps=np.full(len(y), 0.1), reference=reference, judge=judge)
    a = res.arrays
    assert np.array_equal(a["success"], pred != y)
    assert np.allclose(a["ssim"], 1) and not a["perceptible"].any() and (a["l0"] == 0).all()
    assert not a["interpolated"].any()  # distance to x is 0: nothing is strictly closer
    assert np.array_equal(a["valid"], a["success"] & ~a["class_changed"])
    assert np.array_equal(a["judge_clean"], a["judge_label"]) and res.meta["judge"]["name"] == "pixels"


def test_audit_verdict_is_the_conjunction(parts, reference, judge, digits_classifier):
    rx, ry, x, y = parts
    xa = _perturbed(x, seed=3, eps=0.3)
    pred = digits_classifier(torch.from_numpy(xa)).argmax(1).numpy()
    # the judge by hand: mean distance to the 3 nearest normalised training images of each class
    q = xa.reshape(len(xa), -1).astype(np.float64)
    r = rx.reshape(len(rx), -1).astype(np.float64)
    q, r = q / np.linalg.norm(q, axis=1, keepdims=True), r / np.linalg.norm(r, axis=1, keepdims=True)
    d = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1))
    dc = np.stack([np.sort(d[:, ry == c], 1)[:, :3].mean(1) for c in range(10)], 1)
    for cfg in (AuditConfig(), AuditConfig(ssim_min=0.5), AuditConfig(detector_in_verdict=True)):
        res = audit(x, xa, y, pred, norm="l2", eps=np.full(len(y), 1.0), reference=reference, judge=judge, config=cfg)
        a = res.arrays
        perceptible = (a["ssim"] < cfg.ssim_min) | (a["detected"] if cfg.detector_in_verdict else False)
        assert np.array_equal(a["perceptible"], perceptible)
        assert np.array_equal(a["judge_label"], dc.argmin(1))
        assert np.array_equal(a["class_changed"], dc.argmin(1) != y)
        other = np.where(np.eye(10, dtype=bool)[y], np.inf, dc).min(1)
        np.testing.assert_allclose(a["judge_score"], (dc[np.arange(len(y)), y] - other) / 2, atol=1e-6)
        assert np.array_equal(a["valid"], a["success"] & ~perceptible & ~a["class_changed"] & ~a["interpolated"])
        succ = a["success"]
        if succ.any():
            r_ = res.rates()
            assert r_["class_preserving_among_successes"] == pytest.approx((~a["class_changed"][succ]).mean())
            assert r_["valid_among_successes"] == pytest.approx(a["valid"][succ].mean())


def test_audit_summary_and_roundtrip(parts, reference, judge, digits_classifier, tmp_path):
    _, _, x, y = parts
    xa = _perturbed(x, seed=4)
    pred = digits_classifier(torch.from_numpy(xa)).argmax(1).numpy()
    res = audit(x, xa, y, pred, norm="linf", eps=np.full(len(y), 0.2), reference=reference, judge=judge)
    names = [str(i) for i in range(10)]
    summary = res.summary(names)
    assert summary["overall"]["n"] == len(y)
    assert summary["overall"]["valid_rate"] == pytest.approx(res.arrays["valid"].mean())
    c = int(y[0])
    m = y == c
    assert summary["per_class"][str(c)]["success_rate"] == pytest.approx(res.arrays["success"][m].mean())
    res.save(tmp_path, "a", names)
    back = AuditResult.load(tmp_path, "a")
    assert set(back.arrays) == set(res.arrays)
    assert all(np.array_equal(back.arrays[k], res.arrays[k]) for k in res.arrays)
    assert back.rates() == pytest.approx(res.rates(), nan_ok=True)


def test_audit_rejects_bad_input(parts, reference, judge):
    _, _, x, y = parts
    with pytest.raises(DataError, match="disagree"):
        audit(x, x[:-1], y, y, norm="linf", eps=np.zeros(len(y)), reference=reference, judge=judge)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        audit(x, bad, y, y, norm="linf", eps=np.zeros(len(y)), reference=reference, judge=judge)
    with pytest.raises(ConfigError, match="embedding ball"):
        audit(x, x, y, y, norm="linf", eps=np.zeros(len(y)), reference=reference, judge=judge, ball_space="embedding")
    with pytest.raises(ConfigError):
        AuditConfig(ssim_min=2)


@settings(max_examples=25, deadline=None)
@given(eps=st.floats(0.0, 0.5), seed=st.integers(0, 2 ** 16))
def test_perceptibility_properties(eps, seed):
    rng = np.random.default_rng(seed)
    x = (rng.random((3, 1, 8, 8)) * (rng.random((3, 1, 8, 8)) > 0.5)).astype(np.float32)
    xa = np.clip(x + rng.uniform(-eps, eps, x.shape).astype(np.float32), 0, 1)
    p = perceptibility(x, xa)
    assert (p["linf"] <= eps + 1e-6).all()
    assert (p["l2"] <= eps * 8 + 1e-5).all()
    assert ((p["l0"] >= p["background_changed"]) & (p["l0"] <= 64)).all()
    assert ((p["ssim"] <= 1 + 1e-9) & (p["ssim"] >= -1)).all()
    assert (p["detected"] == (p["background_changed"] > 0)).all()
