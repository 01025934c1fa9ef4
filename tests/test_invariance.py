"""Invariance radii, relabel curves and order-statistic intervals, against plain computations: a judge
whose exact invariance radius has a closed form, brute-force nearest targets, least-ink choices, and
the intervals' coverage over many draws from a known distribution."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.stats import expon

from calib.budgets.intervals import class_intervals, order_ranks, quantile_interval
from calib.budgets.invariance import (invariance_radii, nearest_targets, path_point, relabel_curve, removed_ink,
                                      union_rate)
from calib.budgets.semantic import Radii, merge_invariance
from calib.perturb.invariants import VERDICT_GUARD
from calib.judges.base import Judge
from calib.perturb.invariants import ConstraintViolation


class MeanJudge(Judge):
    """Class 1 when the mean pixel exceeds ``tau``, else 0: its invariance radius has a closed form."""

    name, kind, num_classes = "mean", "test", 2

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1) - self.tau
        return torch.stack([-m, m], 1)

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1) - self.tau
        return torch.where(y == 1, m, -m)


def _data(n: int, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = (rng.uniform(0, 0.3, (n, 1, 4, d // 4))).astype(np.float32)  # class 0: dark
    ref = np.concatenate([rng.uniform(0, 0.3, (20, 1, 4, d // 4)), rng.uniform(0.6, 1, (20, 1, 4, d // 4))])
    return x, np.zeros(n, np.int64), ref.astype(np.float32), np.repeat([0, 1], 20)


def test_nearest_targets_are_the_brute_force_nearest(digits, digits_splits):
    cal, tr = digits_splits.calibration, digits_splits.train
    got = nearest_targets(cal.images[:50], cal.labels[:50], tr.images, tr.labels, 10)
    xf, rf = cal.images[:50].reshape(50, -1).astype(np.float64), tr.images.reshape(len(tr), -1).astype(np.float64)
    d = ((xf[:, None] - rf[None]) ** 2).sum(-1)
    for i in range(50):
        for c in range(10):
            if c == cal.labels[i]:
                assert got[i, c] == -1
            else:
                cand = np.flatnonzero(tr.labels == c)
                assert d[i, got[i, c]] == pytest.approx(d[i, cand].min(), rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.5), st.sampled_from(["linf", "l2"]))
def test_the_path_stays_in_the_ball_and_the_box_and_moves_toward_its_target(seed, eps, norm):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.uniform(0, 1, (5, 1, 3, 3)).astype(np.float32))
    t = torch.from_numpy(rng.uniform(0, 1, (5, 1, 3, 3)).astype(np.float32))
    e = torch.full((5,), eps)
    p = path_point(x, t, e, norm)
    assert p.min() >= 0 and p.max() <= 1
    dist = (p - x).flatten(1).abs().amax(1) if norm == "linf" else torch.linalg.vector_norm((p - x).flatten(1), dim=1)
    assert (dist <= eps + 1e-5).all()
    closer = path_point(x, t, e * 1.5 + 0.01, norm)
    assert (torch.linalg.vector_norm((closer - t).flatten(1), dim=1)
            <= torch.linalg.vector_norm((p - t).flatten(1), dim=1) + 1e-5).all()  # a bigger ball: closer to t
    if norm == "l2":  # on the segment [x, t]
        a = torch.clamp(e / torch.linalg.vector_norm((t - x).flatten(1), dim=1).clamp_min(1e-12), max=1)
        torch.testing.assert_close(p, x + a.view(-1, 1, 1, 1) * (t - x), atol=1e-6, rtol=0)


def _exact_radius(x: np.ndarray, t: np.ndarray, tau: float, norm: str) -> float:
    """Plain numpy: the eps at which mean(path point) reaches tau (monotone in eps), by 80 bisections."""
    x, t = x.ravel().astype(np.float64), t.ravel().astype(np.float64)
    if norm == "l2":
        a = (tau - x.mean()) / (t.mean() - x.mean())
        return float(a * np.linalg.norm(t - x)) if 0 <= a <= 1 else np.inf
    lo, hi = 0.0, float(np.abs(t - x).max())
    if np.clip(t, x - hi, x + hi).mean() <= tau:
        return np.inf
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if np.clip(t, x - mid, x + mid).mean() > tau else (mid, hi)
    return hi


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_invariance_radius_against_the_closed_form(norm):
    x, y, ref, ref_y = _data(40)
    judge = MeanJudge(0.45)
    targets = nearest_targets(x, y, ref, ref_y, 2)
    inv = invariance_radii(judge, x, y, ref, targets, norm, iters=10)
    exact = np.array([_exact_radius(x[i], ref[targets[i, 1]], 0.45, norm) for i in range(len(y))])
    step = {"linf": 0.05, "l2": 0.25}[norm]
    assert np.isfinite(exact).all() and (inv.target_class == 1).all()
    assert (inv.radius >= exact - 1e-5).all()  # an upper bound: never below the exact radius
    # and tight to the grid step / 2^iters, plus the verdict guard (a witness stops 0.1 % past the change)
    assert (inv.radius <= exact * (1 + VERDICT_GUARD) + step / 2 ** 10 + 1e-5).all()
    assert not inv.clean_wrong.any() and inv.info["not_found"] == 0


def test_clean_errors_and_points_no_path_changes():
    x, y, ref, ref_y = _data(10)
    x[:3] = 0.9  # bright: the judge already says 1 (a clean error)
    judge = MeanJudge(0.99)  # no target reaches it: no change found
    judge_wrong = MeanJudge(0.5)
    targets = nearest_targets(x, y, ref, ref_y, 2)
    inv = invariance_radii(judge_wrong, x, y, ref, targets, "l2")
    assert (inv.radius[:3] == 0).all() and inv.clean_wrong[:3].all()
    none = invariance_radii(judge, x[3:], y[3:], ref, targets[3:], "linf")
    assert np.isinf(none.radius).all() and none.info["not_found"] == 7


def test_relabel_curve_least_ink_target_against_numpy(digits_splits):
    cal, tr = digits_splits.calibration, digits_splits.train
    x, y = cal.images[:60], cal.labels[:60]
    targets = nearest_targets(x, y, tr.images, tr.labels, 10)
    judge = MeanJudge(0.3)  # a stand-in judge; only its verdicts on the chosen examples matter here
    yb = (x.reshape(60, -1).mean(1) > 0.3).astype(np.int64)  # the labels it gives the clean images
    doc = relabel_curve(judge, x, yb, tr.images, targets, "linf", ["dark", "bright"], grid=(0.1, 0.3))
    for gi, eps in enumerate((0.1, 0.3)):
        flips = []
        for i in range(60):
            best, best_ink = None, np.inf
            for c in range(10):
                if c == y[i]:
                    continue
                t = tr.images[targets[i, c]]
                xe = np.clip(t, x[i] - eps, x[i] + eps)
                ink = np.maximum(x[i] - xe, 0).sum()
                if ink < best_ink:
                    best, best_ink = xe, ink
            flips.append((best.mean() > 0.3) != yb[i])
        assert doc["relabel_rate"]["all"][gi] == pytest.approx(np.mean(flips))
    assert doc["n"]["all"] == 60 and set(doc) >= {"norm", "eps", "relabel_rate", "n"}


def test_union_over_targets_and_ink():
    x = torch.tensor([[[[0.8, 0.0]]]])
    t = torch.tensor([[[[0.0, 0.8]]]])
    xe = path_point(x, t, torch.tensor([0.3]), "linf")
    assert removed_ink(x, xe).item() == pytest.approx(0.3)
    x, y, ref, ref_y = _data(20)
    targets = nearest_targets(x, y, ref, ref_y, 2)
    inv = invariance_radii(MeanJudge(0.45), x, y, ref, targets, "l2")
    rates = union_rate(inv, y, (0.5, 100.0))
    assert rates[1] == 1.0 and rates[0] == pytest.approx((inv.radius <= 0.5).mean())


def test_merge_takes_a_closer_invariance_witness_and_checks_the_certificate():
    x, y, ref, ref_y = _data(8)
    targets = nearest_targets(x, y, ref, ref_y, 2)
    inv = invariance_radii(MeanJudge(0.45), x, y, ref, targets, "l2")
    adv = Radii("l2", inv.radius * 2, None, np.zeros(8, bool), np.array(x), info={"seconds": 0})
    merged = merge_invariance(adv, inv)
    np.testing.assert_array_equal(merged.empirical, inv.radius)
    assert merged.info["invariance_tightened"] == 8 and merged.upper("invariance") is merged.invariance
    cert = Radii("l2", inv.radius * 2, inv.radius * 1.5, np.zeros(8, bool), np.array(x), info={})
    with pytest.raises(ConstraintViolation, match="certificate violated"):
        merge_invariance(cert, inv)


# ---- intervals ---------------------------------------------------------------------------------------
def test_the_interval_covers_the_true_quantile_about_95_percent_of_the_time():
    """4,000 draws of 150 points from Exp(1): the order-statistic interval of Q_0.05 covers the true
    quantile in at least 95 % of them (it is conservative by the binomial's discreteness)."""
    rng = np.random.default_rng(0)
    q, true = 0.05, expon.ppf(0.05)
    hits = [lo <= true <= hi for lo, hi in (quantile_interval(rng.exponential(size=150), q) for _ in range(4000))]
    coverage = float(np.mean(hits))
    print(f"coverage of the 95 % interval of Q_0.05 from 150 points: {coverage:.4f}")
    assert 0.945 <= coverage <= 0.99


def test_order_ranks_against_the_binomial():
    from scipy.stats import binom

    lo, hi = order_ranks(150, 0.05)
    assert (lo, hi) == (3, 14)
    mass = binom.cdf(hi - 1, 150, 0.05) - binom.cdf(lo - 1, 150, 0.05)  # P(l <= B <= u - 1)
    assert mass >= 0.95
    assert order_ranks(10, 0.05)[0] == 0  # too few points for a lower order statistic: the floor
    assert np.isinf(quantile_interval(np.arange(5.0), 0.9)[1])  # ... or an upper one: unbounded


def test_class_intervals_with_a_mask():
    v = np.r_[np.arange(100.0), np.arange(100.0) + 1000]
    lab = np.repeat([0, 1], 100)
    iv = class_intervals(v, lab, 3, 0.5, s=2.0, mask=v != 0)
    assert 2 * 40 <= iv[0, 0] <= 2 * 50 <= iv[0, 1] <= 2 * 62 and iv[1, 0] > 2000
    assert iv[2, 0] == 0 and np.isinf(iv[2, 1])  # a class without points: nothing known


def test_tramer_class_map_restricts_the_targets():
    from calib.budgets.invariance import TRAMER_TARGETS, _allowed

    y = np.array([0, 2, 9, 9])
    targets = np.where(np.eye(10, dtype=bool)[y], -1, 1)
    allowed = _allowed(targets, y, "tramer")
    for i, c in enumerate(y):
        assert set(np.flatnonzero(allowed[i])) == set(TRAMER_TARGETS[int(c)])
    assert _allowed(targets, y, "any").sum() == 4 * 9


def test_bad_rule_and_a_previous_table_are_one_line_exit_2(tmp_path, capsys, digits_table):
    import json

    from calib.cli import main

    assert main(["run", "--out", str(tmp_path / "r"), "--semantic-rule", "other"]) == 2
    err = capsys.readouterr().err
    assert "unknown semantic rule 'other'" in err and err.count("\n") == 1 and not (tmp_path / "r").exists()
    doc = digits_table.to_dict()
    doc["version"] = 3
    (tmp_path / "t.json").write_text(json.dumps(doc))
    assert main(["table", "check", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert "version 3 is not supported" in err and "95 % interval" in err and err.count("\n") == 1
