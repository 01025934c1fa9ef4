"""The headline's attacks on the test part (global eps, per-class eps, embedding-projected PGD) and
their audits by the run's judge."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.attacks.runner import AttackSpec
from calib.audit import AuditConfig
from calib.data.split import stratified_subset
from calib.io import sha256_file
from calib.judges import JudgeConfig
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


def budget_column(spec: AttackSpec):
    """The derived input of an attack under the table: the one column of budgets it uses."""
    def budgets(ctx: StageContext) -> dict[str, Any]:
        if spec.eps is not None:
            return {"budgets": None}
        return {"budgets": eps_key(ctx.table(), *spec.table_column)}
    return budgets


def compute_attack(ctx: StageContext, o: AttackOptions) -> dict[str, Any]:
    from calib.attacks.runner import run_attack, save_attack

    sel, x, y = attacked(ctx, o.n, o.seed)
    uses_table = o.spec.eps is None
    res = run_attack(o.spec, ctx.model("classifier"), ctx.model("embedding") if "embedding" in o.spec.models else None,
                     x, y, table=ctx.table() if uses_table else None, device=ctx.device, show_progress=ctx.progress)
    res["arrays"]["indices"] = ctx.splits.test.indices[sel]
    res["arrays"]["x"] = x
    save_attack(res, ctx.file(A.ATTACKS), o.name, classifier=sha256_file(ctx.file(A.model("classifier")[0])),
                embedding=sha256_file(ctx.file(A.model("embedding")[0])),
                table=sha256_file(ctx.file(A.EPS_TABLE)) if uses_table else None)
    s = res["summary"]
    return {"success_rate": s["success_rate"], "seconds": s["seconds"], "projection": s["projection"]}


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
    from calib.audit import audit
    from calib.models.infer import forward_batched

    a = o.attack
    sel, x, y = attacked(ctx, a.n, a.seed)
    with np.load(ctx.file(A.attack(a.name)[0]), allow_pickle=False) as z:
        x_adv, pred, eps = z["x_adv"], z["pred"], z["eps"]
    if o.ball_space == "embedding":
        eps = ctx.table().eps("embedding", "l2")[y]
    result = audit(x, x_adv, y, pred, norm=a.spec.norm, eps=eps, reference=ctx.reference(),
                   judge=ctx.judge(o.judge.name, o.judge), config=o.audit, ball_space=o.ball_space,
                   embedding=ctx.model("embedding"), num_classes=len(ctx.class_names), device=ctx.device,
                   pred_clean=forward_batched(ctx.model("classifier"), x, device=ctx.device).argmax(1).numpy())
    result.meta |= {"attack": a.name, "budget": o.budget, "spec": asdict(a.spec),
                    "predictions": {"by": "the attacked classifier", "classifier": o.classifier or "trained by calib"}}
    result.arrays["indices"] = ctx.splits.test.indices[sel]
    result.save(ctx.file(A.AUDIT), a.name, ctx.class_names)
    return {"valid_rate": float(result.arrays["valid"].mean()),
            "success_rate": float(result.arrays["success"].mean()), "judge": o.judge.name}


def attack_stages(config: RunConfig) -> list[Stage]:
    """Every attack of the headline, each followed by its audit by the run's judge."""
    stages = []
    judge = config.judge.identity()
    for item in attack_plan(config.attack, seed=config.seed):
        spec = item["spec"]
        a = AttackOptions(item["name"], spec, config.attack.n, config.seed)
        column = budget_column(spec)
        stages.append(Stage(f"attack-{a.name}", compute_attack, a, A.attack(a.name),
                            reads=tuple(A.model(m)[0] for m in spec.models), derived=column,
                            code=("calib.attacks.runner", "calib.models", attacked)))
        o = AuditOptions(a, judge, config.audit, item["ball_space"], item["budget"], config.classifier)
        stages.append(Stage(f"audit-{a.name}", compute_audit, o, A.audit(a.name),
                            reads=(A.attack(a.name)[0], *judge_reads(judge), A.model("classifier")[0],
                                   A.model("embedding")[0]),
                            derived=column, code=("calib.audit", StageContext.reference, attacked, *JUDGE_CODE)))
    return stages
