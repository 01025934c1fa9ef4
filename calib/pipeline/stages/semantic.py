"""The judges' robustness radii at the calibration points (``semantic/<judge>.*``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.budgets.semantic import Radii, robustness_radii, save_radii
from calib.io import to_jsonable
from calib.judges import MODEL_OF, Judge, JudgeConfig
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
                  progress: bool = True) -> tuple[dict[str, Radii], np.ndarray, np.ndarray]:
    """The judge's robustness radii at the query points of ``pair``, per norm of ``config``; returns
    (norm -> Radii, dataset indices, labels)."""
    idx, y = query_part(folder, pair)
    x = folder.dataset.images[idx]
    radii = {norm: robustness_radii(judge, x, y, norm, iters=config.iters, steps=config.steps,
                                    restarts=config.restarts, seed=seed, device=folder.device, show_progress=progress)
             for norm in config.norms}
    return radii, idx, y


def save_measured(folder: RunFolder, name: str, radii: dict[str, Radii], idx: np.ndarray, y: np.ndarray,
                  judge: Judge) -> None:
    save_radii(folder.file(A.SEMANTIC), name, radii, idx, y, judge.describe())


@dataclass(frozen=True)
class SemanticOptions:
    judge: JudgeConfig  # the judge measured, with exactly the options that decide its verdicts
    semantic: SemanticConfig
    pair: str
    seed: int


def compute(ctx: StageContext, o: SemanticOptions) -> dict[str, Any]:
    judge = ctx.judge(o.judge.name, o.judge)
    radii, idx, y = measure_radii(ctx, judge, o.pair, o.semantic, seed=o.seed, progress=ctx.progress)
    save_measured(ctx, o.judge.name, radii, idx, y, judge)
    info: dict[str, Any] = {"judge": judge.describe()}
    for norm, r in radii.items():  # (per-class budgets depend on q and s: they live in the table)
        info[norm] = {"median_empirical": float(np.median(r.empirical)), "seconds": r.info["seconds"],
                      "certificate_checked": r.checked, "not_found": r.info["not_found"],
                      "clean_wrong": r.info["clean_wrong"]}
    return to_jsonable(info)


def judge_reads(judge: JudgeConfig) -> tuple[str, ...]:
    """The model weights judge ``judge.name`` reads."""
    return tuple(A.model(MODEL_OF[s])[0] for s in judge.singles(judge.name))


#: the code every judge runs (besides the models it reads)
JUDGE_CODE = ("calib.judges", "calib.runfolder.judges", "calib.runfolder.checks")


def semantic_stage(config: RunConfig, name: str) -> Stage:
    """Judge ``name``'s robustness radii at the calibration points."""
    o = SemanticOptions(config.judge.identity(name), config.semantic, config.pair, config.seed)
    return Stage(f"semantic-{name}", compute, o, A.semantic(name), reads=judge_reads(o.judge),
                 code=("calib.budgets.semantic", measure_radii, query_part, save_measured, *JUDGE_CODE))
