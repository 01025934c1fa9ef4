"""What every experiment reads from a finished ``calib run`` folder, and how results are stored.

An experiment's results live in ``<run>/experiments/<name>.json`` (summary, provenance) and
``<name>.npz`` (arrays; loaded without pickle); the report shows a section for each one present.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from calib.errors import DataError
from calib.io import atomic_path, read_json, to_jsonable, write_json


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

    @property
    def seed(self) -> int:
        return int(self.summary["run"]["seed"])

    @property
    def run_config(self) -> dict[str, Any]:
        return self.summary["run"]

    def model(self, name: str) -> nn.Module:
        """``classifier``, ``embedding`` or ``embedding2`` from ``models/`` (hash-checked)."""
        if name not in self._models:
            from calib.models import load_model

            self._models[name] = load_model(self.run_dir / "models" / name, self.device)[0]
        return self._models[name]

    def provenance(self) -> dict[str, Any]:
        from calib.models.artefact import versions

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
    splits = split_dataset(ds, seed=int(cfg["seed"]), fractions=tuple(cfg["fractions"]))
    return RunContext(run_dir, summary, ds, splits, load_table(run_dir / "eps_table.json"), device)


def save_experiment(run_dir: str | os.PathLike[str], name: str, summary: dict[str, Any],
                    arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``experiments/<name>.npz`` then ``<name>.json`` atomically; returns the JSON path."""
    folder = Path(run_dir) / "experiments"
    with atomic_path(folder / f"{name}.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **(arrays or {}))
    write_json(folder / f"{name}.json", to_jsonable({"experiment": name, **summary}))
    return folder / f"{name}.json"


def load_experiments(run_dir: str | os.PathLike[str]) -> dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Every saved experiment of a run: name -> (summary, arrays)."""
    out = {}
    for p in sorted((Path(run_dir) / "experiments").glob("*.json")):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            with np.load(p.with_suffix(".npz"), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: unreadable experiment result ({exc})") from exc
        out[p.stem] = (doc, arrays)
    return out


def per_class(values: np.ndarray, labels: np.ndarray, class_names: list[str] | tuple[str, ...],
              mask: np.ndarray | None = None) -> dict[str, float | None]:
    """Mean of ``values`` per class (optionally within ``mask``); ``None`` where a class is empty."""
    m = np.ones(len(labels), bool) if mask is None else mask
    out = {}
    for c, name in enumerate(class_names):
        sel = m & (labels == c)
        out[name] = float(values[sel].mean()) if sel.any() else None
    return out
