"""The headline's attacks on the test part (global eps, per-class eps, embedding-projected PGD) and
their audits by the run's judge."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from calib.attacks.runner import AttackSpec
from calib.audit import AuditConfig
from calib.data.split import stratified_subset
from calib.human.thresholds import audit_thresholds
from calib.io import sha256_file
from calib.judges import JudgeConfig
from calib.pipeline import sharded
from calib.pipeline.config import RunConfig, attack_plan
from calib.pipeline.stage import Stage, StageContext
from calib.pipeline.stages.semantic import JUDGE_CODE, judge_reads
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder


def eps_key(table: Any, space: str, norm: str) -> str:
    """sha256 of one column of per-class budgets: what an attack under the table depends on (edits
    elsewhere in the table, such as a judge's bracket or people's labels, do not redo it)."""
    return hashlib.sha256(json.dumps([repr(float(v)) for v in table.eps(space, norm)]).encode()).hexdigest()


def attacked(folder: RunFolder, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The attacked test examples: positions in the test part (at most ``n``, stratified, seeded),
    images, labels."""
    test = folder.splits.test
    sel = stratified_subset(test.labels, n, seed)
    return sel, test.images[sel], test.labels[sel]


@dataclass(frozen=True)
class AttackOptions:
    """One attack: its name in the run (``attacks/<name>.*``), the spec, and which test examples."""

    name: str
    spec: AttackSpec
    n: int | None
    seed: int
    align: bool = False  # invariance attack: aligned targets, as the semantic stage measured them


def budget_column(spec: AttackSpec):
    """The derived input of an attack under the table: the one column of budgets it uses."""
    def budgets(ctx: StageContext) -> dict[str, Any]:
        if spec.eps is not None:
            return {"budgets": None}
        return {"budgets": eps_key(ctx.table(), *spec.table_column)}
    return budgets


def compute_attack(ctx: StageContext, o: AttackOptions) -> dict[str, Any]:
    from calib.attacks.runner import save_attack

    sel, x, y = attacked(ctx, o.n, o.seed)
    uses_table = o.spec.eps is None
    if o.spec.attack == "invariance":
        res = invariance_attack(ctx, x, y, o.spec, o.align)
    else:  # (sharded by point under torchrun: calib.pipeline.sharded)
        eps = ctx.table().eps_for(y, *o.spec.table_column, as_tensor=False).reshape(-1) if uses_table else None
        res = sharded.attack(ctx, o.spec, x, y, eps, ctx.progress)
    res["arrays"]["indices"] = ctx.splits.test.indices[sel]
    res["arrays"]["x"] = x
    save_attack(res, ctx.file(A.ATTACKS), o.name, classifier=sha256_file(ctx.file(A.model("classifier")[0])),
                embedding=sha256_file(ctx.file(A.model("embedding")[0])),
                table=sha256_file(ctx.file(A.EPS_TABLE)) if uses_table else None)
    s = res["summary"]
    return {"success_rate": s["success_rate"], "seconds": s["seconds"], "projection": s["projection"]}


def invariance_attack(ctx: StageContext, x: np.ndarray, y: np.ndarray, spec: AttackSpec,
                      align: bool = False) -> dict[str, Any]:
    """Each test point moved toward its least-ink image of another class (nearest in the training part,
    aligned to the point with ``align``) to its class's table budget: the direction the invariance budget
    was measured in."""
    import time

    from calib.budgets.alignment import AlignGrid, invariance_targets
    from calib.budgets.invariance import least_ink_examples
    from calib.models.infer import forward_batched
    from calib.perturb.invariants import check_ball, perturbation_norms

    t0 = time.perf_counter()
    tr = ctx.splits.train
    eps = ctx.table().eps("input", spec.norm)[y]
    images, targets, _ = invariance_targets(x, y, tr.images, tr.labels, len(ctx.class_names),
                                            AlignGrid() if align else None)
    x_adv, target = least_ink_examples(x, y, images, targets, eps, spec.norm)
    check_ball(x, x_adv, eps, spec.norm, tol=1e-6, who="invariance attack")
    pred = forward_batched(ctx.model("classifier"), x_adv, device=ctx.device).argmax(1).numpy()
    xt, xa = torch.from_numpy(x), torch.from_numpy(x_adv)
    arrays = {"x_adv": x_adv, "success": pred != y, "eps": eps, "pred": pred, "labels": y, "target_class": target,
              **{f"dist_{n}": perturbation_norms(xt, xa, n).numpy() for n in ("linf", "l2", "l1")}}
    per_class = {str(c): {"n": int((y == c).sum()), "success_rate": float(arrays["success"][y == c].mean())}
                 for c in np.unique(y)}
    summary = {"spec": asdict(spec), "n": int(len(y)), "success_rate": float(arrays["success"].mean()),
               "seconds": time.perf_counter() - t0, "per_class": per_class, "projection": None,
               "budget": "eps table (invariance direction)"}
    return {"arrays": arrays, "summary": summary}


