"""The run report: one self-contained HTML file (plotly.js embedded) built from a run folder.

Sections (:mod:`calib.report.sections`, one function each): summary, headline, class-pair
heat-maps, distance distributions, coverage curves, the epsilon table, the judges' radii, judges vs
people, the 2-D embedding, galleries per attack, the class-mixing probe, the audit tables, and a
section per experiment. Every user-provided string is HTML-escaped; figure JSON is embedded with
``<``, ``>`` and ``&`` as unicode escapes, so no string can close the script element.
``report.html#only=<id>`` shows one section (used for per-section screenshots).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import logging
import os
from pathlib import Path

from calib.errors import DataError
from calib.io import atomic_open
from calib.report.figures import esc
from calib.report.page import CSS, SORT_JS, Page, html_table
from calib.report.sections import SECTIONS as _SECTIONS, Report, experiment_sections
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

log = logging.getLogger(__name__)

#: (id, title) of every fixed section, in page order
SECTIONS = tuple((sid, title) for sid, title, _ in _SECTIONS)


def write_report(run: RunFolder, out: str | os.PathLike[str] | None = None, *, title: str | None = None,
                 gallery_per_class: int = 2) -> Path:
    """Build ``report.html`` from the artefacts of a run folder (written atomically); returns its path.

    Raises:
        DataError: the run has no statistics and epsilon table yet.
    """
    from plotly.offline import get_plotlyjs

    out = Path(out) if out else run.file(A.REPORT)
    if not run.exists(A.EPS_TABLE) or not run.exists(A.STATS_JSON):
        raise DataError(f"{run.path} has no statistics and epsilon table to report on; run `calib run` first")
    report = Report.read(run, gallery_per_class)
    from calib.report.experiments import TITLES as EXP_TITLES

    sections = list(SECTIONS) + [(f"exp-{k}", EXP_TITLES[k]) for k in report.experiments]
    title = title or f"calib report — {report.stats.meta['dataset']['name']}"
    page = Page()
    page.add(f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
             f"<style>{CSS}</style><script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>")
    page.add(f"<header><h1>{esc(title)}</h1></header><nav>" +
             "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t in sections) + "</nav>")
    for _, _, section in _SECTIONS:
        section(report, page)
    experiment_sections(report, page)
    page.add(f"<script>{SORT_JS}</script></body></html>")
    with atomic_open(out, "w") as fh:
        fh.write("".join(page.parts))
    log.info("report written to %s (%d figures)", out, page.n_fig)
    return out


__all__ = ["SECTIONS", "html_table", "write_report"]
