"""The HTML report: structure, escaping of user strings, and rendering in headless Chromium."""
from __future__ import annotations

import re

import numpy as np
import pytest

from calib.report import SECTIONS, html_table, write_report
from calib.report.browser import check_page, find_chromium, screenshot_sections

from conftest import tiny

EVIL = '<img src=x onerror="alert(1)"></script><script>alert(2)</script>'


def test_report_has_every_section_and_is_offline(tiny_run):
    out, _ = tiny_run
    text = (out / "report.html").read_text(encoding="utf-8")
    missing = [sid for sid, _ in SECTIONS if f'<section id="{sid}">' not in text]
    assert missing == []
    assert len(re.findall(r"<script[^>]*\ssrc=", text)) == 0  # plotly.js is embedded, nothing fetched
    assert text.count('class="figure"') >= 10
    has_link = "data:application/json;base64," in text  # the eps-table download link
    galleries = [name for name in ("pgd-global-linf", "pgd-table-linf", "embedding-pgd-linf")
                 if f"gallery-{name}" in text]
    assert has_link and len(galleries) == 3


def test_html_table_escapes_cells():
    t = html_table(["h<1>", "v"], [[EVIL, 0.5]])
    assert EVIL not in t and "&lt;img src=x" in t and 'data-v="0.5"' in t


def test_user_strings_are_escaped_end_to_end(tmp_path, digits):
    """Class names and the dataset name come from a user's .npz: they must never become markup."""
    names = np.array([f"{EVIL}{i}" for i in range(10)])
    path = tmp_path / "evil<b>.npz"
    np.savez(path, X=(digits.images[:, 0] * 16).astype(np.uint8), y=digits.labels, class_names=names)
    from calib.pipeline import AttackConfig, run

    run(tiny(tmp_path / "run", dataset=str(path), classifier_epochs=1, embedding_epochs=1, semantic=None,
             attack=AttackConfig(n=30, steps=2), tsne_points=100))
    text = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    # (booleans, not `in` assertions: pytest would diff a 5 MB page)
    raw = ['onerror="alert(1)"', "<script>alert(2)", "evil<b>", "<img src=x"]
    leaked = [r for r in raw if r in text]
    assert leaked == []
    shown = "&lt;img src=x" in text and "evil&lt;b&gt;" in text  # shown, escaped
    assert shown
    from calib.runfolder import open_run

    assert write_report(open_run(tmp_path / "run"), tmp_path / "t.html", title=EVIL).read_text().count(EVIL) == 0


chromium = pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")


@chromium
def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    out, _ = tiny_run
    check = check_page(out / "report.html")
    assert check.ok, check.problems()
    assert [s for s, _ in SECTIONS] == check.sections
    names = [f["name"] for f in check.figures]
    assert {"headline", "class-pair-heatmaps", "distance-distributions", "coverage-curves", "eps-table-chart",
            "embedding-2d", "probe", "gallery-embedding-pgd-linf"} <= set(names)
    assert all(f["width"] > 100 and f["height"] > 100 for f in check.figures)
    shot = screenshot_sections(out / "report.html", tmp_path, ["headline"])[0]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 300 and img.std() > 10  # a drawn page, not a blank one


@chromium
def test_browser_check_catches_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head></head><body><div class="figure" data-figure="x"></div>'
                   "<script>undefinedFunction()</script></body></html>")
    check = check_page(bad)
    assert not check.ok
    assert any("undefinedFunction" in e for e in check.errors)
    assert any("did not render" in p for p in check.problems())
