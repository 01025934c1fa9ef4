"""``calib experiment NAME --run RUN``: an experiment as one more :class:`~calib.pipeline.stage.Stage` of the
run folder, cached like ``calib run``'s stages (same options, same artefacts, same code: reused)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from calib.errors import ConfigError, DataError
from calib.io import read_json
from calib.pipeline.cache import StageCache, StageRecord
from calib.pipeline.stage import Stage, StageContext
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

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


@dataclass(frozen=True)
class ExperimentOptions:
    """Experiment ``name`` with the options given (``kwargs``; the rest are its defaults) and the run's
    recorded options (``run``), some of which experiments read (epochs, the semantic settings, q, s)."""

    name: str
    kwargs: dict[str, Any]
    run: dict[str, Any]


def compute(ctx: StageContext, o: ExperimentOptions) -> dict[str, Any]:
    from calib.experiments import EXPERIMENTS

    fn = EXPERIMENTS[o.name]
    extra = {"run": o.run} if "run" in inspect.signature(fn).parameters else {}
    summary = fn(ctx, progress=ctx.progress, **extra, **o.kwargs)
    return {"seconds": summary["seconds"]}


def experiment_stage(name: str, options: dict[str, Any], run: dict[str, Any]) -> Stage:
    """Experiment ``name`` as a stage reading the run's models and epsilon table."""
    return Stage(f"experiment-{name}", compute, ExperimentOptions(name, options, run), A.experiment(name),
                 reads=(A.EPS_TABLE, A.model("classifier")[0], A.model("embedding")[0]),
                 code=(CODE[name], "calib.experiments.context"))


def run_experiment(folder: RunFolder, name: str, *, progress: bool = False,
                   on_stage: Callable[[str, str, StageRecord | None], None] | None = None,
                   **given: Any) -> tuple[dict[str, Any], StageRecord]:
    """Run (or reuse) experiment ``name`` on a finished run folder (the caller holds its lock); returns
    its saved summary and the stage record (``reused`` when nothing it reads changed)."""
    options = experiment_options(name, **given)
    if folder.summary() is None:
        raise DataError(f"{folder.path} is not a finished run (no {A.SUMMARY}); run `calib run` first")
    ctx = StageContext(folder, StageCache(folder.path, on_stage), progress=progress)
    rec = experiment_stage(name, options, folder.config).run(ctx)
    return read_json(folder.file(A.experiment(name)[0]), DataError, "experiment result"), rec
