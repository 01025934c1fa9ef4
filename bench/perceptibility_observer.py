"""A simulated observer with a known perceptibility threshold, through the real labelling page.

Starts ``calib label RUN --task perceptibility``, opens the page in headless Chromium (the system
chromium, via Playwright) and answers every pair with the keys a person would press: "different" with
probability sigmoid((log(1 - SSIM) - log(1 - SSIM_true)) / width) for a perturbed pair (its SSIM read
from the session's plan on disk), and with probability ``--lapse`` for an identical pair. Then stops the
server (which writes ``RUN/human/perceptibility.json``) and prints the fit beside the truth:

    python bench/perceptibility_observer.py --run reports/digits-percept --true-ssim 0.97 \\
        --screenshot perceptibility.png
    calib run --dataset digits --out reports/digits-percept     # re-audits with the fitted thresholds
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from calib.human.perceptibility import size
from calib.report.browser import find_chromium
from calib.runfolder import artefacts as A

log = logging.getLogger("perceptibility_observer")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def start(run: Path, session: str, n: int) -> tuple[subprocess.Popen, str]:
    """``calib label --task perceptibility`` in a subprocess, and the page's address."""
    proc = subprocess.Popen([sys.executable, "-m", "calib", "label", str(run), "--task", "perceptibility",
                             "--session", session, "--n", str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        m = re.search(r"serving (http://127\.0\.0\.1:\d+/)", proc.stdout.readline())
        if m:
            return proc, m.group(1)
    proc.kill()
    raise SystemExit(f"calib label did not start: {proc.stdout.read()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--session", default="simulated")
    ap.add_argument("--n", type=int, default=280, help="perturbed pairs")
    ap.add_argument("--true-ssim", type=float, default=0.97)
    ap.add_argument("--width", type=float, default=0.3, help="spread in log(1 - SSIM)")
    ap.add_argument("--lapse", type=float, default=0.05, help="P('different') for identical pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--screenshot", type=Path, default=None, help="a PNG of the page at its first pair")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        raise SystemExit("chromium not installed (make browser)")
    proc, url = start(args.run, args.session, args.n)
    t0 = time.perf_counter()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(url)
            page.wait_for_selector("#pair[data-item]:not([data-item=''])")
            plan = np.load(args.run / A.pair_session(args.session)[1], allow_pickle=False)
            ssim, control = plan["ssim"], plan["control"]
            rng = np.random.default_rng(args.seed)
            p_diff = np.where(control, args.lapse, 1 / (1 + np.exp(-(size(ssim) - size(args.true_ssim)) / args.width)))
            answers = rng.random(len(ssim)) < p_diff
            if args.screenshot is not None:
                args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.screenshot))
            i = int(page.get_attribute("#pair", "data-item"))
            while i < len(ssim):
                page.wait_for_selector(f'#pair[data-item="{i}"]')
                page.keyboard.press("d" if answers[i] else "s")
                i += 1
            page.wait_for_selector("#done table", timeout=60_000)
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    log.info("%d pairs answered in %.1f s through the page\n%s", len(ssim), time.perf_counter() - t0, out.strip())
    doc = json.loads((args.run / A.PERCEPTIBILITY).read_text())
    log.info("true threshold SSIM %.4f (width %.2f, lapse %.2f on controls)", args.true_ssim, args.width, args.lapse)
    for name, f in [*doc["per_class"].items(), ("pooled", doc["pooled"])]:
        ci = f["ci95_ssim"]
        log.info("%-7s n %3d  JND %s  95%% [%s, %s]  %s", name, f["n"],
                 "  –   " if f["threshold"] is None else f"{f['threshold']:.4f}",
                 "–" if not ci or ci[0] is None else f"{ci[0]:.4f}", "–" if not ci or ci[1] is None else f"{ci[1]:.4f}",
                 f["reason"] or "")
    c = doc["controls"]
    log.info("controls: %d of %d called different, Wilson 95 %% %s", c["false_alarms"], c["n"], c["wilson95"])


if __name__ == "__main__":
    main()
