"""``calib experiment NAME --run RUN``: an experiment as one more :class:`~calib.pipeline.stage.Stage` of the
run folder, cached like ``calib run``'s stages (same options, same artefacts, same code: reused)."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

from calib.errors import ConfigError, DataError
from calib.io import read_json
from calib.pipeline.cache import StageCache, StageRecord
from calib.pipeline.context import load_run
from calib.pipeline.stage import PipelineContext, Stage, model_files

#: the options each experiment takes (anything else given is refused)
ACCEPTS = {"transfer": ("epochs", "n"), "adversarial-training": ("epochs", "n", "alpha", "attack"),
           "robust-embedding": ("epochs", "alpha", "attack", "eps"), "linearity": ("eps",), "units": ()}
#: the module each experiment runs
CODE = {"transfer": "calib.experiments.transfer", "adversarial-training": "calib.experiments.adversarial_training",
        "robust-embedding": "calib.experiments.robust_embedding", "linearity": "calib.experiments.linearity",
        "units": "calib.experiments.units"}


def experiment_options(name: str, **given: Any) -> dict[str, Any]:
    """The keyword arguments of experiment ``name`` from ``given`` (``None`` = the experiment's default).

    Raises:
        ConfigError: an unknown experiment, an option it does not take, or an unknown attack.
    """
    if name not in ACCEPTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(ACCEPTS)}")
    given = {k: v for k, v in given.items() if v is not None}
    extra = sorted(set(given) - set(ACCEPTS[name]))
    if extra:
        raise ConfigError(f"experiment {name} does not take {', '.join('--' + k for k in extra)} "
                          f"(it takes {', '.join('--' + k for k in ACCEPTS[name]) or 'no options'})")
    if given.get("attack") not in (None, "fgsm", "pgd"):
        raise ConfigError(f"--attack must be fgsm or pgd; got {given['attack']!r}")
    return given


def _compute(ctx: PipelineContext, name: str, options: dict[str, Any], progress: bool) -> dict[str, Any]:
    from calib.experiments import EXPERIMENTS

    summary = EXPERIMENTS[name](ctx, progress=progress, **options)
    return {"seconds": summary["seconds"]}


def experiment_stage(name: str, options: dict[str, Any], progress: bool = False) -> Stage:
    """Experiment ``name`` as a stage reading the run's models and epsilon table."""
    return Stage(f"experiment-{name}", functools.partial(_compute, name=name, options=options, progress=progress),
                 (f"experiments/{name}.json", f"experiments/{name}.npz"), {"options": options},
                 reads=("eps_table.json", model_files("classifier")[0], model_files("embedding")[0]),
                 code=(CODE[name], "calib.experiments.context"))


def run_experiment(run_dir: str | os.PathLike[str], name: str, *, device: str = "cpu", progress: bool = False,
                   on_stage: Callable[[str, str, StageRecord | None], None] | None = None,
                   **given: Any) -> tuple[dict[str, Any], StageRecord]:
    """Run (or reuse) experiment ``name`` on a finished run folder; returns its saved summary and the
    stage record (``reused`` when nothing it reads changed)."""
    options = experiment_options(name, **given)
    run = load_run(run_dir, device)
    ctx = PipelineContext(run.run_dir, run.summary, run.dataset, run.splits, run.table, run.device,
                          cache=StageCache(Path(run_dir), on_stage))
    rec = experiment_stage(name, options, progress).run(ctx)
    return read_json(Path(run_dir) / "experiments" / f"{name}.json", DataError, "experiment result"), rec
