"""What every experiment reads from a finished ``calib run`` folder, and how results are stored.

An experiment runs in a :class:`~calib.pipeline.stage.StageContext` (the run folder: dataset,
split, models, judges, table). Its results live in ``<run>/experiments/<name>.json`` (summary,
provenance) and ``<name>.npz`` (arrays; loaded without pickle); the report shows a section for each
one present.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.io import to_jsonable, write_json, write_npz
from calib.pipeline.stage import StageContext
from calib.report.experiments import load_experiments  # the report reads them; kept here for callers
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

__all__ = ["StageContext", "save_experiment", "load_experiments", "per_class"]


def save_experiment(run: RunFolder, name: str, summary: dict[str, Any],
                    arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``experiments/<name>.npz`` then ``<name>.json`` atomically; returns the JSON path."""
    doc, npz = A.experiment(name)
    write_npz(run.file(npz), arrays or {})
    write_json(run.file(doc), to_jsonable({"experiment": name, **summary}))
    return run.file(doc)


def per_class(values: np.ndarray, labels: np.ndarray, class_names: list[str] | tuple[str, ...],
              mask: np.ndarray | None = None) -> dict[str, float | None]:
    """Mean of ``values`` per class (optionally within ``mask``); ``None`` where a class is empty."""
    m = np.ones(len(labels), bool) if mask is None else mask
    out = {}
    for c, name in enumerate(class_names):
        sel = m & (labels == c)
        out[name] = float(values[sel].mean()) if sel.any() else None
    return out
