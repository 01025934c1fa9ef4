"""The run folder as one object: the split it recorded, rebuilt in one place; every single-stage command
on a run with non-default fractions, seed and judge; one place names each artefact; stages read
their options, never the run's config."""
from __future__ import annotations

import ast
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import calib
from calib.cli import main
from calib.data import SplitSpec, load_dataset, split_dataset
from calib.errors import DataError
from calib.runfolder import RunFolder, artefacts as A, open_run

ROOT = Path(__file__).resolve().parents[1]
#: a run nothing about which is the default: fractions, seed, judge
UNUSUAL = """dataset = "digits"
seed = 3
fractions = [0.5, 0.2, 0.3]
classifier_epochs = 3
embedding_epochs = 3
tsne_points = 200
progress = false
[judge]
name = "knn2"
[semantic]
norms = ["linf"]
iters = 2
steps = 3
[attack]
n = 60
steps = 4
"""


def call(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def unusual(tmp_path_factory):
    """A finished tiny run with fractions 0.5/0.2/0.3, seed 3 and the knn2 judge (~20 s)."""
    folder = tmp_path_factory.mktemp("unusual")
    cfg = folder / "run.toml"
    cfg.write_text(UNUSUAL)
    assert main(["run", "--config", str(cfg), "--out", str(folder / "run"), "--no-progress"]) == 0
    return folder / "run"


@pytest.fixture()
def run(unusual, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(unusual, out)
    return out


def test_the_record_rebuilds_exactly_the_runs_split(unusual, digits):
    folder = open_run(unusual)
    record = json.loads((unusual / A.RECORD).read_text())
    assert record["split"]["seed"] == 3 and record["split"]["fractions"] == [0.5, 0.2, 0.3]
    plain = split_dataset(digits, seed=3, fractions=(0.5, 0.2, 0.3))  # the independent reference
    for part in ("train", "calibration", "test"):
        assert np.array_equal(folder.split(part).indices, getattr(plain, part).indices)
        assert record["split"]["parts"][part] == getattr(plain, part).fingerprint
    default = split_dataset(digits, seed=3)
    assert not np.array_equal(folder.split("train").indices, default.train.indices)
    assert folder.judge_config().name == "knn2" and folder.class_names == list(digits.class_names)


def test_a_record_that_no_longer_matches_the_data_is_refused(run, digits):
    doc = json.loads((run / A.RECORD).read_text())
    doc["split"]["parts"]["train"] = "0" * 64
    (run / A.RECORD).write_text(json.dumps(doc))
    with pytest.raises(DataError, match="the train part rebuilt from run.json differs"):
        open_run(run).splits
    (run / A.RECORD).write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        open_run(run)
    (run / A.RECORD).unlink()
    with pytest.raises(DataError, match="is not a calib run folder"):
        open_run(run)


def test_attack_on_a_run_with_other_fractions(run, capsys):
    """The reported bug: `calib attack --run R --eps 0.1` on a run with fractions [0.5, 0.2, 0.3]."""
    rc, out, err = call(capsys, "attack", "--run", str(run), "--eps", "0.1", "--n", "40", "--no-progress")
    assert rc == 0, err
    with np.load(run / A.attack("pgd-eps0.1-linf-test")[0]) as z:
        test = open_run(run).split("test")
        assert np.isin(z["indices"], test.indices).all() and len(z["indices"]) == 40
        assert (z["dist_linf"] <= 0.1 + 1e-6).all()
    rc, out, err = call(capsys, "attack", "--run", str(run), "--n", "30", "--split", "calibration", "--no-progress")
    assert rc == 0, err
    rc, out, err = call(capsys, "attack", "--run", str(run), "--attack", "embedding-pgd", "--n", "20",
                        "--no-progress")
    assert rc == 0, err
    rc, out, err = call(capsys, "attack", "--run", str(run), "--attack", "probe", "--n", "30")
    assert rc == 0 and "class-mixing probe" in out, err
    # what calib attack writes, calib audit --adversarial audits (indices, eps, pred are in the file)
    rc, out, err = call(capsys, "audit", str(run), "--adversarial", str(run / A.attack("pgd-eps0.1-linf-test")[0]),
                        "--name", "cli-pgd")
    assert rc == 0, err
    audited = json.loads((run / A.audit("cli-pgd")[1]).read_text())
    assert audited["overall"]["n"] == 40 and audited["judge"]["name"] == "knn2"
    # the run's own attacks are never replaced behind its back
    rc, out, err = call(capsys, "attack", "--run", str(run), "--name", "pgd-table-linf", "--n", "10", "--no-progress")
    assert rc == 2 and "is the run's own attack" in err and err.count("\n") == 1
    rc, out, err = call(capsys, "audit", str(run), "--adversarial", str(run / A.attack("pgd-eps0.1-linf-test")[0]),
                        "--name", "pgd-global-linf")
    assert rc == 2 and "one of the run's own attacks" in err


def test_stats_and_budgets_on_the_run(run, capsys):
    before = json.loads((run / A.EPS_TABLE).read_text())
    stats_before = (run / A.STATS_NPZ).read_bytes()
    rc, out, err = call(capsys, "stats", "--run", str(run), "--no-progress")  # the run's own: its cached stage
    assert rc == 0 and "separation" in out, err
    assert (run / A.STATS_NPZ).read_bytes() == stats_before
    rc, out, err = call(capsys, "stats", "--run", str(run), "--modes", "sampled", "--no-progress")
    assert rc == 2 and "matrix_modes" in err and "--out" in err and err.count("\n") == 1
    rc, out, err = call(capsys, "stats", "--run", str(run), "--out", str(run.parent / "other"), "--modes", "sampled",
                        "--no-progress")
    assert rc == 0, err
    other = open_run(run.parent / "other")
    assert json.loads((run.parent / "other" / A.STATS_JSON).read_text())["split"]["fractions"] == [0.5, 0.2, 0.3]
    assert np.array_equal(other.split("calibration").indices, open_run(run).split("calibration").indices)
    rc, out, err = call(capsys, "stats", "--out", str(run), "--seed", "0", "--no-progress")
    assert rc == 2 and "was split with seed 3, not 0" in err and err.count("\n") == 1
    rc, out, err = call(capsys, "budgets", "--run", str(run), "--no-progress")  # the run's own options
    assert rc == 0, err
    after = json.loads((run / A.EPS_TABLE).read_text())
    assert after["policy"]["semantic"]["judge"] == "knn2" and after["policy"]["q"] == before["policy"]["q"]
    rc, out, err = call(capsys, "budgets", "--run", str(run), "--q", "0.1", "--no-progress")
    assert rc == 2 and "q 0.05 -> 0.1" in err and "--out" in err and err.count("\n") == 1
    rc, out, err = call(capsys, "budgets", "--run", str(run), "--q", "0.1", "--out", str(run / "q01.json"),
                        "--no-progress")
    assert rc == 0, err
    assert json.loads((run / "q01.json").read_text())["policy"]["q"] == 0.1
    rc, out, err = call(capsys, "budgets", "--run", str(run), "--semantic", "--judge", "classifier",
                        "--semantic-norms", "linf", "--semantic-iters", "1", "--semantic-steps", "2",
                        "--out", str(run / "clf.json"), "--no-progress")
    assert rc == 0, err
    assert json.loads((run / "clf.json").read_text())["policy"]["semantic"]["judge"] == "classifier"
    assert (run / A.semantic("classifier")[0]).exists()


def _human_set(run: Path, path: Path, n: int = 30) -> None:
    from calib.human import save_human_set

    folder = open_run(run)
    test = folder.split("test")
    rng = np.random.default_rng(0)
    x = np.clip(test.images[:n] + rng.uniform(-0.2, 0.2, test.images[:n].shape), 0, 1).astype(np.float32)
    h = np.where(np.arange(n) % 3 == 0, (test.labels[:n] + 1) % 10, test.labels[:n])
    save_human_set(path, x, h, test.indices[:n], name="unusual-set", norm="linf", eps=0.2)


def test_audit_validate_experiment_report(run, tmp_path, capsys):
    rc, out, err = call(capsys, "audit", str(run))
    assert rc == 0 and "pgd-table-linf" in out, err
    rc, out, err = call(capsys, "audit", str(run), "--json")
    assert rc == 0 and json.loads(out)["pgd-table-linf"]["judge"]["name"] == "knn2", err
    folder = open_run(run)
    test = folder.split("test")
    x_adv = np.clip(test.images[:20] + 0.1, 0, 1).astype(np.float32)
    np.savez(tmp_path / "adv.npz", x_adv=x_adv, indices=test.indices[:20])
    rc, out, err = call(capsys, "audit", str(run), "--adversarial", str(tmp_path / "adv.npz"), "--name", "shifted")
    assert rc == 0, err
    assert json.loads((run / A.audit("shifted")[1]).read_text())["judge"]["name"] == "knn2"
    _human_set(run, tmp_path / "hs.npz")
    rc, out, err = call(capsys, "validate", str(run), "--human", str(tmp_path / "hs.npz"))
    assert rc == 0 and "unusual-set" in out, err
    table = open_run(run).table()
    assert table.semantic_judge == "knn2" and table.judge_agreement["n"] == 30
    rc, out, err = call(capsys, "experiment", "units", "--run", str(run), "--no-progress")
    assert rc == 0 and "units: done" in out, err
    rc, out, err = call(capsys, "report", str(run))
    assert rc == 0, err
    text = (run / A.REPORT).read_text(encoding="utf-8")
    assert '<section id="exp-units">' in text and "shifted" in text[-3_000_000:]


def test_label_starts_and_stops(run):
    proc = subprocess.Popen([sys.executable, "-m", "calib", "label", str(run), "--session", "s1", "--n", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        deadline, url = time.time() + 60, None
        while time.time() < deadline and url is None and proc.poll() is None:
            m = re.search(r"serving (http://127\.0\.0\.1:\d+/)", proc.stdout.readline())
            url = m.group(1) if m else None
        assert url, proc.stdout.read()
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0 and "session saved to" in rest, rest
    assert (run / A.session("s1")[1]).exists()


def test_a_second_run_reuses_every_stage(unusual, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(unusual, out)
    cfg = tmp_path / "run.toml"
    cfg.write_text(UNUSUAL)
    rc, text, err = call(capsys, "run", "--config", str(cfg), "--out", str(out), "--no-progress")
    assert rc == 0, err
    summary = json.loads((out / A.SUMMARY).read_text())
    assert all(s["reused"] for s in summary["stages"].values())


# ---- one place for each name, options from one source -------------------------------------------------
FILE_NAMES = [v for k, v in vars(A).items() if k.isupper() and isinstance(v, str) and "." in v]


@pytest.mark.parametrize("name", FILE_NAMES)
def test_each_artefact_file_is_named_in_one_place(name):
    src = Path(calib.__file__).parent
    spelled = [str(p.relative_to(src)) for p in src.rglob("*.py") if f'"{name}"' in p.read_text(encoding="utf-8")]
    assert spelled == ["runfolder/artefacts.py"], spelled


def test_the_split_is_built_in_one_place():
    src = Path(calib.__file__).parent
    callers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                     if re.search(r"\bsplit_dataset\(", p.read_text(encoding="utf-8")))
    assert callers == ["data/split.py"]
    text = (src / "data" / "split.py").read_text(encoding="utf-8")
    assert len(re.findall(r"return split_dataset\(", text)) == 1  # SplitSpec.build


STAGE_MODULES = sorted((Path(calib.__file__).parent / "pipeline" / "stages").glob("*.py"))


@pytest.mark.parametrize("path", STAGE_MODULES, ids=lambda p: p.stem)
def test_stage_computations_read_their_options_not_the_run_config(path):
    """A stage's key is its options: a computation that read the run's config could drift from it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = [f"line {n.lineno}: ctx.{n.attr}" for n in ast.walk(tree)
           if isinstance(n, ast.Attribute) and n.attr in ("config", "record", "judge_config")
           and isinstance(n.value, ast.Name) and n.value.id == "ctx"]
    assert bad == []


def test_the_check_sees_a_stage_reading_the_config(tmp_path):
    p = tmp_path / "stage.py"
    p.write_text("def compute(ctx, o):\n    return ctx.config['q']\n")
    with pytest.raises(AssertionError):
        test_stage_computations_read_their_options_not_the_run_config(p)


def test_a_new_folder_is_written_only_when_the_command_succeeds(tmp_path, digits):
    folder = RunFolder.new(tmp_path / "f", digits, SplitSpec(seed=1), source="digits")
    assert not (tmp_path / "f").exists()
    assert np.array_equal(folder.split("test").indices, split_dataset(digits, seed=1).test.indices)
    assert load_dataset("digits").fingerprint == folder.record["dataset"]["fingerprint"]
