"""The CLI end to end: real runs on digits / MNIST, one-line errors with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cli
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


def test_run_writes_summary_with_provenance(capsys, tmp_path):
    rc, out, err = call(capsys, "run", "--out", str(tmp_path / "r"), "--epochs", "2", "--no-progress")
    assert rc == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["dataset"]["fingerprint"] == "c8f75e3983bc2967" + summary["dataset"]["fingerprint"][16:]
    for m in ("classifier", "embedding"):
        _, cfg = load_model(tmp_path / "r" / "models" / m)
        assert cfg["weights_sha256"] == summary["models"][m]["weights_sha256"]
    assert summary["run"]["seed"] == 0 and summary["versions"]["calib"]


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
