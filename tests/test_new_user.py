"""What a new user hit: interrupts, user mistakes that were internal errors, silent overwrites, odd
inputs, threads, and the missing commands (issue 23), each checked end to end through the CLI."""
from __future__ import annotations

import errno
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from calib.cli import main
from calib.runfolder import artefacts as A, open_run
from conftest import TINY_TOML

ROOT = Path(__file__).resolve().parents[1]


def call(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def run(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    return out


# ---- Ctrl-C --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, target", [
    (["report", "RUN"], "calib.report.write_report"),
    (["attack", "--run", "RUN", "--n", "20", "--no-progress"], "calib.attacks.runner.run_attack"),
])
def test_ctrl_c_exits_130_with_one_line(run, capsys, monkeypatch, argv, target):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    rc, _, err = call(capsys, *[str(run) if a == "RUN" else a for a in argv])
    assert rc == 130 and err.startswith("interrupted:") and err.count("\n") == 1, err
    assert "run the same command again to resume" in err
    assert not (run / A.LOCK).exists()


def test_ctrl_c_during_a_real_run_then_resume(tmp_path):
    """SIGINT to `calib run` after its first stage: exit 130, one line; the re-run reuses that stage."""
    out = tmp_path / "run"
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    cmd = [sys.executable, "-m", "calib", "run", "--config", str(cfg), "--out", str(out), "--epochs", "4",
           "--no-attacks", "--no-report", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / A.manifest("classifier")).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and lines[0].startswith("interrupted:") and "stages cached" in lines[0], err
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / A.SUMMARY).read_text())["stages"]["classifier"]["reused"]


