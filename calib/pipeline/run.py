"""``calib run``: dataset -> classifier f, embedding g and the models of the run's judges ->
statistics -> the judges' robustness radii -> (validation against people) -> geometric + semantic
budgets (the epsilon table) -> attacks (global eps, per-class eps, embedding-projected PGD) -> audit by
the run's judge -> class-mixing probe -> 2-D embedding views -> HTML report.

:func:`build_stages` declares the graph, one :class:`~calib.pipeline.stage.Stage` per step (each
built from the config by its module in :mod:`calib.pipeline.stages`), and :func:`run` walks it.
Every stage is cached under the run folder, keyed by its options, the run's data and split, what it
reads and the code it runs, so a second identical invocation only checks hashes, an interrupted run
resumes at the stage it was in, and a changed option or edited code recomputes only the stages
downstream of it.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch

from calib.data import SplitSpec, load_dataset
from calib.io import to_jsonable, versions, write_json
from calib.pipeline.cache import StageCache, StageRecord
from calib.pipeline.config import RunConfig, attack_plan
from calib.pipeline.stage import Stage, StageContext
from calib.pipeline.stages.attacks import attack_stages
from calib.pipeline.stages.budgets import budgets_stage
from calib.pipeline.stages.models import MODEL_STAGES, model_stages
from calib.pipeline.stages.report import report_stage
from calib.pipeline.stages.semantic import semantic_stage
from calib.pipeline.stages.stats import stats_stage
from calib.pipeline.stages.validation import validation_stage
from calib.pipeline.stages.views import probe_stage, projection_stage
from calib.runfolder import RunFolder, RunLock, artefacts as A

log = logging.getLogger(__name__)


def check_fitted_judges(config: RunConfig) -> None:
    """A fitted judge is an input of the run: refuse a name the run folder has no file for, before
    anything is loaded or written."""
    from calib.errors import ConfigError
    from calib.judges.registry import is_fitted

    for name in config.judge.measured:
        if is_fitted(name) and not (config.run_dir() / A.fitted_judge(name)).is_file():
            from calib.judges import JUDGES

            raise ConfigError(f"unknown judge {name!r}: not built in ({', '.join(JUDGES)}) and {config.run_dir()} "
                              f"has no judge fitted under that name ({A.fitted_judge(name)}; `calib judge fit "
                              f"{config.run_dir()} --human SET --name {name}` makes one)")


def build_stages(config: RunConfig, n_train: int, human_files: list[str] = ()) -> list[Stage]:
    """The stage graph of a run, in execution order (each stage after everything it reads).
    ``n_train``: the size of the training part (default epochs); ``human_files``: the human-labelled
    sets the judges are validated against."""
    stages = model_stages(config, n_train)
    stages.append(stats_stage(config))
    if config.semantic is not None:
        stages += [semantic_stage(config, name) for name in config.judge.measured]
    if human_files:
        stages.append(validation_stage(config, list(human_files), {s.name for s in stages if s.name in MODEL_STAGES}))
    stages.append(budgets_stage(config))
    if config.attack is not None:
        stages += attack_stages(config)
        stages.append(probe_stage(config))
    stages.append(projection_stage(config))
    if config.report:
        stages.append(report_stage(config))
    return stages


def run(config: RunConfig, on_stage: Callable[[str, str, StageRecord | None], None] | None = None,
        fresh: bool = False) -> dict[str, Any] | None:
    """Run (or resume) the whole pipeline; returns the summary also written to ``summary.json``.

    Under torchrun (:mod:`calib.distributed`) rank 0 runs the pipeline and returns the summary; the
    other ranks serve its sharded tasks and return ``None``.

    The run folder is locked for the whole run (:class:`~calib.runfolder.RunLock`): a second writer
    fails at once with :class:`~calib.runfolder.RunFolderLocked`. ``fresh`` forgets every cached
    stage (once the lock is held) and recomputes everything.
    """
    from calib import distributed as D
    from calib.device import resolve_device, set_threads

    t0 = time.perf_counter()
    w = D.init_from_env(config.device)
    if w.parallel and config.threads is None and "CALIB_THREADS" not in os.environ:
        threads = set_threads(max(1, (os.cpu_count() or 1) // w.size))  # the cores shared out between ranks
    else:
        threads = set_threads(config.threads) if config.threads is not None else torch.get_num_threads()
    if not w.leader:  # a follower: the leader's tasks until it stops (it alone holds the lock and writes)
        logging.getLogger("calib").setLevel(logging.WARNING)  # the leader reports
        import calib.pipeline.sharded  # noqa: F401 - registers the tasks it serves

        try:
            D.serve()
        finally:
            D.shutdown()
        return None
    try:
        return _lead(config, on_stage, fresh, t0, threads)
    finally:
        D.stop_followers()
        D.shutdown()


def _lead(config: RunConfig, on_stage: Callable[[str, str, StageRecord | None], None] | None, fresh: bool,
          t0: float, threads: int) -> dict[str, Any]:
    from calib.device import resolve_device

    out = config.run_dir()
    check_fitted_judges(config)
    with RunLock(out, "calib run"):  # another writer: fail at once, before loading anything
        pass
    ds = load_dataset(config.dataset, config.data_dir, download=config.download)
    human_files, held = _human_sets(config, ds)
    spec = SplitSpec(seed=config.seed, fractions=config.fractions, max_calibration=config.max_calibration,
                     held_out=tuple(int(i) for i in held))
    splits = spec.build(ds)
    if config.classifier is not None:  # a user's classifier: import, load and check it before writing anything
        from calib.models.external import load_external

        load_external(config.classifier, config.classifier_weights, splits.test.images, ds.num_classes)
    # the folder is created only once the data loaded: a bad dataset leaves nothing behind
    with RunLock(out, "calib run", create=True):
        if fresh and (out / A.CACHE).exists():
            shutil.rmtree(out / A.CACHE)
        folder = RunFolder.new(out, ds, spec, source=config.dataset, data_dir=config.data_dir,
                               config=to_jsonable(asdict(config) | {"threads": threads}),
                               device=str(resolve_device(config.device)),
                               splits=splits)
        folder.save_record()
        ctx = StageContext(folder, StageCache(out, on_stage), progress=config.progress)
        for stage in build_stages(config, len(splits.train), human_files):
            stage.run(ctx)
        return _summary(ctx, config, t0)


def world_record() -> dict[str, Any]:
    """How many processes ran the run (``world_size``) and over which backend."""
    from calib.distributed import world

    return world().describe()


def _human_sets(config: RunConfig, ds: Any) -> tuple[list[str], np.ndarray]:
    """The files of the run's human-labelled sets, checked against the dataset, and their sources'
    indices (kept out of training)."""
    if not config.human.sets:
        return [], np.zeros(0, np.int64)
    from calib.human import load_human_sets

    sets = load_human_sets(list(config.human.sets))
    return [s.path for s in sets], np.unique(np.concatenate([s.check(ds) for s in sets]))


def _summary(ctx: StageContext, config: RunConfig, t0: float) -> dict[str, Any]:
    rec = ctx.records
    attacks = {}
    if config.attack is not None:
        for item in attack_plan(config.attack, seed=config.seed):
            name = item["name"]
            attacks[name] = {"budget": item["budget"], "norm": item["spec"].norm,
                             **rec[f"attack-{name}"].info, **rec[f"audit-{name}"].info}
    summary = {
        "run": asdict(config),
        "dataset": ctx.dataset.describe(),
        "splits": ctx.splits.describe(),
        "models": {k: r.info for k, r in rec.items() if k in MODEL_STAGES},
        "judge": config.judge.name,
        "semantic": {k.removeprefix("semantic-"): r.info for k, r in rec.items() if k.startswith("semantic-")},
        "stages": {r.name: {"reused": r.reused, "seconds": r.seconds, "key": r.key, "device": r.device}
                   for r in ctx.cache.records},
        "attacks": attacks,
        "validation": rec["validation"].info if "validation" in rec else None,
        "eps_table": str(ctx.file(A.EPS_TABLE)),
        "report": str(ctx.file(A.REPORT)) if "report" in rec else None,
        "versions": versions(),
        "threads": torch.get_num_threads(),
        **world_record(),
        "seconds": time.perf_counter() - t0,
        "compute_seconds": sum(r.seconds for r in ctx.cache.records),
    }
    summary = to_jsonable(summary)
    write_json(ctx.file(A.SUMMARY), summary)
    log.info("run written to %s", ctx.path)
    return summary
