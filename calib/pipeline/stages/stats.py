"""The statistics stage: d_same / d_diff, separation, duplicates and class-pair matrices of the run's
data, in input space and in the embedding g (``stats.json`` / ``stats.npz``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calib.pipeline import sharded
from calib.pipeline.config import RunConfig
from calib.pipeline.stage import Stage, StageContext
from calib.runfolder import artefacts as A
from calib.runfolder.checks import check_model_data
from calib.stats import Stats, StatsConfig

if TYPE_CHECKING:
    from calib.runfolder import RunFolder


def measure_stats(folder: RunFolder, config: StatsConfig, *, embedding: str | Path | None = None,
                  allow_mismatch: bool = False, progress: bool = True) -> Stats:
    """Statistics of a run's data and split; with ``config.embedding`` also in the embedding: the run's
    ``models/embedding`` or, with ``embedding``, another artefact (refused when trained on other data
    or another split, unless ``allow_mismatch``)."""
    from calib.models import load_model
    from calib.stats import compute_stats
    from calib.train import embed

    config = dataclasses.replace(config, use_gpu=folder.device.startswith("cuda"))
    embeddings, prov = None, {}
    if config.embedding:
        if embedding is None:
            model, cfg = folder.model("embedding", allow_mismatch=allow_mismatch), folder.model_config("embedding")
        else:
            model, cfg = load_model(embedding, folder.device)
            check_model_data(cfg, folder.dataset, folder.splits, "embedding", allow_mismatch)
        embeddings = embed(model, folder.dataset.images, folder.device)
        prov["embedding_sha256"] = cfg["weights_sha256"]
    if folder.has_model("classifier"):
        prov["classifier_sha256"] = folder.model_config("classifier")["weights_sha256"]
    return compute_stats(folder.dataset, folder.splits, config, embeddings=embeddings, provenance=prov,
                         show_progress=progress, search=sharded.same_diff,  # (sharded by query under torchrun,
                         pieces=sharded.matrix_pieces)                      # the exact matrices by block)


@dataclass(frozen=True)
class StatsOptions:
    config: StatsConfig  # use_gpu is where it runs, set from the context


def compute(ctx: StageContext, o: StatsOptions) -> dict[str, Any]:
    s = measure_stats(ctx, o.config, progress=ctx.progress)
    s.save(ctx.file(A.STATS))
    return {"seconds": s.meta["seconds"]}


def stats_config(config: RunConfig) -> StatsConfig:
    """The run's statistics: train-train, its calibration pair and test-train."""
    return StatsConfig(pairs=tuple(dict.fromkeys(("train-train", config.pair, "test-train"))),
                       matrix_modes=config.matrix_modes, seed=config.seed)


def stats_stage(config: RunConfig) -> Stage:
    return Stage("stats", compute, StatsOptions(stats_config(config)), (A.STATS_JSON, A.STATS_NPZ),
                 reads=(A.model("classifier")[0], A.model("embedding")[0]),
                 code=("calib.stats", "calib.models", "calib.train.embedding", "calib.runfolder.checks",
                       "calib.distributed", measure_stats, *sharded.STATS_CODE))
