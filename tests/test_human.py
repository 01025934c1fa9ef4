"""Human-labelled sets (both layouts, every refusal) and agreement statistics against plain computations."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from calib.errors import DataError
from calib.human import agreement, load_human_sets, save_human_set, wilson

ROOT = Path(__file__).resolve().parents[1]
SHARED_HUMAN = ROOT.parent / "shared" / "data" / "human" / "invariance_examples"


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    from calib.data import load_dataset

    return load_dataset("mnist", mnist_dir.parent)


def test_the_published_development_set_loads(mnist):
    if not SHARED_HUMAN.is_dir():
        pytest.skip("shared human-labelled set not found")
    (s,) = load_human_sets(SHARED_HUMAN)
    assert s.name == "linf/automated_eps04" and s.layout == "tramer" and (s.norm, s.eps) == ("linf", 0.4)
    assert s.x.shape == (100, 1, 28, 28) and s.x.dtype == np.float32 and 0 <= s.x.min() and s.x.max() <= 1
    idx = s.check(mnist)
    assert int((s.human_label != mnist.labels[idx]).sum()) == 37  # people relabelled 37 of 100
    d = np.abs(s.x - mnist.images[idx]).reshape(100, -1).max(1)
    assert d.max() <= 0.4 + 1.5 / 255 and d.min() > 0.3


def _tramer_tree(root: Path, mnist, rng) -> dict[str, np.ndarray]:
    """A small tree in the published layout: all four set types, float 0-255 and manual indices."""
    base = root / "invariance_examples"
    (base / "linf").mkdir(parents=True)
    (base / "l0").mkdir()
    test_pos = np.flatnonzero(mnist.official_test) if mnist.official_test is not None else np.arange(len(mnist))
    idx = rng.choice(len(test_pos), 12, replace=False)
    manual_idx = rng.choice(len(test_pos), 6, replace=False)
    np.save(base / "indexs.npy", idx.astype(np.int64))
    np.save(base / "linf" / "manual_indexs.npy", manual_idx.astype(np.int64))
    clean = (mnist.images[test_pos[idx], 0] * 255).round()
    clean_m = (mnist.images[test_pos[manual_idx], 0] * 255).round()
    noise = lambda a, e: np.clip(a + rng.integers(-int(e * 255), int(e * 255) + 1, a.shape), 0, 255)  # noqa: E731
    sets = {"linf/automated_eps03": noise(clean, 0.3).astype(np.float32),      # float32 holding 0-255
            "linf/automated_eps04": noise(clean, 0.4).astype(np.uint8),
            "linf/manual_eps04": noise(clean_m, 0.4).astype(np.uint8),
            "l0/automated": np.where(rng.random(clean.shape) < 0.05, 255 - clean, clean).astype(np.uint8)}
    for name, arr in sets.items():
        np.save(base / f"{name}.npy", arr)
        np.save(base / f"{name}_labels.npy", rng.integers(0, 10, len(arr)).astype(np.int64))
    return sets


def test_all_four_published_set_types_load(tmp_path, mnist):
    rng = np.random.default_rng(0)
    arrays = _tramer_tree(tmp_path, mnist, rng)
    sets = {s.name: s for s in load_human_sets(tmp_path / "invariance_examples")}
    assert set(sets) == set(arrays)
    assert (sets["linf/automated_eps03"].norm, sets["linf/automated_eps03"].eps) == ("linf", 0.3)
    assert (sets["l0/automated"].norm, sets["l0/automated"].eps) == ("l0", None)
    np.testing.assert_allclose(sets["linf/automated_eps03"].x[:, 0], arrays["linf/automated_eps03"] / 255, atol=1e-6)
    manual = np.load(tmp_path / "invariance_examples" / "linf" / "manual_indexs.npy")
    assert np.array_equal(sets["linf/manual_eps04"].source_index, manual) and len(sets["linf/manual_eps04"]) == 6
    for s in sets.values():
        idx = s.check(mnist)  # every image within its radius of the source the indices name
        assert len(idx) == len(s)
    # one set by its file
    (one,) = load_human_sets(tmp_path / "invariance_examples" / "l0" / "automated.npy")
    assert one.name == "l0/automated"


def test_calib_npz_roundtrip(tmp_path, digits):
    idx = np.arange(0, 40, 2)
    x = np.clip(digits.images[idx] + 0.05, 0, 1)
    labels = digits.labels[idx].copy()
    labels[:3] = -1
    save_human_set(tmp_path / "mine.npz", x, labels, idx, name="my set", norm="linf", eps=0.05)
    (s,) = load_human_sets(tmp_path / "mine.npz")
    assert (s.name, s.norm, s.eps, s.layout) == ("my set", "linf", 0.05, "calib-npz")
    assert np.array_equal(s.check(digits), idx) and np.array_equal(s.human_label, labels)
    np.savez(tmp_path / "u8.npz", x=(x[:, 0] * 255).round().astype(np.uint8), human_label=labels, source_index=idx)
    (u,) = load_human_sets(tmp_path / "u8.npz")
    assert u.x.shape == x.shape and abs(u.x - x).max() <= 0.5 / 255 + 1e-6


def _bad_npz(path, **kw):
    base = {"x": np.zeros((4, 8, 8), np.float32), "human_label": np.zeros(4, np.int64),
            "source_index": np.arange(4)}
    base.update(kw)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize("kw, message", [
    ({"human_label": np.zeros(3, np.int64)}, r"human_label has shape \(3,\)"),
    ({"x": np.full((4, 8, 8), 2.0, np.float32)}, r"values must lie in \[0, 1\]"),
    ({"x": np.full((4, 8, 8), np.nan, np.float32)}, "NaN"),
    ({"x": np.zeros((4,), np.float32)}, "must be"),
    ({"source_index": None}, "missing array"),
    ({"human_label": np.array([0.5, 1, 2, 3])}, "must be integers"),
    ({"x": np.array([None] * 4, dtype=object)}, "pickled objects"),
])
def test_bad_calib_sets_get_one_line(tmp_path, kw, message):
    with pytest.raises(DataError, match=message):
        load_human_sets(_bad_npz(tmp_path / "bad.npz", **kw))


@pytest.mark.parametrize("kw, message", [
    ({"human_label": np.array([0, 1, 10, 2])}, "outside the 10 classes"),
    ({"source_index": np.array([0, 1, 2, 99999])}, "source indices must lie"),
    ({"x": np.zeros((4, 9, 9), np.float32)}, "images of shape"),
])
def test_sets_that_do_not_fit_the_dataset(tmp_path, digits, kw, message):
    (s,) = load_human_sets(_bad_npz(tmp_path / "bad.npz", **kw))
    with pytest.raises(DataError, match=message):
        s.check(digits)


def test_bad_tramer_files(tmp_path, mnist):
    rng = np.random.default_rng(1)
    _tramer_tree(tmp_path, mnist, rng)
    base = tmp_path / "invariance_examples"
    # wrong indices: the images are far from the sources they name
    np.save(base / "indexs.npy", np.load(base / "indexs.npy")[::-1].copy())
    (s,) = load_human_sets(base / "linf" / "automated_eps04.npy")
    with pytest.raises(DataError, match="farther than L-inf 0.4"):
        s.check(mnist)
    np.save(base / "linf" / "automated_eps03.npy", np.full((12, 28, 28), 300.0, np.float32))
    with pytest.raises(DataError, match=r"\[0, 255\]"):
        load_human_sets(base / "linf" / "automated_eps03.npy")
    np.save(base / "linf" / "manual_eps04_labels.npy", np.zeros(5, np.int64))
    with pytest.raises(DataError, match="labels has shape"):
        load_human_sets(base / "linf" / "manual_eps04.npy")
    (base / "l0" / "automated.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(DataError, match="l0/automated.npy"):
        load_human_sets(base / "l0" / "automated.npy")
    with pytest.raises(DataError, match="not the labels"):
        load_human_sets(base / "l0" / "automated_labels.npy")
    with pytest.raises(DataError, match="not found"):
        load_human_sets(tmp_path / "nothing.npz")


def _plain_wilson(k, n, z=1.959963984540054):
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return mid - half, mid + half


def test_agreement_against_plain_computations():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(3)
    n = 120
    y = rng.integers(0, 10, n)
    h = np.where(rng.random(n) < 0.35, (y + 1) % 10, y)
    h[:7] = -1
    score = (h != y) * 1.0 + rng.normal(0, 0.8, n)
    changed = score > 0.5
    label = np.where(changed, (y + 1) % 10, y)
    a = agreement(y, h, changed, score, label, seed=0)
    keep = h >= 0
    truth = (h != y)[keep]
    c = changed[keep]
    assert a["n"] == keep.sum() and a["unclear"] == 7
    assert a["confusion"] == {"tp": int((c & truth).sum()), "fp": int((c & ~truth).sum()),
                              "tn": int((~c & ~truth).sum()), "fn": int((~c & truth).sum())}
    assert a["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, c))
    assert a["auc"] == pytest.approx(roc_auc_score(truth, score[keep]))
    assert a["label_agreement"]["value"] == pytest.approx(np.mean(label[keep] == h[keep]))
    tp, fn = a["confusion"]["tp"], a["confusion"]["fn"]
    assert a["sensitivity"]["wilson95"] == pytest.approx(_plain_wilson(tp, tp + fn), abs=1e-9)
    lo, hi = a["balanced_accuracy_ci95"]
    assert lo <= a["balanced_accuracy"] <= hi and lo < hi
    assert a["auc_ci95"][0] <= a["auc"] <= a["auc_ci95"][1]
    assert wilson(0, 0) is None
    # the vectorised bootstrap statistics are scikit-learn's, resample by resample
    from calib.human.agreement import auc_rows, balanced_accuracy_rows

    idx = np.random.default_rng(5).integers(0, keep.sum(), (20, keep.sum()))
    t, s_, c_ = truth[idx], score[keep][idx], c[idx]
    for r in range(20):
        assert auc_rows(t, s_)[r] == pytest.approx(roc_auc_score(t[r], s_[r]))
        assert balanced_accuracy_rows(t, c_)[r] == pytest.approx(balanced_accuracy_score(t[r], c_[r]))
    only = agreement(y[:5], y[:5], changed[:5], score[:5], label[:5])
    assert only["auc"] is None and only["balanced_accuracy"] is None  # one kind of answer only


def _set_from(run_dir, part: str, path, n: int = 30, seed: int = 0):
    """A human-labelled set on some images of a run's ``part``: noise, and a third relabelled."""
    from calib.runfolder import open_run

    ctx = open_run(run_dir)
    idx = getattr(ctx.splits, part).indices[:n]
    rng = np.random.default_rng(seed)
    x = np.clip(ctx.dataset.images[idx] + rng.uniform(-0.2, 0.2, ctx.dataset.images[idx].shape), 0, 1)
    y = ctx.dataset.labels[idx]
    h = np.where(np.arange(n) % 3 == 0, (y + 1) % 10, y)
    save_human_set(path, x.astype(np.float32), h, idx, name=f"{part}-set", norm="linf", eps=0.2)
    return idx, y, h


