"""Geometric budgets against plain computations; the epsilon table's schema, round trips and refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calib.budgets import (EpsTableError, Policy, geometric_budget, geometric_table, global_violations,
                           load_table, per_sample_budgets)
from calib.errors import ConfigError, DataError
from calib.stats import StatsConfig, compute_stats


@pytest.fixture(scope="module")
def digits_stats(digits, digits_splits):
    return compute_stats(digits, digits_splits, StatsConfig(embedding=False, matrix_modes=("sampled",)),
                         show_progress=False)


@pytest.fixture()
def table(digits_stats):
    return geometric_table(digits_stats, Policy(q=0.1, s=0.9))


def test_geometric_budget_matches_plain(digits_stats):
    ps = digits_stats.pair("input", "l2", "calibration-train")
    ds_, dd, y = ps.nn.d_same, ps.nn.d_diff, ps.query_labels
    b = geometric_budget(ds_, dd, y, 10, Policy(q=0.1, s=0.9))
    for c in range(10):
        m = y == c
        eps = 0.9 * min(np.quantile(dd[m] / 2, 0.1), np.quantile(ds_[m], 0.1))
        assert b.eps[c] == pytest.approx(eps, abs=1e-12)
        safe = [(eps < s_) and (eps < d_ / 2) for s_, d_ in zip(ds_[m], dd[m])]
        assert b.coverage[c] == pytest.approx(np.mean(safe))
        assert b.n[c] == m.sum()
    np.testing.assert_allclose(b.per_sample, 0.9 * np.minimum(dd / 2, ds_))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(20, 80), k=st.integers(2, 4), q=st.floats(0.0, 0.3), s=st.floats(0.1, 1.0),
       seed=st.integers(0, 10_000))
def test_budget_properties(n, k, q, s, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n)
    d_same, d_diff = rng.gamma(3, size=y.size), rng.gamma(5, size=y.size)  # continuous: no ties
    b = geometric_budget(d_same, d_diff, y, k, Policy(q=q, s=s))
    assert (b.eps >= 0).all() and (b.eps <= s * np.minimum(b.half_d_diff_q, b.d_same_q) + 1e-12).all()
    # each condition fails for at most a share q of a class (plus one point of quantile rounding)
    assert (b.coverage >= 1 - 2 * q - 2.0 / n - 1e-9).all()
    # a per-sample ball shrunk a little is always safe; the global-eps report is its complement
    assert ((0.999 * b.per_sample < d_same) & (0.999 * b.per_sample < d_diff / 2)).all()
    v = global_violations(float(b.eps[0]), d_same, d_diff, y, k)
    assert v["either"][0] == pytest.approx(1 - b.coverage[0])
    assert (v["either"] >= np.maximum(v["contains_same"], v["reaches_halfway"]) - 1e-12).all()


def test_budget_refuses_bad_input():
    with pytest.raises(ConfigError, match="quantile level"):
        Policy(q=1.0)
    with pytest.raises(ConfigError, match="safety factor"):
        Policy(s=0)
    with pytest.raises(DataError, match="neighbour"):
        geometric_budget(np.array([np.inf, 1.0]), np.array([1.0, 1.0]), np.array([0, 1]), 2)
    with pytest.raises(DataError, match="no points"):
        geometric_budget(np.ones(3), np.ones(3), np.array([0, 0, 0]), 2)


def test_table_contents_and_global_baselines(table, digits, digits_stats):
    assert table.fingerprint == digits.fingerprint and table.class_names == list("0123456789")
    assert set(table.budgets) == {"input/l2", "input/linf", "input/l1"}
    assert table.policy["q"] == 0.1 and table.policy["pair"] == "calibration-train"
    base = table.baselines["input/linf"]["0.3"]
    ps = digits_stats.pair("input", "linf", "calibration-train")
    y = ps.query_labels
    for c in range(10):
        m = y == c
        assert base["either"][c] == pytest.approx(np.mean((0.3 >= ps.nn.d_same[m]) | (0.3 >= ps.nn.d_diff[m] / 2)))
    assert set(table.baselines["input/l2"]) == {"1.5", "2.0", "4.5"}
    per = per_sample_budgets(digits_stats)
    assert per["input/l2"]["eps"].shape == y.shape


def test_table_round_trips_json_and_csv(tmp_path, table):
    path = table.save(tmp_path / "eps_table.json")
    a, b = load_table(path), load_table(path.with_suffix(".csv"))
    assert a.to_dict() == table.to_dict() == b.to_dict()
    b.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(path.read_text())


def test_eps_for_shapes_and_values(table):
    labels = np.array([3, 0, 9, 3])
    e = table.eps_for(labels, "input", "linf", as_tensor=False)
    assert e.shape == (4, 1, 1, 1) and e.dtype == np.float32
    np.testing.assert_allclose(e.ravel(), table.eps("input", "linf")[labels].astype(np.float32))
    t = table.eps_for(torch.tensor(labels), "input", "l2")
    assert isinstance(t, torch.Tensor) and t.shape == (4, 1, 1, 1)
    with pytest.raises(EpsTableError, match=r"labels \[10\] are outside"):
        table.eps_for(np.array([1, 10]))
    with pytest.raises(EpsTableError, match="no embedding/l2 budget"):
        table.eps_for(labels, "embedding", "l2")
    with pytest.raises(EpsTableError, match="calibrated on data"):
        table.eps_for(labels, fingerprint="0" * 64)
    assert table.eps_for(labels, fingerprint="0" * 64, allow_mismatch=True).shape == (4, 1, 1, 1)


def _doc(table):
    return json.loads(json.dumps(table.to_dict()))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("version"), "missing version"),
    (lambda d: d.update(version=5), "version 5 is not supported"),
    (lambda d: d.update(version=3), "version 3 is not supported .*95 % interval"),
    (lambda d: d["budgets"]["input/l2"].pop("interval"), "missing interval"),
    (lambda d: d["budgets"]["input/l2"]["interval"].__setitem__(0, [5.0, 6.0]), "does not contain its eps"),
    (lambda d: d.update(version=2), "version 2 is not supported .*one string everywhere"),
    (lambda d: d["policy"].update(semantic={"judge": {"name": "knn"}, "bound": "empirical"}),
     "policy.semantic.judge must name the judge"),
    (lambda d: d.update(version=1), "version 1 is not supported .*1-NN margin"),
    (lambda d: d.update(schema="other"), "schema is 'other'"),
    (lambda d: d["dataset"].pop("fingerprint"), "fingerprint is missing"),
    (lambda d: d["budgets"]["input/l2"]["eps"].pop(), "has 9 values for 10 classes"),
    (lambda d: d["dataset"]["class_names"].pop(), "has 10 values for 9 classes"),
    (lambda d: d["budgets"]["input/l2"]["eps"].__setitem__(2, -0.1), "class '2' is -0.1"),
    (lambda d: d["budgets"]["input/l2"]["eps"].__setitem__(4, None), "class '4' is None"),
    (lambda d: d["budgets"].update({"input/l7": d["budgets"]["input/l2"]}), "unknown norm 'l7'"),
    (lambda d: d["budgets"].update({"pixel/l2": d["budgets"]["input/l2"]}), "unknown space 'pixel'"),
    (lambda d: d.update(budgets={}), "budgets are missing"),
])
def test_malformed_tables_are_refused_with_one_line(tmp_path, table, edit, message):
    doc = _doc(table)
    edit(doc)
    p = tmp_path / "t.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(EpsTableError, match=message) as err:
        load_table(p)
    assert "\n" not in str(err.value)


def test_nan_and_inf_eps_refused(tmp_path, table):
    for bad in (float("nan"), float("inf")):
        doc = _doc(table)
        doc["budgets"]["input/l2"]["eps"][0] = bad
        p = tmp_path / "t.json"
        p.write_text(json.dumps(doc, allow_nan=True))  # writes NaN / Infinity, which json.loads accepts
        with pytest.raises(EpsTableError, match="class '0' is (nan|inf); it must be a finite number"):
            load_table(p)


def test_unreadable_tables(tmp_path):
    p = tmp_path / "t.json"
    p.write_text("{not json")
    with pytest.raises(EpsTableError, match="not valid JSON"):
        load_table(p)
    with pytest.raises(EpsTableError, match="not found"):
        load_table(tmp_path / "missing.json")
    c = tmp_path / "t.csv"
    c.write_text("class,eps\n0,0.1\n")
    with pytest.raises(EpsTableError, match="malformed eps table CSV"):
        load_table(c)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(5, 60), q=st.floats(0.0, 0.5), levels=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_coverage_rule_guarantees_coverage_even_with_ties(n, q, levels, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n)
    d_same = rng.integers(1, levels + 1, y.size) / levels  # few distinct values: many ties
    d_diff = 2 * rng.integers(1, levels + 1, y.size) / levels
    b = geometric_budget(d_same, d_diff, y, 2, Policy(q=q, rule="coverage"))
    assert (b.coverage >= 1 - q - 1e-12).all()
    # and it is the largest such radius: the next tied value up loses coverage
    for c in (0, 1):
        m = np.minimum(d_diff[y == c] / 2, d_same[y == c])
        above = np.min(m[m > b.eps[c]])
        assert np.mean(m > above) < 1 - q + 1e-12 or np.all(m <= above)


def test_coverage_rule_on_real_linf_ties(digits_stats):
    ps = digits_stats.pair("input", "linf", "calibration-train")
    args = (ps.nn.d_same, ps.nn.d_diff, ps.query_labels, 10)
    quant, cov = geometric_budget(*args, Policy(q=0.05)), geometric_budget(*args, Policy(q=0.05, rule="coverage"))
    assert (cov.coverage >= 0.95 - 1e-12).all()
    assert quant.coverage.min() < 0.95  # the DESIGN formula loses coverage to ties here
    with pytest.raises(ConfigError, match="unknown budget rule"):
        Policy(rule="magic")


@pytest.fixture(scope="module")
def embedded(digits, digits_splits):
    """Statistics with a (briefly trained) embedding, and that embedding's vectors of the whole dataset."""
    from calib.train import TrainConfig, embed, train_embedding

    g = train_embedding(digits_splits.train, TrainConfig(epochs=3, seed=0, progress=False), dim=16).model
    e = embed(g, digits.images)
    stats = compute_stats(digits, digits_splits, StatsConfig(input_norms=("l2",), matrix_modes=("sampled",)),
                          embeddings=e, show_progress=False)
    return stats, e


