"""The main job, ``calib run``: dataset -> split -> classifier f and embedding g -> summary.

Later stages (statistics, budgets, attacks, audit, report) attach here. Everything is written
under one run folder with provenance (versions, seed, data fingerprint, weights hashes).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from calib.data import DEFAULT_FRACTIONS, load_dataset, split_dataset
from calib.errors import ConfigError
from calib.io import write_json
from calib.models.artefact import versions
from calib.train import TrainConfig, train_classifier, train_embedding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Options of the main job; defaults are the README quick start on digits."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    out: str | None = None
    seed: int = 0
    device: str = "auto"
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    classifier_epochs: int = 20
    embedding_epochs: int = 20
    embedding_dim: int = 64
    margin: float = 0.2
    miner: str = "semihard"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        stem = Path(self.dataset).stem if self.dataset.endswith(".npz") else self.dataset
        return Path("reports") / f"{stem}-seed{self.seed}"


def run(config: RunConfig) -> dict[str, Any]:
    """Train both models on ``config.dataset`` and write ``models/`` and ``summary.json``.

    Returns the summary (also written to ``<run dir>/summary.json``).
    """
    if config.classifier_epochs < 1 or config.embedding_epochs < 1:
        raise ConfigError("epochs must be >= 1")
    t0 = time.perf_counter()
    ds = load_dataset(config.dataset, config.data_dir, download=config.download)
    splits = split_dataset(ds, seed=config.seed, fractions=config.fractions)
    out = config.run_dir()
    models = out / "models"
    common = {"seed": config.seed, "device": config.device, "progress": config.progress}
    clf = train_classifier(splits.train, TrainConfig(epochs=config.classifier_epochs, **common),
                           validation=splits.calibration, test=splits.test, split_seed=config.seed)
    clf_cfg = clf.save(models / "classifier")
    emb = train_embedding(splits.train, TrainConfig(epochs=config.embedding_epochs, **common),
                          test=splits.test, dim=config.embedding_dim, margin=config.margin,
                          miner=config.miner, split_seed=config.seed)
    emb_cfg = emb.save(models / "embedding")
    summary = {
        "run": asdict(config) | {"fractions": list(config.fractions)},
        "dataset": ds.describe(),
        "splits": splits.describe(),
        "models": {
            "classifier": {"path": str(models / "classifier.json"), "metrics": clf.metrics,
                           "weights_sha256": clf_cfg["weights_sha256"], "seconds": clf.training["seconds"]},
            "embedding": {"path": str(models / "embedding.json"), "metrics": emb.metrics,
                          "weights_sha256": emb_cfg["weights_sha256"], "seconds": emb.training["seconds"]},
        },
        "versions": versions(),
        "seconds": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    log.info("run written to %s", out)
    return summary