def test_validate_command(tiny_run, tmp_path, capsys):
    import json
    import shutil

    from calib.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    _set_from(run, "test", tmp_path / "test-set.npz")
    assert main(["validate", str(run), "--human", str(tmp_path / "test-set.npz"), "--json", "--no-report"]) == 0
    doc = json.loads(capsys.readouterr().out)
    j = doc["judges"]
    assert {"classifier", "knn"} <= set(j)  # f always, and every judge whose models the run has
    a = j["knn"]["sets"]["test-set"]
    assert a["n"] == 30 and a["people_changed"] == 10 and set(a) >= {"balanced_accuracy", "auc", "label_agreement"}
    assert j["knn"]["all"]["n"] == 30 and (run / "validation" / "validation.json").exists()
    # the run's table now records its judge's measured agreement (no labelling session yet: no human block)
    from calib.budgets import load_table

    table = load_table(run / "eps_table.json")
    assert table.budget("input", "linf").human is None
    agree = table.judge_agreement
    assert agree["n"] == 30 and agree["sets"] == ["test-set"] and agree["auc"] == pytest.approx(j["knn"]["all"]["auc"])
    # a set whose sources the run trained on: one line, exit 2, nothing written
    _set_from(run, "train", tmp_path / "train-set.npz")
    before = (run / "validation" / "validation.json").read_bytes()
    assert main(["validate", str(run), "--human", str(tmp_path / "train-set.npz")]) == 2
    err = capsys.readouterr().err
    assert "are in the run's training part" in err and err.count("\n") == 1
    assert (run / "validation" / "validation.json").read_bytes() == before
    assert main(["validate", str(run), "--human", str(tmp_path / "test-set.npz"), "--judge", "oracle"]) == 2
    assert "unknown judge 'oracle'" in capsys.readouterr().err


def test_run_keeps_the_sources_out_of_training(tmp_path):
    """`calib run --human` moves the sources into the test part (stratified sizes unchanged) and
    validates every judge against the set."""
    from calib.data import load_dataset, split_dataset
    from calib.pipeline import run
    from calib.pipeline.config import HumanConfig

    from conftest import tiny

    ds = load_dataset("digits")
    base = split_dataset(ds, seed=0)
    idx = np.concatenate([base.train.indices[:15], base.calibration.indices[:5]])
    save_human_set(tmp_path / "hs.npz", ds.images[idx], ds.labels[idx], idx, name="clean")
    out = tmp_path / "run"
    summary = run(tiny(out, human=HumanConfig(sets=(str(tmp_path / "hs.npz"),)), attack=None, report=False))
    from calib.runfolder import open_run

    ctx = open_run(out)
    assert np.isin(idx, ctx.splits.test.indices).all() and not np.isin(idx, ctx.splits.train.indices).any()
    assert np.array_equal(np.bincount(ctx.splits.train.labels), np.bincount(base.train.labels))
    assert sorted(summary["splits"]["held_out"]) == sorted(idx.tolist())
    assert set(summary["validation"]) >= {"classifier", "knn"}
