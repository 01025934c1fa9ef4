"""The report stage: ``report.html`` from everything the run wrote."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from calib.pipeline.config import RunConfig
from calib.pipeline.stage import Stage, StageContext
from calib.runfolder import artefacts as A


@dataclass(frozen=True)
class ReportOptions:
    gallery_per_class: int


def compute(ctx: StageContext, o: ReportOptions) -> dict[str, Any]:
    from calib.report import write_report

    write_report(ctx, gallery_per_class=o.gallery_per_class)
    return {}


def upstream(ctx: StageContext) -> dict[str, str]:
    """The keys of every stage run before it: the report shows all of them."""
    return {name: r.key for name, r in ctx.records.items()}


def report_stage(config: RunConfig) -> Stage:
    return Stage("report", compute, ReportOptions(config.gallery_per_class), (A.REPORT,), derived=upstream,
                 code=("calib.report",), tensors=False)