@pytest.mark.parametrize("rule", ["quantile", "coverage"])
def test_embedding_margin_budget_matches_plain_numpy(embedded, digits_splits, rule):
    """eps_emb(c) = s * Q_q{(d_diff_g - d_same_g) / 2} from the saved embeddings, brute force in float64."""
    stats, e = embedded
    cal, tr = digits_splits.calibration, digits_splits.train
    ec, et = e[cal.indices].astype(np.float64), e[tr.indices].astype(np.float64)
    d = np.sqrt(((ec[:, None] - et[None]) ** 2).sum(-1))
    same = cal.labels[:, None] == tr.labels[None]
    m = (np.where(~same, d, np.inf).min(1) - np.where(same, d, np.inf).min(1)) / 2
    policy = Policy(q=0.1, s=0.8, rule=rule)
    b = geometric_table(stats, policy).budgets["embedding/l2"]
    assert b["rule"] == "margin"
    for c in range(10):
        mc = m[cal.labels == c]
        if rule == "quantile":
            eps = max(0.8 * np.quantile(mc, 0.1), 0.0)
            assert b["eps"][c] == pytest.approx(eps, abs=1e-6)
            assert b["components"]["margin_q"][c] == pytest.approx(np.quantile(mc, 0.1), abs=1e-6)
        else:  # the largest radius whose coverage is >= 1 - q
            assert np.mean(mc > b["eps"][c]) >= 0.9 - 1e-12
        assert b["coverage"][c] == pytest.approx(np.mean(mc > b["eps"][c]))
        assert b["components"]["negative_margin_share"][c] == pytest.approx(np.mean(mc <= 0))
    ps = per_sample_budgets(stats, policy)["embedding/l2"]
    np.testing.assert_allclose(ps["eps"], 0.8 * np.maximum(m, 0), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), q=st.floats(0.0, 0.5), s=st.floats(0.1, 2.0), seed=st.integers(0, 2 ** 16))
def test_margin_budget_properties(n, q, s, seed):
    from calib.budgets import margin_budget

    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n)
    d_same = rng.uniform(0, 1, 2 * n)
    d_diff = rng.uniform(0, 1.5, 2 * n)
    for rule in ("quantile", "coverage"):
        b = margin_budget(d_same, d_diff, labels, 2, Policy(q=q, s=s, rule=rule))
        m = (d_diff - d_same) / 2
        assert (b.eps >= 0).all() and np.array_equal(b.margin, m)
        for c in range(2):
            assert b.coverage[c] == pytest.approx(np.mean(m[labels == c] > b.eps[c]))
            if rule == "coverage" and s <= 1:
                assert b.coverage[c] >= 1 - q - 1e-12 or b.eps[c] == 0
    with pytest.raises(DataError, match="a class needs at least 2 points"):
        margin_budget(np.array([np.inf, 0.1]), np.array([1.0, 1.0]), np.array([0, 1]), 2)
