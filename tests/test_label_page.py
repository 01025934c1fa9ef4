"""The labelling page end to end: real headless Chromium driven by Playwright (system chromium, no
browser download), key presses, Backspace, a server killed mid-session and restarted, the saved file."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from calib.human import load_human_sets
from calib.report.browser import find_chromium

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def _start(run: Path, session: str, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "label", str(run), "--session", session,
                             "--n", "20", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"calib label did not start: {proc.stdout.read()}")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=FLAGS)
        yield b
        b.close()


def _item(page) -> int:
    page.wait_for_selector("#img[data-item]")  # CSS selectors only: the page's CSP forbids eval
    return int(page.get_attribute("#img", "data-item"))


def _wait_item(page, i: int) -> None:
    page.wait_for_selector(f'#img[data-item="{i}"]', timeout=10_000)


def test_labelling_end_to_end_with_a_killed_server(browser, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    proc, url = _start(run, "s1")
    try:
        assert url.startswith("http://127.0.0.1:")
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        assert _item(page) == 0
        plan = np.load(run / "human" / "s1.plan")
        total, truth = len(plan["source_index"]), plan["source_label"]
        assert 20 <= total <= 24 and plan["control"].sum() >= 1  # ~10 % clean controls mixed in
        page.keyboard.press(str(truth[0]))          # item 0: the source class
        _wait_item(page, 1)
        page.keyboard.press("u")                    # item 1: unclear
        _wait_item(page, 2)
        page.keyboard.press(str((truth[2] + 1) % 10))  # item 2: another class
        _wait_item(page, 3)
        page.keyboard.press("Backspace")            # back to item 2 and change the answer
        _wait_item(page, 2)
        assert "your answer" in page.inner_text("#msg")
        page.keyboard.press(str(truth[2]))
        _wait_item(page, 3)
        saved = np.load(run / "human" / "s1.npz")
        assert list(saved["item"]) == [0, 1, 2] and list(saved["human_label"]) == [truth[0], -1, truth[2]]
        # kill the server without warning: nothing answered is lost
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, url = _start(run, "s1")
    try:
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        assert _item(page) == 3  # resumes at the first unanswered item
        for i in range(3, total):
            _wait_item(page, i)
            page.keyboard.press(str((truth[i] + (i % 3 == 0)) % 10))
        page.wait_for_selector("#done table", timeout=10_000)
        assert "relabelled" in page.inner_text("#done")
        assert not errors, errors
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    (s,) = load_human_sets(run / "human" / "s1.npz")
    assert len(s) == total and s.name == "session/s1"
    expect = np.array([truth[0], -1, truth[2]] + [(truth[i] + (i % 3 == 0)) % 10 for i in range(3, total)])
    order = np.argsort(np.load(run / "human" / "s1.npz")["item"])
    assert np.array_equal(s.human_label[order], expect)
    assert np.array_equal(s.source_index[order], plan["source_index"])
    # the session is a human-labelled set like any other: the ε table records people per class
    from calib.budgets import load_table

    table = load_table(run / "eps_table.json")
    h = table.budgets["input/linf"]["human"]
    assert h["sets"] == ["s1"] and sum(h["n"]) == int((~plan["control"]).sum() - (not plan["control"][1]))
    assert set(h["status"]) <= {"human-verified", "not verified", "unlabelled"}


def test_label_refuses_bad_input(tiny_run, tmp_path, capsys):
    from calib.cli import main

    assert main(["label", str(tiny_run[0]), "--session", "../evil"]) == 2
    assert "session name" in capsys.readouterr().err
    assert main(["label", str(tiny_run[0]), "--attack", "nope"]) == 2
    assert "no attack 'nope'" in capsys.readouterr().err


def test_server_binds_loopback_only(tiny_run, tmp_path):
    import shutil

    from calib.human.server import HOST, serve
    from calib.human.session import open_session

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    from calib.runfolder import open_run

    server = serve(open_session(open_run(run), "s2", n=10))
    try:
        assert HOST == "127.0.0.1" and server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