@dataclass(frozen=True)
class AuditOptions:
    """The audit of one attack by a judge: which examples (as the attack), the threat model it checks
    (``ball_space``: the input ball or the embedding ball), the judge and the audit's thresholds."""

    attack: AttackOptions
    judge: JudgeConfig
    audit: AuditConfig
    ball_space: str
    budget: str
    classifier: str | None  # a user's classifier (factory), else trained by calib


def compute_audit(ctx: StageContext, o: AuditOptions) -> dict[str, Any]:
    from calib.models.infer import forward_batched

    a = o.attack
    sel, x, y = attacked(ctx, a.n, a.seed)
    with np.load(ctx.file(A.attack(a.name)[0]), allow_pickle=False) as z:
        x_adv, pred, eps = z["x_adv"], z["pred"], z["eps"]
    if o.ball_space == "embedding":
        eps = ctx.table().eps("embedding", "l2")[y]
    ctx.reference()  # built once by the leader (followers build their own)
    result = sharded.audit(ctx, ctx.judge(o.judge.name, o.judge), o.judge, x, x_adv, y, pred, eps,
                           forward_batched(ctx.model("classifier"), x, device=ctx.device).argmax(1).numpy(),
                           norm=a.spec.norm, config=o.audit, ball_space=o.ball_space,
                           thresholds=audit_thresholds(ctx, o.audit.ssim_min))
    result.meta |= {"attack": a.name, "budget": o.budget, "spec": asdict(a.spec),
                    "predictions": {"by": "the attacked classifier", "classifier": o.classifier or "trained by calib"}}
    result.arrays["indices"] = ctx.splits.test.indices[sel]
    result.save(ctx.file(A.AUDIT), a.name, ctx.class_names)
    return {"valid_rate": float(result.arrays["valid"].mean()),
            "success_rate": float(result.arrays["success"].mean()), "judge": o.judge.name}


def audit_inputs(column: Any, ssim_min: float):
    """The derived inputs of an audit: the attack's budget column and the SSIM threshold of each class
    with its source (people's fitted thresholds in ``RUN/human/perceptibility.json``, else ``ssim_min``),
    so a new fit re-audits."""
    def inputs(ctx: StageContext) -> dict[str, Any]:
        return {**column(ctx), "ssim_thresholds": asdict(audit_thresholds(ctx, ssim_min))}
    return inputs


def attack_stages(config: RunConfig) -> list[Stage]:
    """Every attack of the headline, each followed by its audit by the run's judge."""
    stages = []
    judge = config.judge.identity()
    for item in attack_plan(config.attack, seed=config.seed):
        spec = item["spec"]
        a = AttackOptions(item["name"], spec, config.attack.n, config.seed,
                          align=config.semantic is not None and config.semantic.align and spec.attack == "invariance")
        column = budget_column(spec)
        stages.append(Stage(f"attack-{a.name}", compute_attack, a, A.attack(a.name),
                            reads=tuple(A.model(m)[0] for m in spec.models), derived=column,
                            code=("calib.attacks.runner", "calib.models", "calib.budgets.invariance",
                                  "calib.budgets.alignment", "calib.distributed", attacked,
                                  invariance_attack, *sharded.ATTACK_CODE)))
        o = AuditOptions(a, judge, config.audit, item["ball_space"], item["budget"], config.classifier)
        stages.append(Stage(f"audit-{a.name}", compute_audit, o, A.audit(a.name),
                            reads=(A.attack(a.name)[0], *judge_reads(judge), A.model("classifier")[0],
                                   A.model("embedding")[0]),
                            derived=audit_inputs(column, config.audit.ssim_min),
                            code=("calib.audit", "calib.human.thresholds", "calib.distributed",
                                  StageContext.reference, attacked, *JUDGE_CODE, *sharded.AUDIT_CODE)))
    return stages
