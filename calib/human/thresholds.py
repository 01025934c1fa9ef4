"""People's SSIM thresholds for the audit, read from ``RUN/human/perceptibility.json``.

The fit itself is :mod:`calib.human.perceptibility`; this module only reads its result, so that the
audit stages' cache key (which hashes the code they run) follows what the audit reads, not the
labelling sessions' code.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from calib.audit.audit import SsimThresholds
from calib.errors import DataError
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

VERSION = 1  # of RUN/human/perceptibility.json


def load_fit(run: RunFolder) -> dict[str, Any] | None:
    """``RUN/human/perceptibility.json``, or ``None`` when the run has none.

    Raises:
        DataError: the file is unreadable or not a perceptibility fit.
    """
    path = run.file(A.PERCEPTIBILITY)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable perceptibility fit ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("per_class"), dict):
        raise DataError(f"{path}: not a perceptibility fit of version {VERSION}; rerun `calib label --task "
                        "perceptibility` to rewrite it")
    return doc


def audit_thresholds(run: RunFolder, ssim_min: float) -> SsimThresholds:
    """The SSIM threshold of each class for the audit, and its source: the class's own fit ("people, N
    pairs"), else the pooled fit ("people, pooled over classes, N pairs"), else ``ssim_min``
    ("uncalibrated, SSIM ≥ 0.9")."""
    names = list(run.class_names)
    doc = load_fit(run)
    values, sources = [], []
    pooled = (doc or {}).get("pooled") or {}
    for name in names:
        own = ((doc or {}).get("per_class") or {}).get(name) or {}
        if own.get("threshold") is not None:
            values.append(float(own["threshold"])), sources.append(f"people, {own['n']} pairs")
        elif pooled.get("threshold") is not None:
            values.append(float(pooled["threshold"]))
            sources.append(f"people, pooled over classes, {pooled['n']} pairs")
        else:
            values.append(float(ssim_min)), sources.append(SsimThresholds.uncalibrated_source(ssim_min))
    return SsimThresholds(tuple(values), tuple(sources))


__all__ = ["load_fit", "audit_thresholds", "VERSION"]
