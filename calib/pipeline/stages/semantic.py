"""The judges' robustness radii at the calibration points (``semantic/<judge>.*``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.budgets.semantic import Radii, merge_invariance, save_radii
from calib.io import to_jsonable, write_json
from calib.judges import MODEL_OF, Judge, JudgeConfig
from calib.judges.registry import is_fitted
from calib.pipeline import sharded
from calib.pipeline.config import RunConfig, SemanticConfig
from calib.pipeline.stage import Stage, StageContext
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder


def query_part(folder: RunFolder, pair: str) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices and labels of the query points of a statistics ``pair`` (``calibration-train``)."""
    query = pair.split("-")[0]
    ds = folder.dataset
    idx = np.arange(len(ds)) if query == "all" else folder.split(query).indices
    return idx, ds.labels[idx]


def measure_radii(folder: RunFolder, judge: Judge, pair: str, config: SemanticConfig, *, seed: int,
                  progress: bool = True, judge_config: JudgeConfig | None = None) -> tuple[dict[str, Radii], np.ndarray, np.ndarray, dict[str, Any]]:
    """At the query points of ``pair``, per norm of ``config``: the judge's invariance radius toward the
    nearest training image of each other class and its robustness radius (an attack, warm-started from
    the invariance witnesses), merged (an invariance witness closer than the attack's best replaces it),
    and the relabel curve; returns
    (norm -> Radii, dataset indices, labels, norm -> relabel document)."""
    from calib.budgets.alignment import invariance_targets
    from calib.budgets.invariance import relabel_curve, union_rate

    judge_config = judge_config or folder.judge_config()
    idx, y = query_part(folder, pair)
    x = folder.dataset.images[idx]
    ref = folder.split("train")
    images, targets, aligned = invariance_targets(x, y, ref.images, ref.labels, len(folder.class_names),
                                                  config.align_grid())
    radii, curves = {}, {}
    for norm in config.norms:  # (sharded by point under torchrun: calib.pipeline.sharded)
        inv = sharded.invariance(folder, judge, judge_config, x, y, images, targets, norm, config.invariance_iters,
                                 progress, aligned=aligned["aligned"])
        start = np.where(np.isfinite(inv.radius) & (inv.radius > 0), 0.0, np.nan)[:, None, None, None] + inv.witnesses
        adv = sharded.adversarial(folder, judge, judge_config, x, y, norm, start.astype(np.float32), seed, progress,
                                  method=config.method, iters=config.iters, steps=config.steps,
                                  restarts=config.restarts, fmn_steps=config.fmn_steps, fmn_targets=config.fmn_targets)
        radii[norm] = merge_invariance(adv, inv)
        inv.info["targets"] = aligned
        curves[norm] = relabel_curve(judge, x, y, images, targets, norm, folder.class_names,
                                     class_map=config.relabel_targets, device=folder.device)
        curves[norm]["union_all_targets"] = union_rate(inv, y, tuple(curves[norm]["eps"]))
        curves[norm]["targets"] = aligned
    return radii, idx, y, curves


def save_measured(folder: RunFolder, name: str, radii: dict[str, Radii], idx: np.ndarray, y: np.ndarray,
                  judge: Judge, curves: dict[str, Any]) -> None:
    from calib.budgets.invariance import HUMAN_RELABEL

    for norm, doc in curves.items():
        people = HUMAN_RELABEL.get(norm)
        write_json(folder.file(A.relabel(name, norm)), to_jsonable({
            **doc, "judge": name, "people": None if people is None else {
                "eps": list(people), "relabel_rate": list(people.values()),
                "source": "Tramèr et al. 2020, automated L-inf invariance attack on 100 MNIST test points"}}))
    save_radii(folder.file(A.SEMANTIC), name, radii, idx, y, judge.describe())


@dataclass(frozen=True)
class SemanticOptions:
    judge: JudgeConfig  # the judge measured, with exactly the options that decide its verdicts
    semantic: SemanticConfig
    pair: str
    seed: int


def compute(ctx: StageContext, o: SemanticOptions) -> dict[str, Any]:
    judge = ctx.judge(o.judge.name, o.judge)
    radii, idx, y, curves = measure_radii(ctx, judge, o.pair, o.semantic, seed=o.seed, progress=ctx.progress,
                                          judge_config=o.judge)
    save_measured(ctx, o.judge.name, radii, idx, y, judge, curves)
    info: dict[str, Any] = {"judge": judge.describe()}
    for norm, r in radii.items():  # (per-class budgets depend on q and s: they live in the table)
        ok = ~r.clean_wrong
        info[norm] = {"median_empirical": float(np.median(r.empirical)), "seconds": r.info["seconds"],
                      "median_invariance": float(np.median(r.invariance[ok])) if ok.any() else None,
                      "invariance_seconds": r.info["invariance"]["seconds"],
                      "invariance_tightened": r.info["invariance_tightened"],
                      "certificate_checked": r.checked, "not_found": r.info["not_found"],
                      "clean_wrong": r.info["clean_wrong"],
                      "relabel": dict(zip(curves[norm]["eps"], curves[norm]["relabel_rate"]["all"]))}
    return to_jsonable(info)


def judge_reads(judge: JudgeConfig) -> tuple[str, ...]:
    """The model weights judge ``judge.name`` reads; for a judge fitted to people's labels, its file
    (which pins its members' weights hashes, checked when it is built)."""
    if is_fitted(judge.name):
        return (A.fitted_judge(judge.name),)
    return tuple(A.model(MODEL_OF[s])[0] for s in judge.singles(judge.name))


#: the code every judge runs (besides the models it reads)
JUDGE_CODE = ("calib.judges", "calib.runfolder.judges", "calib.runfolder.checks")


def semantic_stage(config: RunConfig, name: str) -> Stage:
    """Judge ``name``'s robustness radii at the calibration points."""
    o = SemanticOptions(config.judge.identity(name), config.semantic, config.pair, config.seed)
    outputs = (*A.semantic(name), *(A.relabel(name, norm) for norm in config.semantic.norms))
    return Stage(f"semantic-{name}", compute, o, outputs, reads=judge_reads(o.judge),
                 code=("calib.budgets.semantic", "calib.budgets.invariance", "calib.budgets.alignment",
                       "calib.budgets.minnorm", "calib.perturb.fmn", "calib.distributed", *sharded.CODE, measure_radii,
                       query_part, save_measured, *JUDGE_CODE))
