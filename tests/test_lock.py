"""One writer per run folder (RunLock), and bugs reported as bugs (exit 3), in-process and end to end."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calib.errors import CalibError, InternalError
from calib.runfolder.lock import LOCK_NAME, RunFolderLocked, RunLock
from calib.cli import main

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom calib.runfolder.lock import RunLock\n"
        "RunLock(sys.argv[1], 'test holder').__enter__()\nprint('held', flush=True)\ntime.sleep(120)\n")


def _holder(folder: Path) -> subprocess.Popen:
    """A separate process that takes the folder's lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder_then_a_killed_holder_is_taken_over(tmp_path, caplog):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunFolderLocked, match=rf"being written by PID {proc.pid} \(test holder\)"):
            with RunLock(tmp_path, "second"):
                pass
        assert issubclass(RunFolderLocked, CalibError)  # a user error: one line, exit 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == proc.pid  # kill -9 leaves the file
    with caplog.at_level(logging.WARNING, logger="calib.runfolder.lock"):
        with RunLock(tmp_path, "next"):
            doc = json.loads((tmp_path / LOCK_NAME).read_text())
            assert doc["pid"] == os.getpid() and doc["command"] == "next"
            with RunLock(tmp_path, "nested"):  # re-entrant within one process
                pass
            assert (tmp_path / LOCK_NAME).exists()
    assert f"taking over the lock left by PID {proc.pid}" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()  # a clean exit leaves nothing behind


def test_a_missing_folder_is_not_created_unless_asked(tmp_path):
    with RunLock(tmp_path / "nope", "reader-like"):
        pass
    assert not (tmp_path / "nope").exists()
    with RunLock(tmp_path / "new", "run", create=True):
        assert (tmp_path / "new" / LOCK_NAME).exists()


def test_cli_writers_refuse_a_locked_folder(tiny_run, capsys):
    folder, _ = tiny_run
    proc = _holder(folder)
    try:
        for argv in (["report", str(folder)], ["experiment", "linearity", "--run", str(folder)]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and f"PID {proc.pid}" in err, err
        assert main(["audit", str(folder)]) == 0  # readers need no lock
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert main(["report", str(folder)]) == 0  # the dead holder's lock is taken over


def test_a_bug_exits_3_with_the_traceback_saved(tiny_run, capsys, monkeypatch):
    folder, _ = tiny_run

    def broken(*a, **k):
        raise InternalError("x_adv outside its ball\n(second line)")

    monkeypatch.setattr("calib.report.write_report", broken)
    assert main(["report", str(folder)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("internal error: InternalError: x_adv outside its ball (second line)")
    logs = sorted((folder / "logs").glob("internal-error-*.txt"))
    assert logs and "Traceback" in logs[-1].read_text() and str(logs[-1]) in " ".join(err.split())
    assert not (folder / LOCK_NAME).exists()
    monkeypatch.setattr("calib.report.write_report", lambda *a, **k: 1 / 0)
    assert main(["report", str(tmp := folder / "missing")]) == 3  # no run folder: a temporary file
    err = " ".join(capsys.readouterr().err.split())
    assert "ZeroDivisionError" in err and "calib-internal-error-" in err and not tmp.exists()


from conftest import TINY_TOML  # noqa: E402


@pytest.mark.slow
def test_two_runs_on_one_folder_the_second_exits_2_at_once_and_the_first_completes(tmp_path):
    cfg, out = tmp_path / "tiny.toml", tmp_path / "run"
    cfg.write_text(TINY_TOML)
    cmd = [sys.executable, "cli.py", "run", "--config", str(cfg), "--out", str(out), "--no-progress"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / LOCK_NAME).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (out / LOCK_NAME).exists(), "the first run never took the lock"
    t = time.perf_counter()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr
    took = time.perf_counter() - t  # the refusal comes before any work: this is mostly Python's imports
    print(f"second run refused after {took:.1f} s")
    assert took < 10 and f"PID {first.pid}" in second.stderr
    # a validation (which writes validation/, the table and the report) is refused the same way
    from calib.data import SplitSpec, load_dataset
    from calib.human import save_human_set

    ds = load_dataset("digits")
    idx = SplitSpec(seed=0).build(ds).test.indices[:10]
    save_human_set(tmp_path / "hs.npz", ds.images[idx], ds.labels[idx], idx, name="clean")
    validate = subprocess.run([sys.executable, "-m", "calib", "validate", str(out), "--human", str(tmp_path / "hs.npz")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert validate.returncode == 2 and validate.stderr.count("\n") == 1, validate.stderr
    assert f"PID {first.pid}" in validate.stderr and not (out / "validation").exists()
    assert first.wait(300) == 0, first.stderr.read()
    summary = json.loads((out / "summary.json").read_text())
    assert not (out / LOCK_NAME).exists()
    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    again = json.loads((out / "summary.json").read_text())
    assert all(s["reused"] for s in again["stages"].values())  # nothing interleaved: every stage cached
    assert {k: v["key"] for k, v in again["stages"].items()} == {k: v["key"] for k, v in summary["stages"].items()}
