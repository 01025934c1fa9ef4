"""``calib judge fit``: a judge fitted to people's labels, chosen and scored by nested cross-validation."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from calib.human.sets import save_human_set


def _people_set(run_dir, path, n=60, seed=0, shift=0):
    """Perturbed test images labelled as a person would: mixed halfway toward an image of another class
    and labelled that class when the mix is strong, else noise and the source label."""
    from calib.runfolder import open_run

    ctx = open_run(run_dir)
    test = ctx.splits.test
    rng = np.random.default_rng(seed)
    idx = test.indices[shift:shift + n]
    x0, y = ctx.dataset.images[idx], ctx.dataset.labels[idx]
    other = np.array([rng.choice(np.flatnonzero(test.labels != c)) for c in y])
    w = rng.uniform(0.0, 0.9, n)
    x = np.clip((1 - w[:, None, None, None]) * x0 + w[:, None, None, None] * test.images[other]
                + rng.uniform(-0.05, 0.05, x0.shape), 0, 1).astype(np.float32)
    h = np.where(w > 0.55, test.labels[other], y)
    h[::17] = -1  # a few unclear answers
    save_human_set(path, x, h, idx, name=path.stem, norm="linf", eps=1.0)
    return x, y, h


@pytest.fixture(scope="module")
def fitted_run(tiny_run, tmp_path_factory):
    from calib.cli import main

    tmp = tmp_path_factory.mktemp("fitted")
    run = tmp / "run"
    shutil.copytree(tiny_run[0], run)
    _people_set(run, tmp / "people.npz")
    assert main(["judge", "fit", str(run), "--human", str(tmp / "people.npz"), "--json"]) == 0
    return run, tmp


def test_fit_writes_a_judge_scored_by_nested_cv(fitted_run, capsys):
    run, tmp = fitted_run
    doc = json.loads((run / "models" / "judges" / "fitted.json").read_text())
    assert doc["format"] == "calib-fitted-judge" and set(doc["members"]) <= {"classifier", "knn"}
    assert doc["n_answers"] == 60 - len(range(0, 60, 17)) and "nested" in doc["cross_validation"]["protocol"]
    cv = doc["cross_validation"]["agreement"]
    assert cv["n"] == doc["n_answers"] and cv["balanced_accuracy"] > 0.6  # the mix is visible to the judges
    lo, hi = cv["balanced_accuracy_ci95"]
    assert lo <= cv["balanced_accuracy"] <= hi
    oof = doc["fitted_on"]["people"]["out_of_fold_logit"]
    assert len(oof) == 60 and all(oof[i] is None for i in range(0, 60, 17))  # unclear: not scored


def test_the_fitted_judge_is_the_plain_logistic_model(fitted_run):
    """Its margin is -(b + sum w (m - c) / s) over its members' margins (numpy), and its verdicts are
    scikit-learn's prediction on the same standardised features."""
    from calib.runfolder import open_run

    run, _ = fitted_run
    folder = open_run(run)
    j = folder.judge("fitted")
    doc = json.loads((run / "models" / "judges" / "fitted.json").read_text())
    test = folder.splits.test
    x, y = torch.from_numpy(test.images[:50]), torch.from_numpy(test.labels[:50])
    with torch.no_grad():
        m = np.stack([folder.judge(n).margin(x, y).double().numpy() for n in doc["members"]], 1)
        got = j.margin(x, y).numpy()
    z = (m - np.array(doc["centres"])) / np.array(doc["scales"])
    want = -(doc["intercept"] + z @ np.array(doc["coef"]))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert np.array_equal(j.changed(x, y).numpy(), want < 0)
    # the scales are the members' spread on clean calibration points
    cal = folder.splits.calibration
    with torch.no_grad():
        mc = folder.judge(doc["members"][0]).margin(torch.from_numpy(cal.images), torch.from_numpy(cal.labels)).double()
    assert doc["scales"][0] == pytest.approx(float(mc.std(unbiased=False)), rel=1e-6)


