"""Semantic budgets: the judge's robustness radius, bracketed by an attack and a certificate, on real digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calib.perturb.invariants import ConstraintViolation, perturbation_norms
from calib.budgets import EpsTableError, final_table, geometric_table
from calib.budgets.per_sample import PerSampleError, load_per_sample, per_sample_arrays, write_per_sample
from calib.budgets.semantic import Radii, class_quantile, load_radii, robustness_radii, save_radii, semantic_budget
from calib.errors import ConfigError
from calib.judges import KnnJudge
from calib.models.lipschitz import lipschitz_constant
from calib.stats import StatsConfig, compute_stats
from calib.train import TrainConfig, embed, train_embedding


@pytest.fixture(scope="module")
def setup(digits, digits_splits):
    tr = digits_splits.train
    g = train_embedding(tr, TrainConfig(epochs=4, seed=0, progress=False), dim=16).model
    lip = train_embedding(tr, TrainConfig(epochs=4, seed=0, progress=False), arch="lipschitz-mlp", width=64,
                          depth=2, dim=16, margin=1.0).model
    stats = compute_stats(digits, digits_splits, StatsConfig(input_norms=("linf", "l2"), matrix_modes=("sampled",)),
                          embeddings=embed(g, digits.images), show_progress=False)
    judges = {"knn": KnnJudge(g, tr.images, tr.labels, 10),
              "lipschitz": KnnJudge(lip, tr.images, tr.labels, 10, lipschitz=lipschitz_constant(lip), name="lipschitz",
                                    kind="lipschitz")}
    cal = digits_splits.calibration
    radii = {(name, norm): robustness_radii(j, cal.images, cal.labels, norm, iters=6, steps=8)
             for name, j in judges.items() for norm in ("linf", "l2")}
    return stats, geometric_table(stats), judges, radii


def test_every_empirical_radius_has_a_witness(setup, digits_splits):
    _, _, judges, radii = setup
    cal = digits_splits.calibration
    for (name, norm), r in radii.items():
        j = judges[name]
        found = np.isfinite(r.empirical) & ~r.clean_wrong
        assert found.mean() > 0.9
        x, xw = torch.from_numpy(cal.images[found]), torch.from_numpy(r.witnesses[found])
        y = torch.from_numpy(cal.labels[found])
        assert j.changed(xw, y).all()  # the judge really changed its class at the witness
        d = perturbation_norms(x, xw, norm).numpy()
        np.testing.assert_allclose(d, r.empirical[found], rtol=1e-12)  # r is the witness's own distance
        assert (xw >= 0).all() and (xw <= 1).all()
        # the clean points the judge already gets wrong have radius 0 under both bounds
        wrong = j.changed(torch.from_numpy(cal.images), torch.from_numpy(cal.labels)).numpy()
        assert np.array_equal(r.clean_wrong, wrong) and (r.empirical[wrong] == 0).all()
        if r.certified is not None:
            assert (r.certified[wrong] == 0).all()


def test_certified_never_exceeds_empirical(setup, digits_splits):
    _, _, _, radii = setup
    y = digits_splits.calibration.labels
    for norm in ("linf", "l2"):
        r = radii[("lipschitz", norm)]
        assert r.certified is not None and r.checked > 0
        assert (r.certified <= r.empirical).all()  # per point
        sb = semantic_budget(r, y, 10, q=0.05)
        assert (sb.certified <= sb.empirical).all()  # and per class
        # L-inf certificate = L2 certificate / sqrt(n)
    np.testing.assert_allclose(radii[("lipschitz", "linf")].certified, radii[("lipschitz", "l2")].certified / 8)
    assert radii[("knn", "linf")].certified is None


def test_semantic_budget_is_the_class_quantile(setup, digits_splits):
    _, _, _, radii = setup
    y = digits_splits.calibration.labels
    r = radii[("knn", "linf")]
    sb = semantic_budget(r, y, 10, q=0.1, s=0.5)
    for c in range(10):  # over the points the judge gets right
        right = r.empirical[(y == c) & ~r.clean_wrong]
        assert sb.empirical[c] == pytest.approx(0.5 * np.quantile(right, 0.1))
        assert sb.n_correct[c] == right.size and sb.clean_error[c] == pytest.approx(1 - right.size / (y == c).sum())
        lo, hi = sb.empirical_interval[c]
        assert lo <= sb.empirical[c] <= hi
    assert sb.certified is None


def test_class_quantile_with_points_without_a_change():
    v = np.array([1.0, 2.0, np.inf, np.inf, 3.0, np.inf])
    lab = np.array([0, 0, 0, 1, 1, 1])
    q = class_quantile(v, lab, 2, 0.5)
    assert q[0] == 2.0 and q[1] == np.inf
    assert class_quantile(v, lab, 2, 0.0)[1] == 3.0


def test_a_certificate_above_a_witness_is_a_bug(setup, digits_splits):
    _, _, _, radii = setup
    r = radii[("lipschitz", "l2")]
    bad = Radii("l2", r.empirical, r.empirical * 1.5 + 1.0, r.clean_wrong, r.witnesses)
    with pytest.raises(ConstraintViolation, match="certified"):
        semantic_budget(bad, digits_splits.calibration.labels, 10)


def test_final_table_brackets_and_bounds(setup, digits_splits):
    stats, geo, judges, radii = setup
    for name, bound in (("knn", "empirical"), ("lipschitz", "empirical"), ("lipschitz", "certified")):
        rr = {n: radii[(name, n)] for n in ("linf", "l2")}
        fin = final_table(geo, stats, rr, judges[name].describe(), bound=bound, rule="adversarial")
        assert fin.policy["method"] == "final" and fin.semantic_judge == name and fin.semantic_rule == "adversarial"
        for norm in ("linf", "l2"):
            b = fin.budgets[f"input/{norm}"]
            sem = b["components"]["semantic"]
            chosen = np.array([np.inf if v is None else v for v in sem[bound]], float)
            np.testing.assert_allclose(b["eps"], np.minimum(b["components"]["geometric"], chosen))
            assert sem["judge"] == name and sem["bound"] == bound
            if name == "knn":
                assert sem["certified"] is None
            else:
                assert all(c <= e for c, e in zip(sem["certified"], sem["empirical"]) if e is not None)
            # coverage measured: geometric safety and eps below the chosen radius
            ps = stats.pair("input", norm, "calibration-train")
            r = rr[norm].certified if bound == "certified" else rr[norm].empirical
            e = np.asarray(b["eps"])[ps.query_labels]
            ok = (e < ps.nn.d_same) & (e < ps.nn.d_diff / 2) & (e < r)
            for c in range(10):
                assert b["coverage"][c] == pytest.approx(ok[ps.query_labels == c].mean())
        assert fin.to_dict()["budgets"]["embedding/l2"] == geo.to_dict()["budgets"]["embedding/l2"]
    with pytest.raises(ConfigError, match="no certificate"):
        final_table(geo, stats, {"linf": radii[("knn", "linf")]}, judges["knn"].describe(), bound="certified",
                    rule="adversarial")
    with pytest.raises(ConfigError, match="no invariance radii"):
        final_table(geo, stats, {"linf": radii[("knn", "linf")]}, judges["knn"].describe())
    # a table whose certified bracket exceeds its empirical one is refused on load
    fin = final_table(geo, stats, {"linf": radii[("lipschitz", "linf")]}, judges["lipschitz"].describe(),
                      rule="adversarial")
    doc = fin.to_dict()
    sem = doc["budgets"]["input/linf"]["components"]["semantic"]
    sem["certified"][0] = (sem["empirical"][0] or 0) + 1.0
    with pytest.raises(EpsTableError, match="exceeds the empirical"):
        type(fin).from_dict(doc)


def test_radii_and_per_sample_files_roundtrip(setup, digits_splits, tmp_path):
    stats, geo, judges, radii = setup
    cal = digits_splits.calibration
    rr = {n: radii[("lipschitz", n)] for n in ("linf", "l2")}
    save_radii(tmp_path, "lipschitz", rr, cal.indices, cal.labels, judges["lipschitz"].describe())
    back, doc, idx, lab = load_radii(tmp_path, "lipschitz")
    assert np.array_equal(idx, cal.indices) and doc["judge"]["name"] == "lipschitz"
    for n in rr:
        assert np.array_equal(back[n].empirical, rr[n].empirical) and np.array_equal(back[n].certified, rr[n].certified)
    from calib.budgets import Policy

    arrays = per_sample_arrays(stats, Policy(), "calibration-train", rr, "certified")
    write_per_sample(tmp_path / "ps.npz", arrays, {"judge": "lipschitz", "bound": "certified"})
    ps = load_per_sample(tmp_path / "ps.npz")
    got = ps.eps_for(cal.indices[:5], "input", "l2", as_tensor=False).ravel()
    p = stats.pair("input", "l2", "calibration-train")
    geo_ps = np.minimum(p.nn.d_diff / 2, p.nn.d_same)
    np.testing.assert_allclose(got, np.minimum(geo_ps, rr["l2"].certified)[:5].astype(np.float32))
    assert ps.meta["bound"] == "certified"
    with pytest.raises(PerSampleError, match="no per-sample budget"):
        ps.eps_for(digits_splits.train.indices[:2])
