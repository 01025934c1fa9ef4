"""The perceptibility page end to end: real headless Chromium (system chromium, no download) driven by
key presses of a simulated observer with a known threshold, a server killed mid-session and
restarted, and the fitted threshold's interval checked against the truth (and a wrong one)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess

import numpy as np
import pytest

from calib.human.perceptibility import size
from calib.runfolder import artefacts as A

from tests.test_label_page import FLAGS, _start  # noqa: F401  (the same browser flags and server start)

TRUE_SSIM = 0.97  # the observer says "different" half the time at this SSIM
WIDTH = 0.3       # ... with this spread in x = log(1 - SSIM)
LAPSE = 0.05      # and "different" to this share of identical pairs


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    from calib.report.browser import find_chromium

    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=FLAGS)
        yield b
        b.close()


def _item(page, i: int | None = None) -> int:
    sel = "#pair[data-item]:not([data-item=''])" if i is None else f'#pair[data-item="{i}"]'
    page.wait_for_selector(sel, timeout=10_000)  # CSS selectors only: the page's CSP forbids eval
    return int(page.get_attribute("#pair", "data-item"))


def _page(browser, url: str, errors: list[str]):
    page = browser.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    return page


def test_simulated_observer_recovers_its_threshold(browser, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    proc, url = _start(run, "p1", "--task", "perceptibility", "--n", "140")
    errors: list[str] = []
    rng = np.random.default_rng(7)
    try:
        assert url.startswith("http://127.0.0.1:")
        page = _page(browser, url, errors)
        assert _item(page) == 0
        plan = np.load(run / A.pair_session("p1")[1], allow_pickle=False)  # what the observer "sees"
        ssim, control, total = plan["ssim"], plan["control"], len(plan["ssim"])
        assert 150 <= total <= 165 and 0.08 <= control.mean() <= 0.16
        truth = np.where(control, rng.random(total) < LAPSE,
                         rng.random(total) < 1 / (1 + np.exp(-(size(ssim) - size(TRUE_SSIM)) / WIDTH)))
        keys = ({False: "s", True: "d"}, {False: "f", True: "j"})  # both key pairs
        page.keyboard.press("d")                      # pair 0: a wrong answer, then back and correct it
        _item(page, 1)
        page.keyboard.press("Backspace")
        _item(page, 0)
        assert "your answer: different" in page.inner_text("#msg")
        for i in range(0, total // 2):
            _item(page, i)
            page.keyboard.press(keys[i % 2][bool(truth[i])])
        _item(page, total // 2)
        saved = np.load(run / A.pair_session("p1")[0], allow_pickle=False)
        assert list(saved["item"]) == list(range(total // 2))
        assert np.array_equal(saved["different"], truth[: total // 2].astype(int))
        proc.send_signal(signal.SIGKILL)  # without warning: nothing answered is lost
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, url = _start(run, "p1", "--task", "perceptibility")
    try:
        page = _page(browser, url, errors)
        assert _item(page) == total // 2  # resumes at the first unanswered pair
        for i in range(total // 2, total):
            _item(page, i)
            page.keyboard.press(keys[i % 2][bool(truth[i])])
        page.wait_for_selector("#done table", timeout=20_000)
        assert "pooled" in page.inner_text("#done")
        assert not errors, errors
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0 and "people's thresholds from" in rest and "session saved to" in rest, rest
    doc = json.loads((run / A.PERCEPTIBILITY).read_text())
    assert doc["sessions"] == ["p1"] and doc["n_pairs"] == int((~control).sum())
    pooled = doc["pooled"]
    lo, hi = pooled["ci95_ssim"]
    assert pooled["threshold"] is not None and lo <= TRUE_SSIM <= hi, pooled
    assert not lo <= 0.9 <= hi and not lo <= 0.99 <= hi  # the test can fail: wrong thresholds lie outside
    assert pooled["slope"] == pytest.approx(1 / WIDTH, rel=0.6)
    fitted = [f for f in doc["per_class"].values() if f["threshold"] is not None]
    covered = [f["ci95_ssim"][0] <= TRUE_SSIM <= f["ci95_ssim"][1] for f in fitted]
    # ~14 pairs a class: many separate perfectly (no threshold, the reason given); 95 % intervals for the rest
    assert len(fitted) >= 3 and sum(covered) >= len(fitted) - 1, doc["per_class"]
    for f in doc["per_class"].values():
        assert f["threshold"] is not None or f["reason"]
    assert doc["controls"]["n"] == int(control.sum())
    assert doc["controls"]["false_alarms"] == int(truth[control].sum())
