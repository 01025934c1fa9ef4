"""People's perceptibility threshold: the psychometric fit against plain computations, its degenerate
cases and calibration; the pair session (plan, answers, resume, bad input); the audit using the
fitted thresholds and naming their source; the audit redone when the thresholds change."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from calib.errors import CalibError, ConfigError, DataError
from calib.human.perceptibility import (MIN_TRIALS, fit, fit_class, log_likelihood, logistic_fit, profile_interval,
                                        size, to_ssim)
from calib.human.thresholds import audit_thresholds, load_fit
from calib.runfolder import artefacts as A, open_run


def _observer(x: np.ndarray, x_true: float, w: float, rng: np.random.Generator) -> np.ndarray:
    return rng.random(len(x)) < 1 / (1 + np.exp(-(x - x_true) / w))


def _design(n_examples: int, rng: np.random.Generator, levels: int = 7) -> np.ndarray:
    """x = log(1 - SSIM) of a jittered ladder from SSIM 0.995 to 0.6 (as the session makes it)."""
    gaps = np.geomspace(0.005, 0.4, levels)
    jitter = rng.uniform(-0.5, 0.5, (n_examples, 1)) * np.log(gaps[1] / gaps[0])
    return (np.log(gaps)[None] + jitter).ravel()


# ---- the fit ------------------------------------------------------------------------------------------
def test_mle_matches_scipy_on_the_plain_likelihood():
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    x = _design(12, rng)
    y = _observer(x, np.log(0.03), 0.4, rng).astype(float)

    def nll(b):
        z = b[0] + b[1] * x
        return float(np.sum(np.logaddexp(0, z) - y * z))

    ref = minimize(nll, [0.0, 1.0], method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000}).x
    b0, b1 = logistic_fit(x, y.astype(int))
    np.testing.assert_allclose([b0, b1], ref, rtol=1e-3)
    assert log_likelihood(x, y, b0, b1) == pytest.approx(-nll(ref), abs=1e-6)
    f = fit_class(1 - np.exp(x), y.astype(bool))
    assert f["jnd_x"] == pytest.approx(-ref[0] / ref[1], rel=1e-3)  # P(different) = 0.5 there
    assert f["jnd_ssim"] == pytest.approx(1 - np.exp(-ref[0] / ref[1]), abs=1e-4)
    assert f["threshold"] == f["jnd_ssim"] and f["reason"] is None


def test_profile_interval_matches_a_brute_force_grid():
    """The interval's ends against a dense grid over (threshold, slope) of the plain log-likelihood."""
    rng = np.random.default_rng(1)
    x = _design(8, rng)
    y = _observer(x, np.log(0.05), 0.5, rng).astype(int)
    b0, b1 = logistic_fit(x, y)
    x0 = -b0 / b1
    lo, hi = profile_interval(x, y, x0, log_likelihood(x, y, b0, b1))
    grid = np.linspace(x0 - 2, x0 + 2, 801)
    slopes = np.geomspace(1e-2, 60, 600)
    d = (x[None, None, :] - grid[:, None, None]) * slopes[None, :, None]
    ll = (y * d - np.logaddexp(0, d)).sum(-1).max(1)  # profile over slopes, per threshold
    inside = grid[ll >= log_likelihood(x, y, b0, b1) - 3.841458820694124 / 2]
    assert lo == pytest.approx(inside.min(), abs=6e-3) and hi == pytest.approx(inside.max(), abs=6e-3)
    f = fit_class(1 - np.exp(x), y.astype(bool))
    assert f["ci95_ssim"] == pytest.approx([to_ssim(hi), to_ssim(lo)], abs=1e-6)
    assert f["ci95_ssim"][0] < f["threshold"] < f["ci95_ssim"][1]


