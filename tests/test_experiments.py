"""The background experiments on a tiny digits run: each result checked against its own arrays or
an independent computation, the adversarial-training losses against a plain re-computation."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from calib.errors import ConfigError, DataError
from calib.experiments import load_experiments
from calib.pipeline import StageContext
from calib.runfolder import open_run
from calib.train.adversarial import (AdversarialMix, classifier_adversarial, embedding_adversarial,
                                     mixed_cross_entropy, mixed_triplet)


@pytest.fixture(scope="module")
def exp_run(tiny_run, tmp_path_factory):
    """A private copy of the tiny run with every experiment run once (small settings, ~1 min)."""
    from calib.experiments import (adversarial_training, linearity, robust_embedding, transferability,
                                   units_vs_random)

    out = tmp_path_factory.mktemp("exp") / "run"
    shutil.copytree(tiny_run[0], out)
    ctx = StageContext.open(out)
    transferability(ctx, epochs=3, steps=3, n=60)
    adversarial_training(ctx, epochs=2, eval_steps=3, n=60)
    robust_embedding(ctx, epochs=2, steps=1, probe_eps=0.05)
    linearity(ctx, sizes=(4, 8, 16), epochs=30)
    units_vs_random(ctx, top=6)
    return out, ctx, load_experiments(ctx)


def test_transfer_numbers_follow_from_arrays(exp_run):
    _, ctx, exps = exp_run
    doc, a = exps["transfer"]
    assert doc["models"]["disjoint"] and set(doc["attacks"]) == {"pgd-global-linf", "pgd-table-linf",
                                                                  "embedding-pgd-linf"}
    both = a["f1_correct"] & a["f2_correct"]
    for name, r in doc["attacks"].items():
        s1, s2 = a[f"{name}__f1_fooled"], a[f"{name}__f2_fooled"]
        assert r["n_both_correct"] == both.sum()
        assert r["f1_success"] == pytest.approx(s1[both].mean())
        if (both & s1).any():
            assert r["transfer_rate"] == pytest.approx(s2[both & s1].mean())
        c = int(a["labels"][0])
        m = both & (a["labels"] == c)
        assert r["per_class_f1_success"][str(c)] == pytest.approx(s1[m].mean())
    assert doc["models"]["f1"]["test_accuracy"] == pytest.approx(a["f1_correct"].mean())


def test_adversarial_training_numbers(exp_run):
    _, ctx, exps = exp_run
    doc, a = exps["adversarial-training"]
    assert set(doc["variants"]) == {"standard", "global", "per-class"}
    assert doc["variants"]["per-class"]["mix"]["eps"] == pytest.approx(list(ctx.table().eps("input", "linf")))
    for v, row in doc["variants"].items():
        assert row["clean_accuracy"] == pytest.approx(a[f"{v}__clean"].mean())
        for b in ("global", "per-class"):
            assert row[f"robust_accuracy_{b}"] == pytest.approx(a[f"{v}__robust_{b}"].mean())
            assert row[f"robust_accuracy_{b}"] <= row["clean_accuracy"] + 1e-12 or b == "per-class"


def test_robust_embedding_reproduces_the_runs_semantic_budget(exp_run):
    _, ctx, exps = exp_run
    doc, _ = exps["robust-embedding"]
    plain, robust = doc["embeddings"]["plain"], doc["embeddings"]["robust"]
    # the plain embedding measured here by the same procedure gives the run's own semantic budgets
    comps = ctx.table().budget("input", "linf").components
    emp = [np.inf if v is None else v for v in comps["semantic"]["empirical"]]
    assert np.allclose(plain["semantic_linf"], emp)
    assert np.allclose(plain["embedding_eps"], ctx.table().eps("embedding", "l2"), rtol=1e-5, atol=1e-7)
    assert all(s >= 0 for s in robust["semantic_linf"]) and len(robust["geometric_linf"]) == 10
    assert doc["robust_weights_sha256"] != ctx.model_config("embedding")["weights_sha256"]


def test_linearity_obeys_eps_m_n(exp_run):
    _, _, exps = exp_run
    doc, _ = exps["linearity"]
    for r in doc["rows"]:
        assert r["n"] == r["size"] ** 2
        assert r["predicted"] == pytest.approx(doc["eps"] * r["mean_abs_w"] * r["n"], rel=1e-9)
        assert r["max_rel_error_unclipped"] < 1e-9  # per example, w_y^T eta == eps * ||w_y||_1
        assert r["measured_clipped"] <= r["measured_unclipped"] + 1e-9


def test_units_top_images_and_purity(exp_run):
    _, ctx, exps = exp_run
    doc, a = exps["units"]
    from calib.models.infer import forward_batched

    test = ctx.splits.test
    e = forward_batched(ctx.model("embedding"), test.images).numpy().astype(np.float64)
    pos = {int(i): p for p, i in enumerate(test.indices)}
    for j, u in enumerate(doc["units"]):
        top = [pos[int(i)] for i in a["unit_indices"][j]]
        assert set(top) == set(np.argsort(-e[:, u], kind="stable")[:doc["top"]])
        labels = test.labels[top]
        assert doc["unit_purity"][j] == pytest.approx(np.bincount(labels).max() / len(labels))
    assert doc["mean_random_purity"] == pytest.approx(np.mean(doc["random_purity"]))


def test_report_shows_every_experiment(exp_run):
    out, _, _ = exp_run
    from calib.report import write_report
    from calib.report.browser import check_page, find_chromium

    text = write_report(open_run(out)).read_text(encoding="utf-8")
    missing = [n for n in ("transfer", "adversarial-training", "robust-embedding", "linearity", "units")
               if f'<section id="exp-{n}">' not in text]
    assert missing == []
    if find_chromium() is not None:
        check = check_page(out / "report.html")
        assert check.ok, check.problems()
        assert {"transfer", "adversarial-training", "robust-embedding-linf", "linearity", "units"} <= {
            f["name"] for f in check.figures}


def test_cli_experiment(exp_run, tmp_path, capsys):
    from calib.cli import main

    out, _, _ = exp_run
    assert main(["experiment", "units", "--run", str(out), "--no-report"]) == 0
    assert "units: done in" in capsys.readouterr().out
    assert main(["experiment", "units", "--run", str(out), "--no-report"]) == 0  # a stage: cached
    assert "units: reused" in capsys.readouterr().out
    assert main(["experiment", "transfer", "--run", str(out), "--eps", "0.1"]) == 2
    assert "experiment transfer does not take --eps" in capsys.readouterr().err
    assert main(["experiment", "nonsense", "--run", str(out)]) == 2
    assert main(["experiment", "units", "--run", str(tmp_path)]) == 2
    assert "is not a finished run" in capsys.readouterr().err
    with pytest.raises(DataError):
        open_run(tmp_path)


# ---- the training mixtures against plain re-computations ----------------------------------------------
@pytest.fixture(scope="module")
def batch(digits_splits):
    tr = digits_splits.train
    return torch.from_numpy(tr.images[:64]), torch.from_numpy(tr.labels[:64])


def test_mixed_cross_entropy_is_the_formula(digits_classifier, batch):
    x, y = batch
    f = digits_classifier.eval()
    for mix in (AdversarialMix(alpha=0.3, eps=0.1), AdversarialMix(alpha=0.5, eps=tuple(np.linspace(0, 0.2, 10)))):
        got = mixed_cross_entropy(f, x, y, mix)
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(f(xr), y, reduction="sum"), xr)
        eps = mix.eps_for(y).view(-1, 1, 1, 1)
        x_adv = torch.clamp(x + eps * torch.sign(g), 0, 1)
        want = mix.alpha * F.cross_entropy(f(x), y) + (1 - mix.alpha) * F.cross_entropy(f(x_adv), y)
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


def test_mixed_triplet_uses_clean_batch_as_reference(batch):
    from calib.models import build_model
    from calib.train.embedding import make_loss_and_miner

    x, y = batch
    torch.manual_seed(0)
    g = build_model({"kind": "embedding", "arch": "cnn-small", "input_shape": [1, 8, 8], "dim": 16}).eval()
    loss_fn, miner = make_loss_and_miner(0.2, "semihard")
    mix = AdversarialMix(alpha=0.25, eps=0.1, attack="pgd", steps=2)
    got = mixed_triplet(g, x, y, mix, loss_fn, miner, torch.Generator().manual_seed(5))
    x_adv = embedding_adversarial(g, x, y, mix, torch.Generator().manual_seed(5))
    emb, adv = g(x), g(x_adv)
    from pytorch_metric_learning import miners

    all_miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="all")
    want = 0.25 * loss_fn(emb, y, miner(emb, y)) + 0.75 * loss_fn(adv, y, all_miner(adv, y, emb, y), emb, y)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


@settings(max_examples=20, deadline=None)
@given(eps=st.lists(st.floats(0.0, 0.4), min_size=10, max_size=10), attack=st.sampled_from(["fgsm", "pgd"]),
       norm=st.sampled_from(["linf", "l2"]), seed=st.integers(0, 1000))
def test_adversarial_training_points_stay_in_their_class_ball(digits_classifier, batch, eps, attack, norm, seed):
    x, y = batch
    mix = AdversarialMix(eps=tuple(eps), attack=attack, norm=norm, steps=2)
    gen = torch.Generator().manual_seed(seed)
    for x_adv in (classifier_adversarial(digits_classifier, x, y, mix, gen),
                  embedding_adversarial(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8)), x, y, mix,
                                        gen)):
        d = (x_adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= mix.eps_for(y) * (1 + 1e-5) + 1e-6).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_adversarial_mix_validation():
    for bad in ({"alpha": 1.5}, {"eps": -0.1}, {"attack": "cw"}, {"norm": "l1"}, {"steps": 0}):
        with pytest.raises(ConfigError):
            AdversarialMix(**bad)
    with pytest.raises(ConfigError, match="per-class eps"):
        AdversarialMix(eps=(0.1, 0.2)).eps_for(torch.tensor([0, 5]))


def test_each_experiment_prints_what_it_found(exp_run):
    from rich.console import Console

    from calib.report import text

    _, _, exps = exp_run
    console = Console(record=True, width=200)
    for name, (doc, _) in exps.items():
        lines = text.experiment(name, doc)
        assert lines, name
        console.print(*lines)
    out = console.export_text()
    assert "transfer to f2" in out and "robust (per-class eps)" in out and "label purity" in out
