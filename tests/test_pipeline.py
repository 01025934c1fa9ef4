"""``calib run``: stage caching keyed by inputs, resume after interruption, config files."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from calib.errors import ConfigError
from calib.pipeline import StageCache, load_run_config, run, run_config_from_mapping, stage_key
from calib.data.split import stratified_subset
from calib.pipeline import second_split

from conftest import tiny

ROOT = Path(__file__).resolve().parents[1]

def test_run_writes_every_artefact(tiny_run):
    out, summary = tiny_run
    for rel in ("models/classifier.safetensors", "models/embedding.json", "stats.npz", "semantic/knn.npz",
                "eps_table.json", "eps_table.csv", "per_sample_eps.npz", "probe.npz", "projection.npz",
                "report.html", "summary.json", "attacks/pgd-global-linf.npz", "audit/embedding-pgd-linf.json"):
        assert (out / rel).is_file(), rel
    assert not (out / "models" / "embedding2.json").exists()  # the default judge (knn) does not need g2
    assert set(summary["attacks"]) == {"pgd-global-linf", "pgd-table-linf", "invariance-table-linf",
                                       "embedding-pgd-linf"}
    assert not any(s["reused"] for s in summary["stages"].values())
    with np.load(out / "attacks" / "pgd-table-linf.npz") as z:
        assert len(z["labels"]) == 80 and np.bincount(z["labels"]).min() >= 7  # stratified subset
    table = json.loads((out / "eps_table.json").read_text())
    assert table["version"] == 4 and table["policy"]["semantic"]["judge"] == "knn"
    assert table["policy"]["semantic"]["judge_description"]["name"] == "knn"
    assert table["budgets"]["input/linf"]["components"]["semantic"]["certified"] is None
    audit = json.loads((out / "audit" / "pgd-global-linf.json").read_text())
    assert audit["judge"]["name"] == "knn" and summary["judge"] == "knn"


def test_second_identical_run_reuses_every_stage(tiny_run):
    out, first = tiny_run
    t0 = time.perf_counter()
    again = run(tiny(out))
    assert all(s["reused"] for s in again["stages"].values())
    assert again["stages"].keys() == first["stages"].keys()
    assert time.perf_counter() - t0 < 60  # generous; the point is that nothing is retrained
    assert again["attacks"] == first["attacks"]


def test_changed_option_recomputes_only_downstream(tiny_run, tmp_path):
    out, first = tiny_run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    changed = run(tiny(copy, q=0.2))
    reused = {k for k, s in changed["stages"].items() if s["reused"]}
    assert {"classifier", "embedding", "stats", "semantic-knn", "attack-pgd-global-linf", "probe",
            "projection"} <= reused
    assert {"budgets", "attack-pgd-table-linf", "attack-embedding-pgd-linf", "report"}.isdisjoint(reused)
    # a tampered artefact is detected and recomputed
    (copy / "stats.npz").write_bytes(b"garbage")
    again = run(tiny(copy, q=0.2))
    assert not again["stages"]["stats"]["reused"]


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    import importlib

    pstats = importlib.import_module("calib.pipeline.stages.stats")
    real = pstats.measure_stats

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pstats, "measure_stats", boom)
    cfg = tiny(tmp_path, attack=None, report=False, semantic=None)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert (tmp_path / "cache" / "classifier.json").exists() and not (tmp_path / "cache" / "stats.json").exists()
    monkeypatch.setattr(pstats, "measure_stats", real)
    done = run(cfg)
    assert done["stages"]["classifier"]["reused"] and done["stages"]["embedding"]["reused"]
    assert not done["stages"]["stats"]["reused"] and (tmp_path / "eps_table.json").exists()


def test_killed_cli_run_resumes(tmp_path):
    """SIGKILL a real `calib run` during a later stage; the re-run reuses the finished stages."""
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'out = "{tmp_path / "run"}"\nclassifier_epochs = 3\nembedding_epochs = 15\nprogress = false\n'
                   'tsne_points = 200\n[semantic]\nnorms = ["linf"]\niters = 2\nsteps = 2\n'
                   '[attack]\nn = 40\nsteps = 3\n')
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", "--config", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "run" / "cache" / "classifier.json"
    t0 = time.time()
    while not manifest.exists() and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.2)
    assert manifest.exists(), "the classifier stage never finished"
    time.sleep(1.0)  # now inside the (15-epoch) embedding stage
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "cache" / "embedding.json").exists()
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["classifier"]["reused"] and not summary["stages"]["embedding"]["reused"]
    assert (tmp_path / "run" / "report.html").exists()


def test_stage_cache_unit(tmp_path):
    cache = StageCache(tmp_path)
    n = {"calls": 0}

    def compute():
        n["calls"] += 1
        (tmp_path / "a.txt").write_text("x")
        return {"value": 1}

    r1 = cache.run("s", {"p": 1}, ["a.txt"], compute)
    r2 = cache.run("s", {"p": 1}, ["a.txt"], compute)
    assert (r1.reused, r2.reused, n["calls"], r2.info) == (False, True, 1, {"value": 1})
    cache.run("s", {"p": 2}, ["a.txt"], compute)
    assert n["calls"] == 2
    (tmp_path / "a.txt").write_text("y")  # changed output
    cache.run("s", {"p": 2}, ["a.txt"], compute)
    assert n["calls"] == 3
    assert stage_key("s", {"a": (1, 2), "b": np.float64(0.5)}) == stage_key("s", {"b": 0.5, "a": [1, 2]})


def test_attack_subset_and_second_split(digits, digits_splits):
    y = digits_splits.test.labels
    sel = stratified_subset(y, 50, 0)
    assert len(sel) in range(45, 56) and np.array_equal(sel, np.sort(sel))
    assert np.array_equal(stratified_subset(y, 50, 0), sel) and np.array_equal(stratified_subset(y, None, 0), np.arange(len(y)))
    tr2, va2 = second_split(digits, digits_splits, 1)
    assert not set(tr2.indices) & set(digits_splits.test.indices)
    assert set(tr2.indices) != set(digits_splits.train.indices)


def test_config_files(tmp_path):
    t = tmp_path / "a.toml"
    t.write_text('dataset = "digits"\nseed = 3\nq = 0.1\n[attack]\nnorms = ["linf", "l2"]\nn = 10\n'
                 '[audit]\nssim_min = 0.8\n')
    cfg = load_run_config(t)
    assert (cfg.seed, cfg.q, cfg.attack.norms, cfg.attack.n, cfg.audit.ssim_min) == (3, 0.1, ("linf", "l2"), 10, 0.8)
    assert load_run_config(t, {"seed": 5}).seed == 5
    t.write_text("[robust_embedding]\neps = 0.05\nattack = 'fgsm'\n")
    cfg = load_run_config(t)
    assert cfg.robust_embedding.mix().describe()["eps"] == 0.05 and cfg.robust_embedding.attack == "fgsm"
    y = tmp_path / "a.yaml"
    y.write_text("seed: 2\nsemantic: false\nattack:\n  steps: 4\n")
    cfg = load_run_config(y)
    assert cfg.semantic is None and cfg.attack.steps == 4 and cfg.seed == 2
    for text, match in (("sede = 1\n", "unknown option"), ("[attack]\nnorm = 1\n", "unknown option"),
                        ("seed = [\n", "invalid TOML"), ("[attack]\nnorms = ['l7']\n", "attack norms")):
        t.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_run_config(t)
    with pytest.raises(ConfigError, match="must end in"):
        load_run_config(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError):
        run_config_from_mapping({"audit": False})


def test_cli_run_audit_report_and_errors(tiny_run, tmp_path, capsys):
    from calib.cli import main

    out, _ = tiny_run
    assert main(["audit", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pgd-global-linf" in text and "VALID" in text
    assert main(["audit", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pgd-table-linf"]["overall"]["n"] == 80
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1_000_000
    bad = tmp_path / "bad.toml"
    bad.write_text("epochz = 3\n")
    capsys.readouterr()
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown option(s) epochz" in err
    assert main(["audit", str(tmp_path)]) == 2
    assert main(["run", "--rule", "nonsense", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x" / "cache").exists()


def test_cli_audits_imported_adversarial_examples(tiny_run, tmp_path, capsys):
    """Examples made by another library (here torchattacks' FGSM) are audited with the run's models."""
    import shutil

    import torch
    import torchattacks

    from calib.audit import AuditResult
    from calib.cli import main
    from calib.runfolder import open_run

    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    ctx = open_run(out)
    test = ctx.splits.test
    f = ctx.model("classifier")
    x, y = torch.from_numpy(test.images[:40]), torch.from_numpy(test.labels[:40])
    x_adv = torchattacks.FGSM(f, eps=0.2)(x, y).numpy()
    path = tmp_path / "fgsm.npz"
    np.savez(path, x_adv=x_adv, indices=test.indices[:40])
    assert main(["audit", str(out), "--adversarial", str(path), "--name", "ta-fgsm"]) == 0
    a = AuditResult.load(out / "audit", "ta-fgsm")
    pred = f(torch.from_numpy(x_adv)).argmax(1).numpy()
    clean_ok = f(torch.from_numpy(test.images[:40])).argmax(1).numpy() == test.labels[:40]
    assert np.array_equal(a.arrays["success"], (pred != test.labels[:40]) & clean_ok)
    assert np.allclose(a.arrays["eps"], np.abs(x_adv - test.images[:40]).reshape(40, -1).max(1))
    assert "ta-fgsm" in (out / "report.html").read_text(encoding="utf-8")[-3_000_000:]
    capsys.readouterr()
    for arrays, msg in ((dict(x_adv=x_adv, indices=ctx.splits.train.indices[:40]), "training images"),
                        (dict(x_adv=x_adv[:, :, :4], indices=test.indices[:40]), "shape"),
                        (dict(x_adv=x_adv + 2, indices=test.indices[:40]), "must lie in [0, 1]"),
                        (dict(x_adv=x_adv), "missing array")):
        np.savez(path, **arrays)
        assert main(["audit", str(out), "--adversarial", str(path)]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1
    path.write_bytes(b"PK\x03\x04 truncated")
    assert main(["audit", str(out), "--adversarial", str(path)]) == 2


def test_run_with_other_judges(tiny_run, tmp_path):
    """--judge lipschitz (certified bound) with every other judge measured too: only the judges' models
    and what depends on them rerun; then back to knn, which reuses its radii."""
    import shutil

    from calib.judges import JudgeConfig
    from calib.pipeline import RobustEmbeddingConfig

    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    judge = JudgeConfig(name="lipschitz", also=("ensemble", "classifier", "robust"))
    summary = run(tiny(out, judge=judge, semantic_bound="certified", report=False,
                       robust_embedding=RobustEmbeddingConfig(eps=0.05, steps=1)))
    st = summary["stages"]
    assert all(st[k]["reused"] for k in ("classifier", "embedding", "stats", "attack-pgd-global-linf"))
    for k in ("embedding2", "robust-embedding", "lipschitz-embedding", "semantic-lipschitz", "semantic-ensemble",
              "semantic-classifier", "semantic-robust", "budgets", "audit-pgd-global-linf", "probe"):
        assert not st[k]["reused"], k
    table = json.loads((out / "eps_table.json").read_text())
    policy = table["policy"]["semantic"]
    assert policy["judge"] == "lipschitz" and policy["bound"] == "certified"
    sem = table["budgets"]["input/linf"]["components"]["semantic"]
    assert all(c <= e for c, e in zip(sem["certified"], sem["empirical"]) if e is not None)
    np.testing.assert_allclose(table["budgets"]["input/linf"]["eps"],
                               np.minimum(table["budgets"]["input/linf"]["components"]["geometric"], sem["certified"]))
    assert json.loads((out / "audit" / "pgd-global-linf.json").read_text())["judge"]["name"] == "lipschitz"
    robust = json.loads((out / "models" / "robust-embedding.json").read_text())
    assert robust["training"]["adversarial"]["eps"] == 0.05
    assert json.loads((out / "models" / "lipschitz-embedding.json").read_text())["metrics"]["lipschitz_l2"] > 0
    # g2 is really independent: another seed and another subset of the training part (never calibration/test)
    e1 = json.loads((out / "models" / "embedding.json").read_text())
    e2 = json.loads((out / "models" / "embedding2.json").read_text())
    assert e1["data"]["train_fingerprint"] != e2["data"]["train_fingerprint"]
    assert e2["data"]["train_parent_fingerprint"] == e1["data"]["train_fingerprint"]
    assert e1["weights_sha256"] != e2["weights_sha256"]
    back = run(tiny(out, report=False))
    assert back["stages"]["semantic-knn"]["reused"] and not back["stages"]["budgets"]["reused"]
    assert json.loads((out / "eps_table.json").read_text())["policy"]["semantic"]["judge"] == "knn"
    with pytest.raises(ConfigError, match="no certificate"):
        tiny(out, semantic_bound="certified")
    with pytest.raises(ConfigError, match="unknown judge 'people': not built in"):
        run(tiny(out, judge=JudgeConfig(name="people")))  # no models/judges/people.json: refused before any work

def test_code_hash_follows_imports_but_not_type_checking(tmp_path, monkeypatch):
    from calib.pipeline import cache as pc

    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fakepkg import c\n\n\n"
                              "def f():\n    from .b import g  # inside a function: still code a runs\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    (pkg / "c.py").write_text("X = 1\n")
    (pkg / "d.py").write_text("import fakepkg.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert pc.code_modules("fakepkg.a", prefix="fakepkg") == ["fakepkg.a", "fakepkg.b"]
    assert pc.code_modules("fakepkg.d", prefix="fakepkg") == ["fakepkg.a", "fakepkg.b", "fakepkg.d"]
    h = pc.code_hash("fakepkg.a", prefix="fakepkg")
    (pkg / "c.py").write_text("X = 2\n")  # only under TYPE_CHECKING: not run
    assert pc.code_hash("fakepkg.a", prefix="fakepkg") == h
    (pkg / "b.py").write_text("def g():\n    return 2\n")  # imported (transitively for d): run
    assert pc.code_hash("fakepkg.a", prefix="fakepkg") != h

    def one():
        return 1

    def two():
        return 2

    assert pc.code_hash(one) != pc.code_hash(two)  # a stage's own compute function counts too


@pytest.mark.parametrize("module, recomputed", [
    ("calib.stats.pairwise", {"stats", "budgets", "report"}),
    ("calib.audit.perceptibility", {"budgets", "audit-pgd-global-linf", "audit-pgd-table-linf",
                                    "audit-invariance-table-linf", "audit-embedding-pgd-linf", "probe", "report"}),
])
def test_editing_code_recomputes_its_stages_and_what_depends_on_them_only(tiny_run, tmp_path, monkeypatch, module,
                                                                         recomputed):
    """No version to bump: a stage's key hashes the code it runs (its calib imports, transitively)."""
    import shutil

    from calib.pipeline import cache as pc

    out, first = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    target, real = pc._module_file(module), pc._read_source
    monkeypatch.setattr(pc, "_read_source", lambda p: real(p) + (b"\n# edited\n" if p == target else b""))
    again = run(tiny(copy))
    assert {k for k, s in again["stages"].items() if not s["reused"]} == recomputed
    assert again["stages"].keys() == first["stages"].keys()


def test_the_device_reaches_every_stage(tiny_run, tmp_path):
    """`--device` (here cpu, and auto, which is cpu on a machine without CUDA) reaches every stage that
    runs tensors, as recorded in each stage's manifest; the report and the budgets run none."""
    import shutil

    from calib.device import resolve_device

    import torch

    out, first = tiny_run
    tensor_free = {"budgets", "report"}
    expected = str(resolve_device("auto"))
    # without CUDA "auto" is "cpu": recomputing the run twice on the CPU would check nothing more
    devices = ("cpu", "auto") if torch.cuda.is_available() else ("auto",)
    if not torch.cuda.is_available():
        assert expected == "cpu"
    for device in devices:
        copy = tmp_path / device
        shutil.copytree(out, copy)
        shutil.rmtree(copy / "cache")  # recompute every stage on this device
        summary = run(tiny(copy, device=device))
        for name, stage in summary["stages"].items():
            manifest = json.loads((copy / "cache" / f"{name}.json").read_text())
            want = None if name in tensor_free else (expected if device == "auto" else "cpu")
            assert manifest["device"] == stage["device"] == want, name


def test_the_stage_graph_is_well_formed(digits, digits_splits, tmp_path):
    """Every artefact a stage reads is written by an earlier stage, no two stages write one file, and
    every stage's code can be hashed; the graph holds the judges' models and stages the config asks for."""
    from calib.judges import JudgeConfig
    from calib.pipeline.cache import code_hash
    from calib.pipeline.run import build_stages

    cfg = tiny(tmp_path, judge=JudgeConfig(name="knn", also=("classifier", "lipschitz", "ensemble")))
    stages = build_stages(cfg, len(digits_splits.train))
    produced: set[str] = set()
    for s in stages:
        assert set(s.reads) <= produced, (s.name, set(s.reads) - produced)
        assert not set(s.outputs) & produced, s.name
        produced |= set(s.outputs)
        assert len(code_hash(s.compute, *s.code)) == 64
    names = [s.name for s in stages]
    assert names == ["classifier", "embedding", "embedding2", "lipschitz-embedding", "stats", "semantic-knn",
                     "semantic-classifier", "semantic-lipschitz", "semantic-ensemble", "budgets",
                     "attack-pgd-global-linf", "audit-pgd-global-linf", "attack-pgd-table-linf",
                     "audit-pgd-table-linf", "attack-invariance-table-linf", "audit-invariance-table-linf",
                     "attack-embedding-pgd-linf", "audit-embedding-pgd-linf", "probe",
                     "projection", "report"]
    assert not any(p.exists() for p in tmp_path.iterdir())  # declaring the graph writes nothing