def test_interval_covers_the_true_threshold_about_95_percent():
    """Calibration: simulated observers with a known threshold (the session's jittered ladder)."""
    rng = np.random.default_rng(2)
    true = 0.97
    covered = fitted = 0
    for _ in range(40):
        x = _design(12, rng)
        f = fit_class(1 - np.exp(x), _observer(x, np.log(1 - true), 0.3, rng))
        if f["threshold"] is not None:
            fitted += 1
            covered += f["ci95_ssim"][0] <= true <= f["ci95_ssim"][1]
    assert fitted >= 38 and covered / fitted >= 0.85


def test_degenerate_fits_give_no_threshold_and_say_why():
    x = np.linspace(-5, -1, 30)
    s = 1 - np.exp(x)
    cases = {
        "too few trials": (s[: MIN_TRIALS - 1], x[: MIN_TRIALS - 1] > -3),
        "all answers same": (s, np.zeros(30, bool)),
        "all answers different": (s, np.ones(30, bool)),
        "separate perfectly": (s, x > -3),
        "<= 0": (s, (x < -3) ^ (np.arange(30) % 7 == 0)),  # more "different" for smaller perturbations
        "not significantly": (s, np.arange(30) % 2 == 1),
    }
    for why, (ss, y) in cases.items():
        f = fit_class(ss, y)
        assert f["threshold"] is None and why in f["reason"], (why, f["reason"])
    # a JND outside the SSIMs tested: "different" nearly everywhere, more so for larger perturbations
    y = np.ones(30, bool)
    y[[1, 5]] = False
    f = fit_class(s, y)
    assert f["threshold"] is None and "outside the SSIMs tested" in f["reason"] and f["jnd_ssim"] > s.max()


def test_fit_document_pools_classes_and_reports_controls():
    from calib.human.agreement import wilson

    rng = np.random.default_rng(3)
    x = _design(8, rng)
    n = len(x)
    trials = {"ssim": np.r_[1 - np.exp(x), 1 - np.exp(x), np.ones(20)],
              "different": np.r_[_observer(x, np.log(0.03), 0.3, rng), np.zeros(n, bool), np.arange(20) < 3],
              "control": np.r_[np.zeros(2 * n, bool), np.ones(20, bool)],
              "source_label": np.r_[np.zeros(n, int), np.ones(n, int), np.zeros(20, int)]}
    doc = fit(trials, ["a", "b", "c"], ["s1"])
    assert doc["per_class"]["a"]["threshold"] is not None and doc["per_class"]["a"]["n"] == n
    assert "all answers same" in doc["per_class"]["b"]["reason"]
    assert "too few" in doc["per_class"]["c"]["reason"] and doc["per_class"]["c"]["n"] == 0
    assert doc["pooled"]["n"] == 2 * n and doc["n_pairs"] == 2 * n
    assert doc["controls"] == {"n": 20, "false_alarms": 3, "rate": 0.15, "wilson95": list(wilson(3, 20))}
    assert doc["sessions"] == ["s1"] and "profile" in doc["method"] and doc["variable"] == "x = log(1 - SSIM)"
    json.dumps(doc, allow_nan=False)


# ---- the session --------------------------------------------------------------------------------------
@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    return out