def test_validate_lists_it_cross_validated_on_its_sets_and_plain_elsewhere(fitted_run, capsys):
    from calib.cli import main

    run, tmp = fitted_run
    _people_set(run, tmp / "other.npz", n=40, seed=1, shift=60)
    capsys.readouterr()
    assert main(["validate", str(run), "--human", str(tmp / "people.npz"), "--human", str(tmp / "other.npz"),
                 "--json", "--no-report"]) == 0
    out = json.loads(capsys.readouterr().out)
    f = out["judges"]["fitted"]
    doc = json.loads((run / "models" / "judges" / "fitted.json").read_text())
    assert f["sets"]["people"]["protocol"] == "cross-validated"
    assert f["sets"]["people"]["balanced_accuracy"] == pytest.approx(
        doc["cross_validation"]["agreement"]["balanced_accuracy"])
    assert f["sets"]["other"]["protocol"] == "plain" and "plain on the others" in f["all"]["protocol"]
    assert out["judges"]["knn"]["sets"]["people"]["protocol"] == "plain"


def test_nested_cv_does_not_learn_noise():
    """With labels independent of the features, the nested out-of-fold AUC stays near 1/2 while the
    model selected and scored on the same labels looks better: the protocol does not leak."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from calib.human.fit import nested_cv, select

    rng = np.random.default_rng(0)
    z = rng.normal(size=(80, 3))
    t = rng.random(80) < 0.4
    g = np.arange(80)
    logit, _, _ = nested_cv(z, t, g, np.zeros((80, 3), np.int64), 2, seed=0)
    sel = select(z, t, g, 2, seed=0)
    lr = LogisticRegression(C=sel["C"], class_weight="balanced").fit(z[:, sel["cols"]], t)
    in_sample = roc_auc_score(t, lr.decision_function(z[:, sel["cols"]]))
    assert roc_auc_score(t, logit) < 0.65 < in_sample + 0.05 and roc_auc_score(t, logit) < in_sample


def test_a_run_uses_a_fitted_judge_and_bad_input_gets_one_line(fitted_run, capsys):
    from calib.cli import main

    from calib.judges import JudgeConfig
    from calib.pipeline import run as run_pipeline

    from conftest import tiny

    run, tmp = fitted_run
    # the run's judge: its radii set the semantic budgets, and it judges the audit
    s = run_pipeline(tiny(run, judge=JudgeConfig(name="fitted")))
    assert (run / "semantic" / "fitted.npz").exists()
    table = json.loads((run / "eps_table.json").read_text())
    assert table["policy"]["semantic"]["judge"] == "fitted"
    audit = json.loads(next((run / "audit").glob("pgd-table-*.json")).read_text())
    assert audit["meta"]["judge"]["kind"] == "fitted" if "meta" in audit else "fitted" in json.dumps(audit)
    assert s is not None
    # a built-in name, an unknown judge, a name that is not a name: exit 2, one line
    assert main(["judge", "fit", str(run), "--human", str(tmp / "people.npz"), "--name", "knn"]) == 2
    assert "built-in judge" in capsys.readouterr().err
    assert main(["judge", "fit", str(run), "--human", str(tmp / "people.npz"), "--judge", "ensemble"]) == 2
    assert "single built-in judges" in capsys.readouterr().err
    assert main(["validate", str(run), "--human", str(tmp / "people.npz"), "--judge", "fited"]) == 2
    err = capsys.readouterr().err
    assert "unknown judge 'fited'" in err and "fitted here: fitted" in err and err.count("\n") == 1
    # a member retrained since: refused, naming the fix
    from calib.runfolder import open_run

    doc = json.loads((run / "models" / "judges" / "fitted.json").read_text())
    doc["members_weights_sha256"][doc["members"][0]] = "0" * 64
    (run / "models" / "judges" / "stale.json").write_text(json.dumps(doc))
    from calib.errors import ConfigError

    with pytest.raises(ConfigError, match="weights changed since it was fitted"):
        open_run(run).judge("stale")
    (run / "models" / "judges" / "stale.json").unlink()
