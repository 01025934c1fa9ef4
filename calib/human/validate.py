"""``calib validate``: every judge of a run against human-labelled sets.

A set is judged only by a run that never trained on its source images (``calib run --human`` keeps
them in the test part); a set whose sources lie in the run's training part is refused. For each
judge the run has (f always; every other judge whose models the run trained), per set, per source
class and over all sets: agreement on "did the class change?" and on the label
(:mod:`calib.human.agreement`), the ROC curve of the judge's score, and the images where judge and
people disagree. Results go to ``RUN/validation/validation.{json,npz}``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.errors import DataError
from calib.human.agreement import agreement, roc_points
from calib.human.sets import HumanSet
from calib.io import read_json, to_jsonable, write_json, write_npz
from calib.judges import JudgeConfig
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

log = logging.getLogger(__name__)

FORMAT = "calib-validation"


def check_sets(ctx: Any, sets: list[HumanSet]) -> dict[str, np.ndarray]:
    """Each set's source indices in the run's dataset, after refusing sets the run trained on.

    Raises:
        DataError: a set does not fit the dataset, or some of its sources are training images.
    """
    out = {}
    train = ctx.splits.train.indices
    for s in sets:
        idx = s.check(ctx.dataset)
        seen = np.isin(idx, train)
        if seen.any():
            raise DataError(f"{s.name}: {int(seen.sum())} of its {len(idx)} source images are in the run's training "
                            f"part, so its judges have seen them; run `calib run --human {s.path}` to keep them out")
        out[s.name] = idx
    return out


def validate_run(ctx: RunFolder, sets: list[HumanSet], judges: list[str] | None = None, seed: int = 0,
                 judge_config: JudgeConfig | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Agreement of every judge with people on ``sets``; returns (the JSON document, per-image arrays).

    Args:
        ctx: the run folder.
        judges: judge names (default: every judge whose models the run has,
            :meth:`~calib.runfolder.RunFolder.available_judges`).
        judge_config: how judges are built (default: the run's ``[judge]`` options).
    """
    from calib.audit.audit import judge_verdicts

    if not sets:
        raise DataError("no human-labelled sets given")
    indices = check_sets(ctx, sets)
    judge_config = judge_config or ctx.judge_config()
    judges = judges or ctx.available_judges()
    device = ctx.device
    ds = ctx.dataset
    arrays: dict[str, np.ndarray] = {}
    for s in sets:
        key = _key(s.name)
        arrays[f"{key}__source_index"] = indices[s.name]
        arrays[f"{key}__source_label"] = ds.labels[indices[s.name]]
        arrays[f"{key}__human_label"] = s.human_label
        arrays[f"{key}__x"] = s.x
        arrays[f"{key}__x0"] = ds.images[indices[s.name]]  # the sources, for the report's gallery
    doc: dict[str, Any] = {"format": FORMAT, "sets": {}, "judges": {}, "seed": seed}
    for s in sets:
        key = _key(s.name)
        y, h = arrays[f"{key}__source_label"], s.human_label
        clear = h >= 0
        doc["sets"][s.name] = {"n": len(s), "path": s.path, "layout": s.layout, "norm": s.norm, "eps": s.eps,
                               "unclear": int((~clear).sum()), "relabelled": int((h[clear] != y[clear]).sum()),
                               "key": key}
    for name in judges:
        judge = ctx.judge(name, judge_config.identity(name))
        pooled: dict[str, list[np.ndarray]] = {k: [] for k in ("y", "h", "changed", "score", "label")}
        per_set = {}
        protocols = set()
        for s in sets:
            key = _key(s.name)
            y = arrays[f"{key}__source_label"]
            v = judge_verdicts(judge, ds.images[indices[s.name]], s.x, y, device=device)
            protocol = "plain"
            oof = _out_of_fold(judge, s)
            if oof is not None:  # a fitted judge on a set it was fitted on: its nested-CV verdicts, never in-sample
                v = {**v, "judge_score": oof[0], "class_changed": oof[0] > 0, "judge_label": oof[1]}
                protocol = "cross-validated"
            protocols.add(protocol)
            arrays[f"{key}__{name}__changed"] = v["class_changed"]
            arrays[f"{key}__{name}__score"] = v["judge_score"]
            arrays[f"{key}__{name}__label"] = v["judge_label"]
            per_set[s.name] = {**agreement(y, s.human_label, v["class_changed"], v["judge_score"], v["judge_label"],
                                           seed), "roc": roc_points(y, s.human_label, v["judge_score"]),
                               "protocol": protocol}
            for k, a in (("y", y), ("h", s.human_label), ("changed", v["class_changed"]),
                         ("score", v["judge_score"]), ("label", v["judge_label"])):
                pooled[k].append(a)
        p = {k: np.concatenate(v) for k, v in pooled.items()}
        per_class = {ds.class_names[c]: agreement(p["y"][p["y"] == c], p["h"][p["y"] == c], p["changed"][p["y"] == c],
                                                  p["score"][p["y"] == c], p["label"][p["y"] == c], seed,
                                                  intervals=False)  # about 10 images a class: Wilson only
                     for c in range(ds.num_classes) if (p["y"] == c).any()}
        doc["judges"][name] = {"describe": judge.describe(), "sets": per_set,
                               "all": {**agreement(p["y"], p["h"], p["changed"], p["score"], p["label"], seed),
                                       "roc": roc_points(p["y"], p["h"], p["score"]),
                                       "protocol": protocols.pop() if len(protocols) == 1 else
                                       "cross-validated on the sets it was fitted on, plain on the others"},
                               "per_class": per_class}
        a = doc["judges"][name]["all"]
        log.info("judge %s: balanced accuracy %s, AUC %s on %d images", name, a["balanced_accuracy"], a["auc"], a["n"])
    return doc, arrays


def _out_of_fold(judge: Any, s: HumanSet) -> tuple[np.ndarray, np.ndarray] | None:
    """A fitted judge's nested-CV scores and labels on set ``s`` when it was fitted on ``s``, else ``None``."""
    fitted_on = (getattr(judge, "doc", None) or {}).get("fitted_on") if getattr(judge, "kind", "") == "fitted" else None
    if not fitted_on:
        return None
    from calib.human.fit import set_fingerprint

    fp = set_fingerprint(s)
    for entry in fitted_on.values():
        if entry.get("fingerprint") == fp:
            logit = np.array([np.nan if v is None else v for v in entry["out_of_fold_logit"]], np.float64)
            return np.nan_to_num(logit), np.asarray(entry["out_of_fold_label"], np.int64)
    return None


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def save_validation(run: RunFolder, doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """``RUN/validation/validation.npz`` then ``.json``, atomically."""
    write_npz(run.file(A.VALIDATION_NPZ), arrays)
    write_json(run.file(A.VALIDATION_JSON), to_jsonable(doc))
    return run.file(A.VALIDATION_JSON)


def load_validation(run: RunFolder) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """What :func:`save_validation` wrote, or ``None``."""
    if not run.exists(A.VALIDATION_JSON):
        return None
    doc = read_json(run.file(A.VALIDATION_JSON), DataError, "validation results")
    try:
        with np.load(run.file(A.VALIDATION_NPZ), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{run.file(A.VALIDATION_NPZ)}: unreadable ({exc})") from exc
    return doc, arrays


__all__ = ["check_sets", "validate_run", "save_validation", "load_validation"]