def test_pair_session_plan_round_trip_and_resume(run_copy):
    from calib.audit import ssim
    from calib.human.pairs import NOT_ANSWERED, all_trials, open_pair_session, quantise, scaled

    run = open_run(run_copy)
    s = open_pair_session(run, "p1", n=70, seed=3)
    r = s.records
    ctrl = r["control"]
    assert 0.08 <= ctrl.mean() <= 0.16 and len(s) == int((~ctrl).sum() + ctrl.sum())
    assert set(r["side"][ctrl]) == {-1} and set(r["side"][~ctrl]) == {0, 1}  # both sides, at random
    assert np.array_equal(s.left[ctrl], s.right[ctrl]) and np.all(r["ssim"][ctrl] == 1)
    pert = np.where(r["side"][:, None, None, None] == 0, s.left, s.right)
    clean = np.where(r["side"][:, None, None, None] == 0, s.right, s.left)
    np.testing.assert_allclose(ssim(clean[~ctrl], pert[~ctrl]), r["ssim"][~ctrl], atol=1e-9)
    assert r["ssim"][~ctrl].max() > 0.99 and r["ssim"][~ctrl].min() < 0.7  # invisible to visible
    assert len(set(r["source_label"][~ctrl])) == 10
    # the perturbations are the run's own attack outputs, scaled
    with np.load(run_copy / A.attack("pgd-table-linf")[0], allow_pickle=False) as z:
        xa, xc, idx = z["x_adv"], z["x"], z["indices"]
    i = int(np.flatnonzero(~ctrl & (r["item_attack"] == 0))[0])
    j = int(np.flatnonzero(idx == r["source_index"][i])[0])
    np.testing.assert_array_equal(pert[i], scaled(xc[j:j + 1].astype(np.float64), (xa[j] - xc[j])[None].astype(np.float64),
                                                  r["t"][i:i + 1])[0])
    np.testing.assert_array_equal(clean[i], quantise(xc[j]))
    # answers are saved at once with their records; reopening resumes; the plan is not redrawn
    s.answer(0, 1)
    s.answer(2, 0)
    s.answer(0, 0)
    back = open_pair_session(run, "p1", n=5, seed=99)
    assert back.answers[0] == 0 and back.answers[2] == 0 and back.answers[1] == NOT_ANSWERED
    assert back.next_item() == 1 and np.array_equal(back.left, s.left)
    with np.load(run_copy / A.pair_session("p1")[0], allow_pickle=False) as z:
        assert list(z["item"]) == [0, 2] and list(z["different"]) == [0, 0]
        assert z["ssim"][0] == r["ssim"][0] and z["side"][1] == r["side"][2]
    # seeded: the same seed draws the same plan
    again = open_pair_session(run, "p2", n=70, seed=3)
    assert np.array_equal(again.left, s.left) and np.array_equal(again.records["side"], r["side"])
    again.answer(5, 1)
    trials, used = all_trials(run)
    assert used == ["p1", "p2"] and len(trials["ssim"]) == 3 and trials["different"].sum() == 1
    # the session files are not human-labelled sets: `calib validate --human RUN/human` does not take them
    assert not list((run_copy / "human").rglob("*.npz"))