# ---- the machine's refusals are the user's, not calib's bugs ------------------------------------------
def test_out_that_is_a_file_or_under_one(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    for out, msg in ((tmp_path / "f", "is a file, not a folder"), (tmp_path / "f" / "sub", "cannot be made")):
        rc, _, err = call(capsys, "run", "--out", str(out), "--epochs", "1", "--no-progress")
        assert rc == 2 and msg in err and err.count("\n") == 1, err


def test_a_folder_that_cannot_be_written(run, capsys, monkeypatch):
    """(As root a chmod does not stop writes, so the refusal is simulated at the lock file.)"""
    import calib.runfolder.lock as lock

    real = lock.os.open

    def refuse(path, *a, **k):
        if str(path).endswith(A.LOCK):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(lock.os, "open", refuse)
    rc, _, err = call(capsys, "report", str(run))
    assert rc == 2 and err.startswith("error: Permission denied") and err.count("\n") == 1, err


def test_label_on_a_busy_port(run, capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        rc, _, err = call(capsys, "label", str(run), "--port", str(s.getsockname()[1]), "--n", "10")
    finally:
        s.close()
    assert rc == 2 and "is in use" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("line, message", [
    ("seed = 1.5", "seed must be a whole number; got 1.5"),
    ("fractions = [0.5, 0.5]", "fractions must be a list of 3 values"),
    ("[attack]\nglobal_eps = {linf = \"0.3\"}", "global_eps.linf must be a number; got '0.3'"),
    ("[attack]\nsteps = 2.0", "steps must be a whole number; got 2.0"),
    ("[semantic]\nnorms = \"linf\"\niters = true", "iters must be a whole number; got True"),
])
def test_config_values_of_the_wrong_type(tmp_path, capsys, line, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(line + "\n")
    rc, _, err = call(capsys, "run", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_human_sets_given_as_one_string(tmp_path):
    from calib.pipeline import RunConfig

    cfg = tmp_path / "c.toml"
    cfg.write_text('[human]\nsets = "data/human/invariance_examples"\n[attack]\nnorms = "l2"\n')
    c = RunConfig.from_sources(cfg)
    assert c.human.sets == ("data/human/invariance_examples",) and c.attack.norms == ("l2",)


def test_stats_json_of_the_wrong_shape(run, capsys):
    doc = json.loads((run / A.STATS_JSON).read_text())
    doc["neighbours"] = ["not", "a", "mapping"]
    (run / A.STATS_JSON).write_text(json.dumps(doc))
    rc, _, err = call(capsys, "report", str(run))
    assert rc == 2 and "not calib statistics (malformed" in err and err.count("\n") == 1, err


# ---- odd inputs --------------------------------------------------------------------------------------
def test_image_layouts(tmp_path, digits, capsys, caplog):
    raw = (digits.images[:, 0] * 16).astype(np.uint8)
    np.savez(tmp_path / "nhwc.npz", X=np.repeat(raw[..., None], 3, axis=3), y=digits.labels)
    np.savez(tmp_path / "odd.npz", X=np.zeros((20, 3, 8, 3), np.uint8), y=np.arange(20) % 2)
    np.savez(tmp_path / "none.npz", X=np.zeros((20, 8, 8, 8), np.uint8), y=np.arange(20) % 2)
    rc, out, err = call(capsys, "describe", "--dataset", str(tmp_path / "nhwc.npz"), "--json")
    assert rc == 0 and json.loads(out)["dataset"]["image_shape"] == [3, 8, 8]
    assert any("read as (N,H,W,C)" in r.getMessage() for r in caplog.records)
    from calib.data import load_dataset

    nchw = load_dataset(str(tmp_path / "nhwc.npz")).images
    assert np.array_equal(nchw[:, 1], raw / np.float32(255))  # the channels are where they belong
    for name, msg in (("odd", "both (N,C,H,W) and (N,H,W,C)"), ("none", "need 1 or 3 channels")):
        rc, _, err = call(capsys, "describe", "--dataset", str(tmp_path / f"{name}.npz"))
        assert rc == 2 and msg in err and err.count("\n") == 1, err


def test_class_names_with_rich_markup(tmp_path, digits, capsys):
    names = np.array([f"[/]c{i}[bold]" for i in range(10)])
    path = tmp_path / "markup.npz"
    np.savez(path, X=(digits.images[:, 0] * 16).astype(np.uint8), y=digits.labels, class_names=names)
    rc, out, err = call(capsys, "describe", "--dataset", str(path))
    assert rc == 0 and "[/]c0[bold]" in out, err
    rc, out, err = call(capsys, "run", "--dataset", str(path), "--out", str(tmp_path / "r"), "--epochs", "1",
                        "--no-attacks", "--no-report", "--no-progress")
    assert rc == 0, err
    rc, out, err = call(capsys, "table", "check", str(tmp_path / "r" / A.EPS_TABLE))
    assert rc == 0 and "[/]c0" in out, err


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.update(x_adv=a["x_adv"].astype(np.complex64)), "complex numbers"),
    (lambda a: a.update(eps=np.float64(-0.1)), "eps must be finite and >= 0"),
    (lambda a: a.update(eps=np.full((3, 3), 0.5)), "eps must be a number or (N,)"),
    (lambda a: a.update(eps=np.float64(0.01)), "lie outside their linf ball"),
    (lambda a: a.update(x_adv=a["x_adv"].astype(str)), "x_adv must be numbers"),
])
def test_an_audit_refuses_what_cannot_be_true(run, tmp_path, capsys, edit, message):
    test = open_run(run).split("test")
    arrays = {"x_adv": np.clip(test.images[:20] + 0.1, 0, 1).astype(np.float32), "indices": test.indices[:20],
              "eps": np.float64(0.1)}
    edit(arrays)
    np.savez(tmp_path / "adv.npz", **arrays)
    rc, _, err = call(capsys, "audit", str(run), "--adversarial", str(tmp_path / "adv.npz"))
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (run / A.audit("adv")[1]).exists()


# ---- what the audit counts ----------------------------------------------------------------------------
def test_clean_errors_are_counted_apart(tiny_run):
    from calib.audit import load_audits
    from calib.models.infer import forward_batched

    folder = open_run(tiny_run[0])
    f = folder.model("classifier")
    for name, a in load_audits(folder).items():
        with np.load(folder.file(A.attack(name)[0])) as z:
            clean_wrong = forward_batched(f, z["x"]).argmax(1).numpy() != z["labels"]
            fooled = z["pred"] != z["labels"]
        assert np.array_equal(a.arrays["clean_error"], clean_wrong), name
        assert np.array_equal(a.arrays["success"], fooled & ~clean_wrong), name
        assert not (a.arrays["valid"] & clean_wrong).any()


def test_per_sample_budgets_cover_the_test_points(tiny_run):
    from calib.budgets import load_per_sample

    folder = open_run(tiny_run[0])
    ps = load_per_sample(folder.file(A.PER_SAMPLE))
    test = folder.split("test")
    eps = ps.eps_for(test.indices, "input", "linf", as_tensor=False).ravel()
    stats = folder.stats().pair("input", "linf", "test-train")
    geo = np.minimum(stats.nn.d_diff / 2, stats.nn.d_same)  # s = 1: the plain per-sample rule
    sem = folder.table().budget("input", "linf").semantic.empirical
    cap = np.array([np.inf if v is None else v for v in sem])[test.labels]
    pos = {int(i): j for j, i in enumerate(stats.query_indices)}
    want = np.array([min(geo[pos[int(i)]], cap[k]) for k, i in enumerate(test.indices)])
    np.testing.assert_allclose(eps, want, rtol=1e-6)
    with pytest.raises(Exception, match="training points have none"):
        ps.eps_for(folder.split("train").indices[:3])


# ---- threads -------------------------------------------------------------------------------------------
def test_the_thread_count_is_recorded_and_keys_the_cache(run, capsys):
    cfg = json.loads((run / A.RECORD).read_text())["config"]
    assert cfg["threads"] == torch.get_num_threads()
    summary = json.loads((run / A.SUMMARY).read_text())
    assert summary["threads"] == torch.get_num_threads()
    model = json.loads((run / A.model("classifier")[1]).read_text())
    assert model["training"]["config"]["threads"] == torch.get_num_threads()
    from calib.pipeline import StageContext
    from calib.pipeline.stages.report import report_stage
    from calib.pipeline.stages.stats import stats_stage
    from conftest import tiny

    ctx = StageContext.open(run)
    stage = stats_stage(tiny(run))
    now = stage.inputs(ctx)
    other = torch.get_num_threads() % 2 + 1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(other)
        assert stage.inputs(ctx)["threads"] != now["threads"]  # another count: another key
        assert "threads" not in report_stage(tiny(run)).inputs(ctx)  # a stage without tensors does not care
    finally:
        torch.set_num_threads(before)


# ---- missing commands -----------------------------------------------------------------------------------
def test_list_and_compare(run, tmp_path, capsys):
    other = tmp_path / "runs" / "b"
    shutil.copytree(run, other)
    rc, out, err = call(capsys, "list", str(tmp_path), "--json")
    rows = json.loads(out)
    assert rc == 0 and {Path(r["path"]).name for r in rows} == {"run", "b"}, err
    assert all(r["dataset"] == "digits" and r["finished"] and "input/linf" in r["budgets"] for r in rows)
    rc, out, err = call(capsys, "compare", str(run), str(other), "--json")
    doc = json.loads(out)
    assert rc == 0 and all(r["a"] == r["b"] for r in doc["rows"]), err
    assert len(doc["rows"]) == 10 * len(open_run(run).table().keys)
    rc, out, err = call(capsys, "compare", str(run), str(tmp_path / "nothing"))
    assert rc == 2


def test_license_and_citation():
    import yaml

    assert "MIT License" in (ROOT / "LICENSE").read_text()
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] and cff["license"] == "MIT" and cff["title"].startswith("calib")
    assert re.search(r'license = \{ text = "MIT" \}', (ROOT / "pyproject.toml").read_text())
