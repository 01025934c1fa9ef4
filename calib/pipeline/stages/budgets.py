"""The budgets stage: the epsilon table (geometric, embedding margin, and with a judge's radii the
final ``min(geometric, semantic)``), annotated with people's relabelling, and the per-sample budgets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.budgets import EpsTable, Policy, geometric_table
from calib.budgets.semantic import load_radii
from calib.errors import ConfigError
from calib.io import sha256_file
from calib.pipeline.config import RunConfig
from calib.pipeline.stage import Stage, StageContext
from calib.runfolder import artefacts as A
from calib.stats import Stats

if TYPE_CHECKING:
    from calib.runfolder import RunFolder


def semantic_table(geo: EpsTable, stats: Stats, folder: RunFolder, judge: str, bound: str = "empirical",
                   rule: str = "invariance") -> EpsTable:
    """The final table from the geometric one and the saved radii ``semantic/<judge>.*``."""
    from calib.budgets import final_table

    if not folder.exists(A.semantic(judge)[1]):
        raise ConfigError(f"{folder.path} has no radii of judge {judge!r} ({A.semantic(judge)[1]}); measure them "
                          f"with `calib budgets --run {folder.path} --semantic --judge {judge}` or `calib run`")
    radii, doc, idx, _ = load_radii(folder.file(A.SEMANTIC), judge)
    for norm in radii:
        ps = stats.pair("input", norm, geo.pair)
        if not np.array_equal(ps.query_indices, idx):
            raise ConfigError(f"the {judge} radii were measured on other points than the statistics' "
                              f"{geo.pair} pair; recompute them")
    keep = ("iters", "steps", "restarts", "max_radius", "seed", "certificate_checked", "not_found", "clean_wrong",
            "invariance_tightened")
    info = {norm: {k: v for k, v in i.items() if k in keep} for norm, i in doc["norms"].items()}
    for norm, i in doc["norms"].items():  # how the adversarial radius was estimated (no timings: reproducible)
        info[norm]["method"] = i.get("method", "bisection")
        if i.get("fmn"):
            info[norm]["fmn"] = {k: v for k, v in i["fmn"].items() if k not in ("seconds",)}
    for norm, i in doc["norms"].items():  # which targets the invariance paths moved toward
        targets = (i.get("invariance") or {}).get("targets")
        if targets is not None:
            info[norm]["invariance_targets"] = {k: targets[k] for k in ("aligned", "grid") if k in targets}
    if rule == "invariance" and any(r.invariance is None for r in radii.values()):
        raise ConfigError(f"the {judge} radii in {folder.path} have no invariance radii (measured by an older calib); "
                          "measure them again with `calib run`, or use --semantic-rule adversarial")
    return final_table(geo, stats, radii, doc["judge"], bound=bound, rule=rule, semantic_info={"per_norm": info})


@dataclass(frozen=True)
class BudgetsOptions:
    """The table's policy, the statistics pair it calibrates on, and the semantic judge (``None``: the
    geometric table only) with the side of its radius the final budget uses."""

    policy: Policy
    pair: str = "calibration-train"
    judge: str | None = None
    bound: str = "empirical"
    seed: int = 0
    rule: str = "invariance"

    def __post_init__(self) -> None:
        from calib.budgets.calibrate import SEMANTIC_RULES

        if self.rule not in SEMANTIC_RULES:
            raise ConfigError(f"unknown semantic rule {self.rule!r}; choose {' or '.join(SEMANTIC_RULES)}")


def make_table(folder: RunFolder, o: BudgetsOptions) -> EpsTable:
    """The epsilon table of a run's statistics (and radii), with people's relabelling where labelled."""
    from calib.human.table import annotate_table

    stats = folder.stats()
    table = geometric_table(stats, o.policy, pair=o.pair, provenance={"seed": o.seed})
    if o.judge is not None:
        table = semantic_table(table, stats, folder, o.judge, o.bound, o.rule)
    return annotate_table(folder, table, save=False)


def write_per_sample(folder: RunFolder, o: BudgetsOptions) -> None:
    from calib.budgets.per_sample import per_sample_arrays, write_per_sample as write

    radii = None if o.judge is None else load_radii(folder.file(A.SEMANTIC), o.judge)[0]
    caps = {}  # test points: the class's semantic budget (their own radii are not measured)
    for norm in radii or {}:
        sem = folder.table().budget("input", norm).semantic
        vals = sem.certified if o.bound == "certified" else sem.empirical  # (the rule's upper estimate)
        caps[norm] = np.array([np.inf if v is None else v for v in vals], float)
    ds = folder.record["dataset"]
    meta = {"dataset": ds["name"], "fingerprint": ds["fingerprint"], "pair": o.pair, "q": o.policy.q,
            "s": o.policy.s, "judge": o.judge, "bound": o.bound if o.judge else None,
            "parts": {"0": "calibration (own radii)", "1": "test (own geometric budget, the class's semantic budget)"}}
    meta["rule"] = o.rule if o.judge else None
    write(folder.file(A.PER_SAMPLE), per_sample_arrays(folder.stats(), o.policy, o.pair, radii, o.bound,
                                                       class_semantic=caps, rule=o.rule), meta)


def compute(ctx: StageContext, o: BudgetsOptions) -> dict[str, Any]:
    ctx.save_table(make_table(ctx, o))
    write_per_sample(ctx, o)
    return {}


def human_inputs(ctx: StageContext) -> dict[str, str]:
    """Hashes of what the table's ``human`` blocks read: labelling sessions and validation results."""
    from calib.human.table import session_files

    files = session_files(ctx) + [ctx.file(A.VALIDATION_JSON)] * ctx.exists(A.VALIDATION_JSON)
    return {str(p.relative_to(ctx.path)): sha256_file(p) for p in files}


def budgets_options(config: RunConfig) -> BudgetsOptions:
    return BudgetsOptions(Policy(q=config.q, s=config.s, rule=config.rule), config.pair,
                          config.judge.name if config.semantic is not None else None, config.semantic_bound,
                          config.seed, config.semantic_rule)


def budgets_stage(config: RunConfig) -> Stage:
    return budgets_stage_from(budgets_options(config))


def budgets_stage_from(o: BudgetsOptions) -> Stage:
    return Stage("budgets", compute, o, (A.EPS_TABLE, A.EPS_TABLE_CSV, A.PER_SAMPLE),
                 reads=(A.STATS_NPZ, A.STATS_JSON, *((A.semantic(o.judge)[0],) if o.judge else ())),
                 derived=human_inputs, code=("calib.budgets", "calib.human.table", make_table, semantic_table,
                                             write_per_sample), tensors=False)