def test_pair_session_refuses_bad_input(run_copy, capsys):
    from calib.cli import main
    from calib.human.pairs import open_pair_session

    run = open_run(run_copy)
    for kw in ({"name": "../evil"}, {"name": "ok", "attack": "nope"}, {"name": "ok", "controls": 1.0},
               {"name": "ok", "ssim_range": (0.6, 0.99)}, {"name": "ok", "levels": 1}):
        with pytest.raises(ConfigError):
            open_pair_session(run, **{"n": 14, **kw})
    s = open_pair_session(run, "p1", n=14)
    for item, v in ((len(s), 1), (-1, 0), (0, 2)):
        with pytest.raises(ConfigError):
            s.answer(item, v)
    (run_copy / A.pair_session("broken")[1]).write_bytes(b"not an npz")
    with pytest.raises(DataError, match="unreadable perceptibility session"):
        open_pair_session(run, "broken")
    assert main(["label", str(run_copy), "--task", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--task 'nope'" in err and "relabel or perceptibility" in err
    assert main(["label", str(run_copy), "--task", "perceptibility", "--attack", "nope"]) == 2
    assert "no attack 'nope'" in capsys.readouterr().err
    (run_copy / A.PERCEPTIBILITY).write_text("{not json")
    with pytest.raises(DataError, match="unreadable perceptibility fit"):
        load_fit(run)
    (run_copy / A.PERCEPTIBILITY).write_text('{"version": 0}')
    with pytest.raises(CalibError, match="not a perceptibility fit"):
        load_fit(run)


# ---- the audit ----------------------------------------------------------------------------------------
def _fit_doc(names: list[str], per_class: dict[str, float | None], pooled: float | None) -> dict:
    one = lambda t: {"threshold": t, "n": 28, "reason": None if t is not None else "all answers same"}  # noqa: E731
    return {"version": 1, "per_class": {n: one(per_class.get(n)) for n in names}, "pooled": {**one(pooled), "n": 140}}


def test_audit_thresholds_fall_back_per_class(run_copy):
    from calib.io import write_json

    run = open_run(run_copy)
    names = list(run.class_names)
    t = audit_thresholds(run, 0.9)
    assert t.values == (0.9,) * 10 and set(t.sources) == {"uncalibrated, SSIM ≥ 0.9"}
    write_json(run_copy / A.PERCEPTIBILITY, _fit_doc(names, {"0": 0.97, "3": 0.95}, 0.96))
    t = audit_thresholds(run, 0.9)
    assert t.values[0] == 0.97 and t.values[3] == 0.95 and t.values[1] == 0.96
    assert t.sources[0] == "people, 28 pairs" and t.sources[1] == "people, pooled over classes, 140 pairs"
    write_json(run_copy / A.PERCEPTIBILITY, _fit_doc(names, {"0": 0.97}, None))
    t = audit_thresholds(run, 0.9)
    assert t.values[:2] == (0.97, 0.9) and t.sources[1] == "uncalibrated, SSIM ≥ 0.9"


def test_the_audit_uses_people_thresholds_and_is_redone_when_they_change(run_copy):
    """Without a fit the audit says "uncalibrated, SSIM ≥ 0.9"; a new perceptibility.json re-audits
    (and nothing upstream), with each class's threshold and its source in the summary and the report."""
    from calib.audit import load_audits
    from calib.pipeline import run as run_pipeline
    from tests.conftest import tiny

    before = load_audits(open_run(run_copy))["pgd-table-linf"]
    assert set(before.meta["ssim_thresholds"]["sources"]) == {"uncalibrated, SSIM ≥ 0.9"}
    assert "SSIM threshold 0.9 (uncalibrated, SSIM ≥ 0.9)" in (run_copy / A.REPORT).read_text(encoding="utf-8")
    rng = np.random.default_rng(5)
    x = _design(40, rng)
    n = len(x)
    trials = {"ssim": 1 - np.exp(x), "different": _observer(x, np.log(1 - 0.99), 0.3, rng),
              "control": np.zeros(n, bool), "source_label": np.repeat(np.arange(10), n // 10)}
    from calib.io import write_json

    write_json(run_copy / A.PERCEPTIBILITY, fit(trials, list(open_run(run_copy).class_names), ["sim"]))
    summary = run_pipeline(tiny(run_copy))
    st = summary["stages"]
    assert all(st[k]["reused"] for k in st if not k.startswith("audit-") and k != "report"), st
    assert not any(st[k]["reused"] for k in st if k.startswith("audit-"))
    folder = open_run(run_copy)
    doc = load_fit(folder)
    a = load_audits(folder)["pgd-table-linf"]
    t = a.meta["ssim_thresholds"]
    for c, name in enumerate(folder.class_names):
        own = doc["per_class"][name]["threshold"]
        assert t["values"][c] == pytest.approx(own if own is not None else doc["pooled"]["threshold"])
        assert t["sources"][c].startswith("people, ")
    y = a.arrays["labels"]
    assert np.array_equal(a.arrays["perceptible"], a.arrays["ssim"] < np.asarray(t["values"])[y])
    assert np.array_equal(a.arrays["ssim"], before.arrays["ssim"])
    per = json.loads((run_copy / A.audit("pgd-table-linf")[1]).read_text())["per_class"]
    assert per["0"]["ssim_source"] == t["sources"][0] and per["0"]["ssim_min"] == t["values"][0]
    html = (run_copy / A.REPORT).read_text(encoding="utf-8")
    assert "SSIM threshold per class: 0: " in html and "people, " in html
    again = run_pipeline(tiny(run_copy))
    assert all(s["reused"] for s in again["stages"].values())  # the same fit: nothing redone
