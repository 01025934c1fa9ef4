"""Every judge whose models the run trains, against the human-labelled sets (``validation/``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from calib.io import sha256_file
from calib.judges import MODEL_OF, JudgeConfig
from calib.pipeline.config import RunConfig
from calib.pipeline.stage import Stage, StageContext
from calib.pipeline.stages.semantic import JUDGE_CODE
from calib.runfolder import artefacts as A


@dataclass(frozen=True)
class ValidationOptions:
    """The sets (paths and their sha256, in the order given), the judges validated, how judges are
    built, and the seed of the bootstrap intervals."""

    sets: tuple[tuple[str, str], ...]
    judges: tuple[str, ...]
    judge: JudgeConfig
    seed: int


def compute(ctx: StageContext, o: ValidationOptions) -> dict[str, Any]:
    from calib.human import load_human_sets, save_validation, validate_run

    sets = load_human_sets([path for path, _ in o.sets])
    doc, arrays = validate_run(ctx, sets, list(o.judges), seed=o.seed, judge_config=o.judge)
    save_validation(ctx, doc, arrays)
    return {name: {k: v["all"][k] for k in ("n", "balanced_accuracy", "auc")} for name, v in doc["judges"].items()}


def validation_stage(config: RunConfig, files: list[str], trained: set[str]) -> Stage:
    """``files``: the human-labelled set files (expanded from the config's paths); ``trained``: the
    model stems the run trains (f always)."""
    judges = [name for name, stem in MODEL_OF.items() if stem in trained]
    if all(m in judges for m in config.judge.members):
        judges.append("ensemble")
    jc = config.judge.identity("ensemble")  # k, members and rule: what any of them reads
    stems = sorted({MODEL_OF[s] for j in judges for s in jc.singles(j)})
    o = ValidationOptions(tuple((f, sha256_file(f)) for f in files), tuple(judges), jc, config.seed)
    return Stage("validation", compute, o, (A.VALIDATION_JSON, A.VALIDATION_NPZ),
                 reads=tuple(A.model(s)[0] for s in stems), code=("calib.human", *JUDGE_CODE))
