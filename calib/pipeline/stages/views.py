"""The class-mixing probe (``probe.npz``) and the 2-D views of the embedding (``projection.npz``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from calib.data.split import stratified_subset
from calib.io import write_npz
from calib.judges import JudgeConfig
from calib.pipeline.config import RunConfig
from calib.pipeline.stage import Stage, StageContext
from calib.pipeline.stages.semantic import JUDGE_CODE, judge_reads
from calib.runfolder import artefacts as A


@dataclass(frozen=True)
class ProbeOptions:
    eps: float
    seed: int
    judge: JudgeConfig


def compute_probe(ctx: StageContext, o: ProbeOptions) -> dict[str, Any]:
    """The class-mixing probe ``x0 + eps sign(x1)`` on test images, with f's prediction and the run
    judge's label."""
    from calib.attacks.probe import class_mixing_probe
    from calib.audit.audit import judge_verdicts
    from calib.models.infer import forward_batched

    test = ctx.splits.test
    p = class_mixing_probe(test.images, test.labels, o.eps, seed=o.seed, embedding=ctx.model("embedding"))
    arrays = {"images": p.images, "index0": test.indices[p.index0], "index1": test.indices[p.index1],
              "class0": p.class0, "class1": p.class1,
              "pred": forward_batched(ctx.model("classifier"), p.images, device=ctx.device).argmax(1).numpy(),
              "x0": test.images[p.index0], "x1": test.images[p.index1],
              **{f"dist_{k}": v for k, v in p.input_distance.items()}}
    v = judge_verdicts(ctx.judge(o.judge.name, o.judge), test.images[p.index0], p.images, p.class0, device=ctx.device)
    arrays |= {"judge_label": v["judge_label"], "judge_changed": v["class_changed"], "judge_score": v["judge_score"]}
    write_npz(ctx.file(A.PROBE), {"eps": np.float64(p.eps), "judge": np.array(o.judge.name), **arrays})
    return {"eps": p.eps, "classifier_fooled": float((arrays["pred"] != arrays["class0"]).mean()),
            "judge_changed": float(arrays["judge_changed"].mean()), "judge": o.judge.name}


def probe_stage(config: RunConfig) -> Stage:
    o = ProbeOptions(config.attack.probe_eps, config.seed, config.judge.identity())
    return Stage("probe", compute_probe, o, (A.PROBE,),
                 reads=(A.model("classifier")[0], A.model("embedding")[0], *judge_reads(o.judge)),
                 code=("calib.attacks.probe", "calib.audit.audit", "calib.models", *JUDGE_CODE))


@dataclass(frozen=True)
class ProjectionOptions:
    points: int
    seed: int


def compute_projection(ctx: StageContext, o: ProjectionOptions) -> dict[str, Any]:
    """PCA and t-SNE of the embedding of (a seeded, stratified sample of) the whole dataset."""
    from calib.report.projection import project

    ds = ctx.dataset
    sel = stratified_subset(ds.labels, o.points, o.seed)
    arrays = project(ctx.model("embedding"), ds.images[sel], seed=o.seed, device=ctx.device)
    write_npz(ctx.file(A.PROJECTION), {"indices": sel, "labels": ds.labels[sel], **arrays})
    return {"points": int(sel.size)}


def projection_stage(config: RunConfig) -> Stage:
    return Stage("projection", compute_projection, ProjectionOptions(config.tsne_points, config.seed),
                 (A.PROJECTION,), reads=(A.model("embedding")[0],),
                 code=("calib.report.projection", "calib.models"))
