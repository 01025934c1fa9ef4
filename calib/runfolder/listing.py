"""Runs under a folder (``calib list``) and two runs' epsilon tables side by side (``calib compare``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from calib.errors import CalibError, DataError
from calib.runfolder import artefacts as A
from calib.runfolder.folder import RunFolder


def list_runs(root: str | os.PathLike[str], depth: int = 3) -> list[dict[str, Any]]:
    """Every run folder (one with a ``run.json``) at most ``depth`` levels under ``root``, sorted by
    path: its dataset, seed, judge, whether it finished, when it was recorded, and its final budgets'
    range per input norm. A folder that cannot be read is listed with the reason."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder not found: {root}")
    found = sorted({p.parent for level in range(depth + 1)
                    for p in root.glob("/".join(["*"] * level + [A.RECORD]))})
    return [_describe(p) for p in found]


def _describe(path: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"path": str(path)}
    try:
        run = RunFolder.open(path)
        rec = run.record
        row |= {"dataset": rec["dataset"].get("source") or rec["dataset"].get("name"), "seed": run.seed,
                "judge": run.judge_config().name, "finished": run.summary() is not None,
                "recorded": rec.get("written")}
        if run.exists(A.EPS_TABLE):
            table = run.table()
            row["budgets"] = {b.key: (float(b.eps.min()), float(b.eps.max()))
                              for b in map(table.budget, table.keys) if b.space == "input"}
            row["table"] = table.method + (f" ({table.semantic_judge})" if table.semantic_judge else "")
    except CalibError as exc:
        row["problem"] = str(exc)
    return row


def compare_tables(a: RunFolder, b: RunFolder) -> dict[str, Any]:
    """The two runs' epsilon tables side by side: per budget both hold and per class, each run's eps and
    coverage, and B/A. Refuses two runs on different data (their classes would not correspond)."""
    ta, tb = a.table(), b.table()
    if ta.fingerprint != tb.fingerprint:
        raise DataError(f"{a.path} and {b.path} were calibrated on different data ({ta.fingerprint[:12]}… and "
                        f"{tb.fingerprint[:12]}…); their classes do not correspond")
    rows = []
    for key in [k for k in ta.keys if k in tb.keys]:
        ba, bb = ta.budget(key), tb.budget(key)
        for c, name in enumerate(ta.class_names):
            ea, eb = float(ba.eps[c]), float(bb.eps[c])
            rows.append({"budget": key, "class": name, "a": ea, "b": eb, "coverage_a": float(ba.coverage[c]),
                         "coverage_b": float(bb.coverage[c]), "ratio": eb / ea if ea > 0 else None})
    return {"a": {"path": str(a.path), "method": ta.method, "judge": ta.semantic_judge, "q": ta.q, "s": ta.s},
            "b": {"path": str(b.path), "method": tb.method, "judge": tb.semantic_judge, "q": tb.q, "s": tb.s},
            "only_a": [k for k in ta.keys if k not in tb.keys], "only_b": [k for k in tb.keys if k not in ta.keys],
            "rows": rows}
