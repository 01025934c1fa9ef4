"""The epsilon table records people: per class, how often people relabelled budget-respecting examples.

From the run's labelling sessions (``RUN/human/<session>.npz``, :mod:`calib.human.session`) made on
adversarial examples at the table's *current* per-class budgets of a norm (a session made at other
budgets does not count), per class c of that norm's ``human`` block:

* ``n``: adversarial examples of class c with a clear answer; ``relabelled``: those people gave another
  class; ``share`` and its Wilson 95 % interval;
* ``status``: ``human-verified`` when the interval's upper end is <= q (the table's quantile level),
  ``not verified`` otherwise, ``unlabelled`` without answers;
* ``judge`` and ``judge_agreement``: the run's judge and its measured agreement with people
  (``RUN/validation``), when it was validated.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.human.agreement import wilson
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder


def eps_hash(table: Any, norm: str) -> str:
    """sha256 of the table's per-class input budgets of ``norm`` (what a session's examples were made at)."""
    return hashlib.sha256(json.dumps([repr(float(v)) for v in table.eps("input", norm)]).encode()).hexdigest()


def session_files(run: RunFolder) -> list[Path]:
    """The run's labelling sessions with answers (``RUN/human/<session>.npz`` that have their plan)."""
    out = []
    for name in run.names(A.HUMAN):
        answers, plan = A.session(name)
        if run.exists(plan):
            out.append(run.file(answers))
    return out


def human_blocks(run: RunFolder, table: Any) -> dict[str, dict[str, Any]]:
    """``input/<norm>`` -> its ``human`` block, for every norm with sessions at the current budgets."""
    names = table.class_names
    q = table.q
    judge = table.semantic_judge
    agreement = judge_agreement(run, judge)
    counts: dict[str, dict[str, Any]] = {}
    for path in session_files(run):
        with np.load(run.file(A.session(path.stem)[1]), allow_pickle=False) as z:
            norm, made_at = str(z["norm"]), str(z["eps_hash"]) if "eps_hash" in z.files else ""
            labels = z["source_label"]
        key = f"input/{norm}"
        if key not in table.budgets or made_at != eps_hash(table, norm):
            continue
        with np.load(path, allow_pickle=False) as z:
            item, answer, control = z["item"], z["human_label"], z["control"]
        keep = ~control & (answer >= 0)
        y = labels[item][keep]
        c = counts.setdefault(key, {"n": np.zeros(len(names), int), "k": np.zeros(len(names), int), "sets": []})
        c["n"] += np.bincount(y, minlength=len(names))
        c["k"] += np.bincount(y[answer[keep] != y], minlength=len(names))
        c["sets"].append(path.stem)
    out = {}
    for key, c in counts.items():
        intervals = [wilson(int(k), int(n)) for k, n in zip(c["k"], c["n"])]
        out[key] = {"sets": c["sets"], "n": [int(v) for v in c["n"]], "relabelled": [int(v) for v in c["k"]],
                    "share": [float(k / n) if n else None for k, n in zip(c["k"], c["n"])],
                    "wilson95": [list(w) if w else None for w in intervals],
                    "status": ["unlabelled" if not n else "human-verified" if w[1] <= q else "not verified"
                               for n, w in zip(c["n"], intervals)],
                    "q": q, "judge": judge, "judge_agreement": agreement}
    return out


def judge_agreement(run: RunFolder, judge: str | None) -> dict[str, Any] | None:
    """The run judge's measured agreement with people (``RUN/validation``), or ``None``."""
    from calib.human.validate import load_validation

    validation = load_validation(run)
    if validation is None or judge not in validation[0].get("judges", {}):
        return None
    a = validation[0]["judges"][judge]["all"]
    return {**{k: a.get(k) for k in ("n", "balanced_accuracy", "balanced_accuracy_ci95", "auc", "auc_ci95")},
            "sets": list(validation[0].get("sets", {}))}


def annotate_table(run: RunFolder, table: Any | None = None, save: bool = True) -> Any:
    """The run's table with its ``human`` blocks and, in ``policy.semantic``, the judge's measured
    agreement with people (written back atomically with ``save``)."""
    from calib.budgets import EpsTable
    from calib.io import to_jsonable

    table = table or run.table()
    doc = table.to_dict()
    for b in doc["budgets"].values():
        b.pop("human", None)
    for key, block in human_blocks(run, table).items():
        doc["budgets"][key]["human"] = block
    if table.semantic_judge is not None:
        doc["policy"]["semantic"]["judge_agreement"] = judge_agreement(run, table.semantic_judge)
    out = EpsTable.from_dict(to_jsonable(doc))
    if save:
        run.save_table(out)
    return out


__all__ = ["annotate_table", "human_blocks", "judge_agreement", "eps_hash", "session_files"]
