"""One :class:`Stage` type for every step of ``calib run`` (and every experiment), and the
:class:`StageContext` they run in.

A stage is ``compute(ctx, options)``: ``options`` is a small frozen dataclass holding exactly what
the computation reads besides the run folder's artefacts, so its cache key cannot drift from its
code. The key is derived, never written by hand, from:

* ``options``: every field of the options dataclass;
* the run's data: the dataset fingerprint and the recorded split (every stage depends on them);
* ``reads``: artefacts of earlier stages (paths from :mod:`calib.runfolder.artefacts`): their sha256;
* ``derived``: values computed from earlier artefacts when the stage is reached, for inputs that are
  a *part* of an artefact (the one column of the epsilon table an attack uses, the labelling sessions
  present): a function of the context, named so the manifest shows what it read;
* ``code``: the calib modules (hashed with every calib module they import) and functions it runs,
  besides its own ``compute``.

``compute`` writes ``outputs`` (atomically) and returns a small JSON ``info``. Where it runs
(device) and whether it shows progress come from the context and are not part of the key; the CPU
thread count of a stage that runs tensors is (results differ in the last bits between counts).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from calib.distributed import world

from calib.errors import DataError
from calib.io import sha256_file
from calib.pipeline.cache import StageCache, StageRecord
from calib.runfolder import RunFolder


class StageContext(RunFolder):
    """A run folder being written: the folder (dataset, split, models, judges, table), the stage cache,
    the records of the stages run so far, whether to show progress, and the audit's reference set
    (built once). Stage computations read their options, never the run's config."""

    def __init__(self, folder: RunFolder, cache: StageCache, progress: bool = False) -> None:
        super().__init__(folder.path, device=folder.device, data_dir=folder._data_dir)
        self._record, self._dataset, self._splits = folder._record, folder._dataset, folder._splits
        self.cache = cache
        self.progress = progress
        self.records: dict[str, StageRecord] = {}
        self._reference: Any = None

    @classmethod
    def open(cls, path: Any, *, device: str = "cpu", progress: bool = False) -> "StageContext":
        """A finished run folder, opened to run more stages on it (an experiment, an import)."""
        return cls(RunFolder.open(path, device=device), StageCache(path), progress)

    def data_key(self) -> dict[str, Any]:
        """What every stage's key includes: the data and the split, as recorded."""
        return {"dataset": self.record["dataset"]["fingerprint"], "split": self.record["split"]}

    def reference(self) -> Any:
        """The audit's reference set: the training part with f's and g's features (built once)."""
        if self._reference is None:
            from calib.audit import build_reference

            tr = self.splits.train
            self._reference = build_reference(self.model("classifier"), {"g": self.model("embedding")},
                                              tr.images, tr.labels, self.device)
        return self._reference

    def forget_models(self) -> None:
        super().forget_models()
        self._reference = None


@dataclass(frozen=True)
class Stage:
    """One cached step: see the module docstring for what each declaration means."""

    name: str
    compute: Callable[[StageContext, Any], dict[str, Any]]
    options: Any
    outputs: tuple[str, ...]
    reads: tuple[str, ...] = ()
    derived: Callable[[StageContext], dict[str, Any]] | None = None
    code: tuple[str | Callable[..., Any], ...] = ()
    tensors: bool = True  # whether it runs models (it then runs on the context's device)
    world_dependent: bool = False  # its result depends on the torchrun world size (training with DDP)

    def __post_init__(self) -> None:
        if self.options is not None and not dataclasses.is_dataclass(self.options):
            raise TypeError(f"stage {self.name}: options must be a dataclass (what compute reads), not "
                            f"{type(self.options).__name__}")
        object.__setattr__(self, "reads", tuple(dict.fromkeys(self.reads)))  # each artefact once

    def inputs(self, ctx: StageContext) -> dict[str, Any]:
        """Everything the key is made of (except the code), evaluated now that upstream stages ran.

        Raises:
            DataError: an artefact it reads is missing (a single stage run on a folder without it).
        """
        missing = [rel for rel in self.reads if not ctx.exists(rel)]
        if missing:
            raise DataError(f"stage {self.name} reads {', '.join(missing)}, which {ctx.path} does not have; run "
                            "`calib run` (with the options that make it) first")
        options = None if self.options is None else (
            self.options.key() if hasattr(self.options, "key") else dataclasses.asdict(self.options))
        return {"options": options,
                "data": ctx.data_key(),
                **({"threads": torch.get_num_threads()} if self.tensors else {}),
                **({"world_size": world().size} if self.world_dependent and world().parallel else {}),
                "reads": {rel: sha256_file(ctx.file(rel)) for rel in self.reads},
                "derived": self.derived(ctx) if self.derived else None}

    def run(self, ctx: StageContext) -> StageRecord:
        rec = ctx.cache.run(self.name, self.inputs(ctx), list(self.outputs), lambda: self.compute(ctx, self.options),
                            code=(self.compute, *self.code), device=ctx.device if self.tensors else None)
        ctx.records[self.name] = rec
        return rec
