"""A run folder as one object: its paths and artefact names, the split it recorded, its models and
judges, its epsilon table and stage manifests, and the lock a writer holds.

Every stage of ``calib run``, every command, report section and experiment opens a run through
:class:`RunFolder`; nothing else rebuilds the split, spells an artefact's file name
(:mod:`calib.runfolder.artefacts`) or writes without the lock (:meth:`RunFolder.writing`).

``RUN/run.json`` (the *record*) says what the run was made from, written before anything else:

* ``dataset``: the source name as given (``digits``, ``mnist``, a ``.npz`` path), the data folder
  (absolute) and the dataset's fingerprint;
* ``split``: the :class:`~calib.data.split.SplitSpec` (seed, fractions, calibration cap, held-out
  indices) and the fingerprint of each part, so a reopened run gets exactly its own parts or a
  one-line error;
* ``config``: the run's options (``calib.pipeline.RunConfig`` as a mapping; the judge section is
  read here).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calib.data import PARTS, Dataset, Splits, SplitSpec, load_dataset
from calib.errors import ArtefactError, ConfigError, DataError
from calib.io import read_json, sha256_file, write_json
from calib.runfolder import artefacts as A
from calib.runfolder.checks import check_model_data
from calib.runfolder.lock import RunLock

if TYPE_CHECKING:
    from torch import nn

    from calib.budgets import EpsTable
    from calib.judges import Judge, JudgeConfig
    from calib.stats import Stats

FORMAT = "calib-run"
FORMAT_VERSION = 1


def _absolute(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


class RunFolder:
    """One run folder (see the module docstring).

    Args:
        path: the folder.
        device: where models and judges are loaded.
        data_dir: where the data lives now, if not where the record says (a moved data folder).
    """

    def __init__(self, path: str | os.PathLike[str], *, device: str = "cpu",
                 data_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.device = str(device)
        self._data_dir = None if data_dir is None else str(data_dir)
        self._record: dict[str, Any] | None = None
        self._dataset: Dataset | None = None
        self._splits: Splits | None = None
        self._models: dict[str, Any] = {}
        self._judges: dict[Any, Any] = {}
        self._table: Any = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- opening and creating ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, device: str = "cpu",
             data_dir: str | os.PathLike[str] | None = None) -> "RunFolder":
        """A run folder that has its record (``run.json``).

        Raises:
            DataError: no such folder, or no (or a malformed) record.
        """
        folder = cls(path, device=device, data_dir=data_dir)
        folder.record  # noqa: B018 - read and validate it now, so a bad folder fails here
        return folder

    @classmethod
    def new(cls, path: str | os.PathLike[str], dataset: Dataset, spec: SplitSpec, *, source: str,
            data_dir: str | os.PathLike[str] | None = None, config: dict[str, Any] | None = None,
            device: str = "cpu", splits: Splits | None = None) -> "RunFolder":
        """A run made from ``dataset`` (loaded from ``source``/``data_dir``) split by ``spec``, its record
        in memory until :meth:`save_record` (so a command that fails leaves nothing behind).
        ``splits``: the split already built from ``spec`` (else it is built here)."""
        splits = splits or spec.build(dataset)
        record = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "dataset": {"name": dataset.name, "source": source, "class_names": list(dataset.class_names),
                              "data_dir": _absolute(data_dir), "fingerprint": dataset.fingerprint},
                  "split": {**spec.to_json(), "parts": {p: getattr(splits, p).fingerprint for p in PARTS}},
                  "config": config or {"dataset": source, "seed": spec.seed}, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        folder = cls(path, device=device)
        folder._record, folder._dataset, folder._splits = record, dataset, splits
        return folder

    def save_record(self) -> Path:
        """Write ``run.json`` (atomically; the caller holds the lock)."""
        write_json(self.file(A.RECORD), self.record)
        return self.file(A.RECORD)

    # ---- paths -----------------------------------------------------------------------------------------
    def file(self, rel: str) -> Path:
        """The path of artefact ``rel`` (a name from :mod:`calib.runfolder.artefacts`)."""
        return self.path / rel

    def exists(self, rel: str) -> bool:
        return self.file(rel).exists()

    def names(self, kind: str) -> list[str]:
        """Names present under ``attacks``, ``audit``, ``semantic``, ``experiments`` or ``human``."""
        suffix = ".npz" if kind in (A.ATTACKS, A.HUMAN, A.SEMANTIC) else ".json"  # (semantic/: not the curves)
        return sorted(p.stem for p in self.file(kind).glob(f"*{suffix}"))

    def writing(self, command: str, create: bool = False) -> RunLock:
        """The folder's lock, for a command that writes it (:class:`~calib.runfolder.lock.RunLock`)."""
        return RunLock(self.path, command, create=create)

    # ---- the record: dataset and split ------------------------------------------------------------------
    @property
    def record(self) -> dict[str, Any]:
        if self._record is None:
            path = self.file(A.RECORD)
            if not self.path.is_dir():
                raise DataError(f"run folder not found: {self.path}")
            if not path.exists():
                raise DataError(f"{self.path} is not a calib run folder (no {A.RECORD}); run `calib run --out "
                                f"{self.path}` first (folders written before calib recorded {A.RECORD}: run "
                                "`calib run` on them again)")
            doc = read_json(path, DataError, "run record")
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or \
                    not isinstance(doc.get("dataset"), dict) or not isinstance(doc.get("split"), dict):
                raise DataError(f"{path}: not a calib run record (format {FORMAT} version {FORMAT_VERSION})")
            if doc.get("format_version") != FORMAT_VERSION:
                raise DataError(f"{path}: run record version {doc.get('format_version')!r}; this calib reads "
                                f"version {FORMAT_VERSION}")
            self._record = doc
        return self._record

    @property
    def config(self) -> dict[str, Any]:
        """The run's options as recorded (a mapping of ``calib.pipeline.RunConfig``'s fields)."""
        cfg = self.record.get("config") or {}
        return cfg if isinstance(cfg, dict) else {}

    @property
    def split_spec(self) -> SplitSpec:
        return SplitSpec.from_json(self.record["split"], str(self.file(A.RECORD)))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", self.split_spec.seed))

    @property
    def dataset(self) -> Dataset:
        """The run's dataset, reloaded from where the record says (or ``data_dir``) and checked by
        its fingerprint."""
        if self._dataset is None:
            d = self.record["dataset"]
            ds = load_dataset(d.get("source") or d.get("name"), self._data_dir or d.get("data_dir"))
            if ds.fingerprint != d.get("fingerprint"):
                raise DataError(f"{self.path}: the dataset on disk ({ds.fingerprint[:12]}…) is not the one the run "
                                f"used ({str(d.get('fingerprint'))[:12]}…)")
            self._dataset = ds
        return self._dataset

    @property
    def splits(self) -> Splits:
        """The run's train / calibration / test parts, rebuilt from the recorded spec and checked
        part by part."""
        if self._splits is None:
            splits = self.split_spec.build(self.dataset)
            recorded = self.record["split"].get("parts") or {}
            for p in PARTS:
                if recorded.get(p) != getattr(splits, p).fingerprint:
                    raise DataError(f"{self.path}: the {p} part rebuilt from {A.RECORD} differs from the one the run "
                                    "recorded (the data or calib's split changed); run `calib run` again")
            self._splits = splits
        return self._splits

    def split(self, part: str) -> Dataset:
        """One part of the split: ``train``, ``calibration`` or ``test``."""
        if part not in PARTS:
            raise ConfigError(f"unknown split {part!r}; choose {', '.join(PARTS)}")
        return getattr(self.splits, part)

    @property
    def class_names(self) -> list[str]:
        """The class names, index = label (from the record: no data is loaded)."""
        names = self.record["dataset"].get("class_names")
        return list(names) if isinstance(names, list) else list(self.dataset.class_names)

    def fingerprint_ok(self, fingerprint: str) -> bool:
        return fingerprint == self.record["dataset"].get("fingerprint")

    # ---- models and judges --------------------------------------------------------------------------
    def has_model(self, stem: str) -> bool:
        return self.exists(A.model(stem)[1])

    def model_config(self, stem: str) -> dict[str, Any]:
        """The JSON config of model ``stem`` (read only; raises ArtefactError when missing)."""
        from calib.models import read_config

        return read_config(self.file(A.model(stem)[1]))

    def model(self, stem: str, *, allow_mismatch: bool = False) -> "nn.Module":
        """Model ``stem`` from ``models/`` (hash-checked, on this folder's device, cached), refused when
        it was trained on other data or another split."""
        if stem not in self._models:
            from calib.models import load_model

            if not self.has_model(stem):
                raise ConfigError(f"{self.path} has no model models/{stem}; run `calib run` (with a judge that "
                                  "needs it) first")
            model, cfg = load_model(self.file(A.model(stem)[1]), self.device)
            check_model_data(cfg, self.dataset, self.splits, stem, allow_mismatch=allow_mismatch,
                             subset=stem == "embedding2")
            self._models[stem] = model
        return self._models[stem]

    def judge_config(self) -> "JudgeConfig":
        """The run's judge options (``[judge]`` of its config)."""
        from calib.judges import JudgeConfig

        section = self.config.get("judge") or {}
        try:
            return JudgeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})
        except TypeError as exc:
            raise DataError(f"{self.file(A.RECORD)}: malformed judge section ({exc})") from exc

    def judge(self, name: str | None = None, config: "JudgeConfig | None" = None) -> "Judge":
        """Judge ``name`` (default: the run's) built from this run's models, with the training part as
        its reference set and an ensemble's scales set on the calibration part (cached)."""
        from calib.runfolder.judges import run_judge

        config = config or self.judge_config()
        key = (name or config.name, config)
        if key not in self._judges:
            self._judges[key] = run_judge(self, key[0], config)
        return self._judges[key]

    def available_judges(self) -> list[str]:
        """The judges whose models this run has (the classifier first; the ensemble when all its
        members are there; then the judges fitted to people's labels)."""
        from calib.judges import MODEL_OF

        have = [name for name, stem in MODEL_OF.items() if self.has_model(stem)]
        if all(m in have for m in self.judge_config().members):
            have.append("ensemble")
        return have + self.fitted_judges()

    def fitted_judges(self) -> list[str]:
        """Names of the judges fitted to people's labels in this run (``models/judges/*.json``), sorted."""
        d = self.file(A.fitted_judge("x")).parent
        return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []

    def fitted_doc(self, name: str) -> dict[str, Any]:
        """The document of fitted judge ``name``, with its file's sha256 as ``file_sha256``.

        Raises:
            ConfigError: the run has no fitted judge of that name.
        """
        path = self.file(A.fitted_judge(name))
        if not path.is_file():
            have = self.fitted_judges()
            from calib.judges import JUDGES

            raise ConfigError(f"unknown judge {name!r}: not built in ({', '.join(JUDGES)}) and {self.path} has no "
                              f"judge fitted under that name ({A.fitted_judge(name)}; `calib judge fit "
                              f"{self.path} --human SET --name {name}` makes one)"
                              + (f"; fitted here: {', '.join(have)}" if have else ""))
        doc = read_json(path, ArtefactError, "fitted judge")
        if not isinstance(doc, dict):
            raise ArtefactError(f"{path}: malformed fitted judge")
        return {**doc, "file_sha256": sha256_file(path)}

    def forget_models(self) -> None:
        """Drop loaded models and judges (a stage just rewrote weights)."""
        self._models.clear()
        self._judges.clear()

    # ---- statistics, table, manifests ------------------------------------------------------------------
    def stats(self) -> "Stats":
        from calib.stats import Stats

        return Stats.load(self.file(A.STATS))

    def table(self) -> "EpsTable":
        """The run's epsilon table (cached; :meth:`save_table` replaces it)."""
        if self._table is None:
            from calib.budgets import load_table

            if not self.exists(A.EPS_TABLE):
                raise DataError(f"{self.path} has no epsilon table yet ({A.EPS_TABLE}); run `calib run` first")
            self._table = load_table(self.file(A.EPS_TABLE))
        return self._table

    def save_table(self, table: "EpsTable") -> Path:
        """Write the run's epsilon table (JSON and CSV, atomically)."""
        path = table.save(self.file(A.EPS_TABLE))
        self._table = table
        return path

    def forget_table(self) -> None:
        self._table = None

    def summary(self) -> dict[str, Any] | None:
        """``summary.json`` of a finished ``calib run``, or ``None``."""
        return read_json(self.file(A.SUMMARY), DataError, "run summary") if self.exists(A.SUMMARY) else None

    def manifests(self) -> dict[str, dict[str, Any]]:
        """Every finished stage's manifest (``cache/<stage>.json``), by stage name; unreadable ones skipped."""
        out = {}
        for p in sorted(self.file(A.CACHE).glob("*.json")):
            try:
                doc = read_json(p, ValueError, "stage manifest")
            except ValueError:
                continue
            if isinstance(doc, dict):
                out[p.stem] = doc
        return out

    def provenance(self) -> dict[str, Any]:
        """Where a result derived from this run came from: the run, its data, seed, table, versions."""
        from calib.io import versions

        return {"run": str(self.path), "dataset": self.record["dataset"].get("name"),
                "fingerprint": self.record["dataset"].get("fingerprint"), "seed": self.seed,
                "eps_table_sha256": sha256_file(self.file(A.EPS_TABLE)) if self.exists(A.EPS_TABLE) else None,
                "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def open_run(path: str | os.PathLike[str], *, device: str = "cpu",
             data_dir: str | os.PathLike[str] | None = None) -> RunFolder:
    """Open a run folder written by ``calib run``: ``run = open_run("reports/mnist-seed0")``, then
    ``run.model("classifier")``, ``run.split("test")``, ``run.table()``."""
    return RunFolder.open(path, device=device, data_dir=data_dir)


__all__ = ["RunFolder", "open_run", "FORMAT"]
