"""One :class:`Stage` type for every step of ``calib run``, and the :class:`PipelineContext` they share.

A stage declares what it reads and writes; its cache key is derived from those declarations and from
the code it runs, never written by hand:

* ``options``: the option values it depends on (JSON-able, known when the graph is built);
* ``reads``: artefacts of earlier stages (paths in the run folder): their sha256 enters the key;
* ``derived``: values computed from earlier artefacts when the stage is reached, for inputs that are
  a *part* of an artefact (the one column of the epsilon table an attack uses, the labelling sessions
  present): a function of the context, named so the manifest shows what it read;
* ``code``: the calib modules (hashed with every calib module they import) and functions it runs,
  besides its own ``compute``.

``compute(ctx)`` writes ``outputs`` (atomically) and returns a small JSON ``info``. Stages run in the
order of the graph (:func:`calib.pipeline.run.build_stages`); a changed input recomputes the stage,
and what reads its outputs sees new hashes and recomputes in turn.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from calib.io import sha256_file
from calib.pipeline.cache import StageCache, StageRecord
from calib.pipeline.config import RunConfig
from calib.pipeline.context import RunContext


@dataclass(frozen=True)
class Stage:
    """One cached step: see the module docstring for what each declaration means."""

    name: str
    compute: Callable[["PipelineContext"], dict[str, Any]]
    outputs: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    reads: tuple[str, ...] = ()
    derived: Callable[["PipelineContext"], dict[str, Any]] | None = None
    code: tuple[str | Callable[..., Any], ...] = ()
    tensors: bool = True  # whether it runs models (it then runs on the context's device)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reads", tuple(dict.fromkeys(self.reads)))  # each artefact once

    def inputs(self, ctx: "PipelineContext") -> dict[str, Any]:
        """Everything the key is made of (except the code), evaluated now that upstream stages ran."""
        return {"options": self.options,
                "reads": {rel: sha256_file(ctx.run_dir / rel) for rel in self.reads},
                "derived": self.derived(ctx) if self.derived else None}

    def run(self, ctx: "PipelineContext") -> StageRecord:
        rec = ctx.cache.run(self.name, self.inputs(ctx), list(self.outputs), lambda: self.compute(ctx),
                            code=(self.compute, *self.code), device=ctx.device if self.tensors else None)
        ctx.records[self.name] = rec
        return rec


@dataclass
class PipelineContext(RunContext):
    """A run folder being written: the run's config, dataset, split and device, models, judges and the
    epsilon table loaded on first use (as for a finished run), the stage cache and the records of the
    stages run so far, and the audit's reference set built once."""

    config: RunConfig | None = None
    cache: StageCache | None = None
    records: dict[str, StageRecord] = field(default_factory=dict)

    def eps_table(self) -> Any:
        """The run's epsilon table (reloaded after the budgets stage rewrote it)."""
        if self.table is None:
            from calib.budgets import load_table

            self.table = load_table(self.run_dir / "eps_table.json")
        return self.table

    def forget_models(self) -> None:
        """Drop loaded models and judges (a model stage just rewrote its weights)."""
        self._models.clear()
        self._judges.clear()
        self._reference = None


def model_files(stem: str) -> tuple[str, str]:
    """The artefact of model ``stem`` in a run folder."""
    return f"models/{stem}.safetensors", f"models/{stem}.json"
