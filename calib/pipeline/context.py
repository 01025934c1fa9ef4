"""A finished run folder, reopened: its dataset (reloaded and fingerprint-checked), split, epsilon
table and models (loaded on first use). Used by ``calib audit --adversarial`` and the experiments."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from calib.errors import DataError
from calib.io import read_json


@dataclass
class RunContext:
    """A run folder's dataset, split, epsilon table and models (loaded on first use)."""

    run_dir: Path
    summary: dict[str, Any]
    dataset: Any
    splits: Any
    table: Any
    device: str = "cpu"
    _models: dict[str, nn.Module] = field(default_factory=dict)
    _judges: dict[str, Any] = field(default_factory=dict)
    _reference: Any = None

    @property
    def seed(self) -> int:
        return int(self.summary["run"]["seed"])

    @property
    def run_config(self) -> dict[str, Any]:
        return self.summary["run"]

    def model(self, name: str) -> nn.Module:
        """A model stem from ``models/`` (``classifier``, ``embedding``, ...; hash-checked)."""
        if name not in self._models:
            from calib.models import load_model

            self._models[name] = load_model(self.run_dir / "models" / name, self.device)[0]
        return self._models[name]

    def judge(self, name: str | None = None):
        """The run's judge (or the judge ``name``) built from this run's models (cached)."""
        from calib.judges import JudgeConfig
        from calib.pipeline.config import run_config_from_mapping
        from calib.pipeline.stages import run_judge

        cfg = run_config_from_mapping({"judge": self.run_config.get("judge") or {}}, "run summary").judge
        name = name or cfg.name
        key = f"judge:{name}"
        if key not in self._judges:
            self._judges[key] = run_judge(name, self.run_dir, self.dataset, self.splits,
                                          JudgeConfig(**{**cfg.__dict__, "name": name}), self.device)
        return self._judges[key]

    def reference(self) -> Any:
        """The audit's reference set: the training part with f's and g's features (built once)."""
        if self._reference is None:
            from calib.audit import build_reference

            tr = self.splits.train
            self._reference = build_reference(self.model("classifier"), {"g": self.model("embedding")},
                                              tr.images, tr.labels, self.device)
        return self._reference

    def provenance(self) -> dict[str, Any]:
        from calib.io import versions

        return {"run": str(self.run_dir), "dataset": self.dataset.name, "fingerprint": self.dataset.fingerprint,
                "seed": self.seed, "eps_table_sha256": _sha(self.run_dir / "eps_table.json"),
                "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _sha(path: Path) -> str:
    from calib.io import sha256_file

    return sha256_file(path)


def load_run(run_dir: str | os.PathLike[str], device: str = "cpu") -> RunContext:
    """Open a run folder written by ``calib run`` (its dataset is reloaded and fingerprint-checked)."""
    from calib.budgets import load_table
    from calib.data import load_dataset, split_dataset

    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists():
        raise DataError(f"{run_dir} is not a finished run folder (no summary.json); run `calib run` first")
    summary = read_json(run_dir / "summary.json", DataError, "run summary")
    cfg = summary.get("run") or {}
    ds = load_dataset(cfg.get("dataset", "digits"), cfg.get("data_dir"))
    if ds.fingerprint != summary["dataset"]["fingerprint"]:
        raise DataError(f"{run_dir}: the dataset on disk ({ds.fingerprint[:12]}…) is not the one the run used "
                        f"({summary['dataset']['fingerprint'][:12]}…)")
    held = (summary.get("splits") or {}).get("held_out") or None
    from calib.data.split import DEFAULT_MAX_CALIBRATION

    splits = split_dataset(ds, seed=int(cfg["seed"]), fractions=tuple(cfg["fractions"]), hold_out=held,
                           max_calibration=cfg.get("max_calibration", DEFAULT_MAX_CALIBRATION))
    return RunContext(run_dir, summary, ds, splits, load_table(run_dir / "eps_table.json"), device)


