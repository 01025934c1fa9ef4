"""The CLI end to end: real runs on digits / MNIST, one-line errors with exit code 2."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calib import cli
from calib.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def call(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_describe_digits_and_mnist(capsys, mnist_dir):
    rc, out, _ = call(capsys, "describe", "--json")
    info = json.loads(out)
    assert rc == 0 and info["dataset"]["num_samples"] == 1797
    assert info["splits"]["train"]["num_samples"] == 1259
    rc, out, _ = call(capsys, "describe", "--dataset", "mnist", "--data-dir", str(mnist_dir))
    assert rc == 0 and "10000" in out and "ee4f89803b17" in out.replace("\n", "")


def test_train_commands_write_loadable_artefacts(capsys, tmp_path):
    rc, out, err = call(capsys, "train", "classifier", "--out", str(tmp_path), "--epochs", "2", "--no-progress")
    assert rc == 0, err
    assert "test accuracy" in out
    model, cfg = load_model(tmp_path / "classifier")
    assert cfg["spec"]["kind"] == "classifier" and cfg["data"]["dataset"] == "digits"
    assert cfg["data"]["data_fingerprint"] and cfg["versions"]["torch"]
    rc, out, err = call(capsys, "train", "embedding", "--out", str(tmp_path), "--epochs", "2", "--dim", "8",
                        "--miner", "hard", "--no-progress")
    assert rc == 0, err
    _, cfg = load_model(tmp_path / "embedding")
    assert cfg["spec"]["dim"] == 8 and cfg["training"]["miner"] == "hard"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """One `calib run` with the default options (2 epochs) for the tests that read it (each copies it
    before writing)."""
    out = tmp_path_factory.mktemp("cli") / "r"
    assert cli.main(["run", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    return out


def test_run_writes_summary_with_provenance(cli_run):
    summary = json.loads((cli_run / "summary.json").read_text())
    assert summary["dataset"]["fingerprint"] == "c8f75e3983bc2967" + summary["dataset"]["fingerprint"][16:]
    for m in ("classifier", "embedding"):
        _, cfg = load_model(cli_run / "models" / m)
        assert cfg["weights_sha256"] == summary["models"][m]["weights_sha256"]
    assert summary["run"]["seed"] == 0 and summary["versions"]["calib"]
    table = json.loads((cli_run / "eps_table.json").read_text())
    assert table["dataset"]["fingerprint"] == summary["dataset"]["fingerprint"]
    assert set(table["budgets"]) == {"input/l2", "input/linf", "input/l1", "embedding/l2"}
    assert table["provenance"]["embedding_sha256"] == summary["models"]["embedding"]["weights_sha256"]


@pytest.mark.parametrize("args, message", [
    (["describe", "--bogus"], "No such option"),
    (["describe", "--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["describe", "--dataset", "mnist", "--data-dir", "/nonexistent"], "no t10k-images"),
    (["run", "--epochs", "0"], "--epochs"),
    (["train", "embedding", "--miner", "bogus", "--epochs", "1", "--no-progress"], "unknown miner"),
    (["train", "classifier", "--device", "tpu", "--epochs", "1"], "device"),
])
def test_errors_are_one_line_exit_2(capsys, tmp_path, args, message):
    rc, out, err = call(capsys, *args, *(["--out", str(tmp_path / "o")] if args[0] != "describe" else []))
    assert rc == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_corrupt_dataset_file_one_line(capsys, tmp_path, mnist_copy):
    f = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:100])
    rc, _, err = call(capsys, "describe", "--dataset", "mnist", "--data-dir", str(mnist_copy))
    assert rc == 2 and "corrupt or truncated gzip" in err and err.count("\n") == 1


@pytest.mark.parametrize("entry", [[str(Path(sys.executable).parent / "calib")],
                                   [sys.executable, str(ROOT / "cli.py")]], ids=["calib", "cli.py"])
def test_console_script_and_module_are_the_same_app(entry):
    proc = subprocess.run([*entry, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "describe" in proc.stdout and "train" in proc.stdout
    proc = subprocess.run([*entry, "describe", "--nope"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: No such option '--nope'."


def test_stats_budgets_and_table_check(capsys, tmp_path):
    run = tmp_path / "r"
    rc, _, err = call(capsys, "train", "embedding", "--out", str(run / "models"), "--epochs", "2", "--no-progress")
    assert rc == 0, err
    rc, out, err = call(capsys, "stats", "--out", str(run), "--modes", "sampled", "--no-progress")
    assert rc == 0, err
    saved = json.loads((run / "stats.json").read_text())
    assert "embedding/l2/calibration-train" in saved["neighbours"] and (run / "stats.npz").exists()
    assert "separation" in out
    rc, out, err = call(capsys, "budgets", "--run", str(run), "--q", "0.1")
    assert rc == 0, err
    table = json.loads((run / "eps_table.json").read_text())
    assert table["policy"]["q"] == 0.1 and "embedding/l2" in table["budgets"]
    assert (run / "eps_table.csv").exists()
    rc, out, err = call(capsys, "table", "check", str(run / "eps_table.csv"), "--dataset", "digits")
    assert rc == 0 and "valid calib eps table" in out.replace("\n", " ")


def test_stats_refuses_embedding_from_another_split(capsys, tmp_path):
    rc, _, _ = call(capsys, "train", "embedding", "--out", str(tmp_path / "models"), "--epochs", "1",
                    "--seed", "1", "--no-progress")
    assert rc == 0
    rc, _, err = call(capsys, "stats", "--out", str(tmp_path), "--seed", "0", "--no-progress")
    assert rc == 2 and "another split" in err and err.count("\n") == 1
    assert not (tmp_path / "stats.json").exists()


@pytest.mark.parametrize("content, message", [
    ("{oops", "not valid JSON"),
    ('{"schema": "calib-eps-table"}', "missing version"),
    ('{"schema": "calib-eps-table", "version": 1}', "version 1 is not supported (this calib reads version 4): "
                                                     "version 2 computes the embedding budget as the 1-NN margin"),
])
def test_table_check_bad_tables(capsys, tmp_path, content, message):
    p = tmp_path / "t.json"
    p.write_text(content)
    rc, _, err = call(capsys, "table", "check", str(p))
    assert rc == 2 and message in err and err.count("\n") == 1


def test_table_check_fingerprint_mismatch(capsys, tmp_path, digits_table, mnist_dir):
    digits_table.save(tmp_path / "t.json")
    rc, _, err = call(capsys, "table", "check", str(tmp_path / "t.json"), "--dataset", "mnist",
                      "--data-dir", str(mnist_dir))
    assert rc == 2 and "calibrated on data" in err
    rc, _, _ = call(capsys, "table", "check", str(tmp_path / "t.json"), "--dataset", "mnist", "--data-dir",
                    str(mnist_dir), "--allow-mismatch")
    assert rc == 0


def test_attack_command_with_table_and_global_eps(capsys, tmp_path, cli_run):
    run = tmp_path / "r"
    shutil.copytree(cli_run, run)
    table = json.loads((run / "eps_table.json").read_text())
    assert table["policy"]["method"] == "final" and "semantic" in table["budgets"]["input/linf"]["components"]
    rc, out, err = call(capsys, "attack", "--run", str(run), "--attack", "pgd", "--n", "60", "--no-progress")
    assert rc == 0, err
    summary = json.loads((run / "attacks" / "pgd-table-linf-test.json").read_text())
    assert summary["n"] == 60 and summary["budget"] == "eps table"
    with np.load(run / "attacks" / "pgd-table-linf-test.npz") as z:
        eps = np.asarray(table["budgets"]["input/linf"]["eps"])[z["labels"]]
        assert (z["dist_linf"] <= eps + 1e-6).all()
    rc, _, err = call(capsys, "attack", "--run", str(run), "--attack", "embedding-pgd", "--n", "30",
                      "--projection", "newton", "--no-progress")
    assert rc == 0, err
    proj = json.loads((run / "attacks" / "embedding-pgd-table-linf-test.json").read_text())["projection"]
    assert proj["candidates"] > 0 and "g_forward_per_candidate" in proj
    rc, _, err = call(capsys, "attack", "--run", str(run), "--attack", "pgd", "--eps", "-1")
    assert rc == 2 and "eps" in err
    # a judge kind the run has no model for: one line, exit 2, the table untouched
    before = (run / "eps_table.json").read_bytes()
    rc, _, err = call(capsys, "budgets", "--run", str(run), "--semantic", "--judge", "lipschitz", "--no-progress")
    assert rc == 2 and "needs the model models/lipschitz-embedding" in err and err.count("\n") == 1
    assert (run / "eps_table.json").read_bytes() == before
    rc, _, err = call(capsys, "budgets", "--run", str(run), "--semantic", "--judge", "classifier", "--semantic-norms",
                      "linf", "--semantic-iters", "2", "--semantic-steps", "2", "--no-progress")
    assert rc == 2 and "judge knn -> classifier" in err and "--out" in err  # not the run's own table
    assert (run / "eps_table.json").read_bytes() == before
    rc, _, err = call(capsys, "budgets", "--run", str(run), "--semantic", "--judge", "classifier", "--semantic-norms",
                      "linf", "--semantic-iters", "2", "--semantic-steps", "2", "--out", str(tmp_path / "clf.json"),
                      "--no-progress")
    assert rc == 0, err
    table = json.loads((tmp_path / "clf.json").read_text())
    assert table["policy"]["semantic"]["judge"] == "classifier"
    assert (run / "semantic" / "classifier.npz").exists()


@pytest.mark.parametrize("args, message", [
    (["--judge", "oracle"], "unknown judge 'oracle'"),
    (["--semantic-bound", "certified"], "judge 'knn' has no certificate"),
    (["--semantic-bound", "maybe"], "unknown semantic bound 'maybe'"),
])
def test_run_refuses_bad_judge_options(capsys, tmp_path, args, message):
    rc, _, err = call(capsys, "run", "--out", str(tmp_path / "r"), *args)
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
