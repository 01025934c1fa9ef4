"""The main job, ``calib run``: dataset -> split -> classifier f and embedding g -> statistics ->
geometric budgets -> epsilon table.

Each stage is also a library function used by its own CLI command. Everything is written under
one run folder with provenance (versions, seed, data fingerprint, weights hashes).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from calib.budgets import EpsTable, Policy, geometric_table
from calib.data import DEFAULT_FRACTIONS, Dataset, Splits, load_dataset, split_dataset
from calib.errors import ArtefactError, ConfigError
from calib.io import write_json
from calib.models import load_model
from calib.models.artefact import versions
from calib.stats import Stats, StatsConfig, compute_stats
from calib.train import TrainConfig, embed, train_classifier, train_embedding

log = logging.getLogger(__name__)


def default_run_dir(dataset: str, seed: int) -> Path:
    stem = Path(dataset).stem if dataset.endswith(".npz") else dataset
    return Path("reports") / f"{stem}-seed{seed}"


def check_model_data(config: dict[str, Any], dataset: Dataset, splits: Splits, what: str,
                     allow_mismatch: bool = False) -> None:
    """Refuse a model trained on other data or another split (its calibration points could have
    been training points), unless ``allow_mismatch``."""
    data = config.get("data", {})
    if allow_mismatch:
        return
    if data.get("data_fingerprint") != dataset.fingerprint:
        raise ArtefactError(f"the {what} was trained on data {str(data.get('data_fingerprint'))[:12]}…, not on "
                            f"{dataset.name} ({dataset.fingerprint[:12]}…); pass --allow-mismatch to use it anyway")
    if data.get("train_fingerprint") != splits.train.fingerprint:
        raise ArtefactError(f"the {what} was trained on another split (split seed {data.get('split_seed')}, "
                            f"this one {splits.seed}); use the same --seed or pass --allow-mismatch")


def stats_stage(dataset: Dataset, splits: Splits, config: StatsConfig, embedding_path: Path | None = None,
                classifier_path: Path | None = None, allow_mismatch: bool = False,
                show_progress: bool = True, device: str = "cpu") -> Stats:
    """Statistics of ``dataset``; the embedding (if ``config.embedding``) is loaded from its artefact."""
    embeddings, prov = None, {}
    if config.embedding:
        if embedding_path is None:
            raise ConfigError("embedding statistics need an embedding model (--embedding PATH or --no-embedding)")
        model, cfg = load_model(embedding_path, device)
        check_model_data(cfg, dataset, splits, "embedding", allow_mismatch)
        embeddings = embed(model, dataset.images, device)
        prov["embedding_sha256"] = cfg["weights_sha256"]
    if classifier_path is not None and Path(classifier_path).with_suffix(".json").exists():
        from calib.models import read_config

        prov["classifier_sha256"] = read_config(classifier_path)["weights_sha256"]
    return compute_stats(dataset, splits, config, embeddings=embeddings, provenance=prov,
                         show_progress=show_progress)


@dataclass(frozen=True)
class SemanticConfig:
    """Semantic-budget search: norms, bisection steps, embedding-shift PGD steps and restarts."""

    norms: tuple[str, ...] = ("linf", "l2")
    iters: int = 7
    steps: int = 10
    restarts: int = 1


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
    q: float = 0.05
    s: float = 1.0
    pair: str = "calibration-train"
    matrix_modes: tuple[str, ...] = ("sampled", "exact")
    semantic: SemanticConfig | None = field(default_factory=lambda: SemanticConfig())
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else default_run_dir(self.dataset, self.seed)


def run(config: RunConfig) -> dict[str, Any]:
    """Train both models, compute statistics and budgets; write the run folder.

    Writes ``models/``, ``stats.json``/``stats.npz``, ``eps_table.json``/``.csv`` and
    ``summary.json`` under :meth:`RunConfig.run_dir`; returns the summary.
    """
    if config.classifier_epochs < 1 or config.embedding_epochs < 1:
        raise ConfigError("epochs must be >= 1")
    policy = Policy(q=config.q, s=config.s)
    stats_config = StatsConfig(pairs=tuple(dict.fromkeys(("train-train", config.pair, "test-train"))),
                               matrix_modes=config.matrix_modes, seed=config.seed)
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
    t_stats = time.perf_counter()
    stats = stats_stage(ds, splits, stats_config, models / "embedding", models / "classifier",
                        show_progress=config.progress)
    stats.save(out)
    table = geometric_table(stats, policy, pair=config.pair, provenance={"seed": config.seed})
    if config.semantic is not None:
        table = semantic_stage(table, stats, ds, models / "embedding", config.semantic, seed=config.seed,
                               show_progress=config.progress)
    table.save(out / "eps_table.json")
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
        "stats": {"path": str(out / "stats.json"), "seconds": stats.meta["seconds"]},
        "eps_table": {"path": str(out / "eps_table.json"), "seconds": time.perf_counter() - t_stats},
        "versions": versions(),
        "seconds": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    log.info("run written to %s", out)
    return summary


def semantic_stage(table: EpsTable, stats: Stats, dataset: Dataset, embedding_path: Path, config: SemanticConfig,
                   seed: int = 0, show_progress: bool = True) -> EpsTable:
    """Final budgets min(geometric, semantic) using the embedding artefact at ``embedding_path``."""
    from calib.budgets import final_table

    if stats.meta["dataset"]["fingerprint"] != dataset.fingerprint:
        raise ConfigError("the statistics were computed on other data than the dataset given")
    model, cfg = load_model(embedding_path)
    if stats.meta.get("embedding_sha256") not in (None, cfg["weights_sha256"]):
        raise ArtefactError(f"{embedding_path} is not the embedding the statistics were computed with")
    return final_table(table, stats, model, dataset.images, config.norms, iters=config.iters, steps=config.steps,
                       restarts=config.restarts, seed=seed, embedding_sha256=cfg["weights_sha256"],
                       show_progress=show_progress)


def budgets_stage(stats_dir: Path, policy: Policy, pair: str, out: Path | None = None,
                  semantic: SemanticConfig | None = None, dataset: Dataset | None = None,
                  embedding_path: Path | None = None, show_progress: bool = True) -> tuple[EpsTable, Path]:
    """Epsilon table from saved statistics (geometric; final = min(geometric, semantic) with
    ``semantic``), written to ``out`` (default beside the statistics)."""
    stats = Stats.load(stats_dir)
    table = geometric_table(stats, policy, pair=pair)
    if semantic is not None:
        if dataset is None or embedding_path is None:
            raise ConfigError("semantic budgets need the dataset and the embedding model")
        table = semantic_stage(table, stats, dataset, embedding_path, semantic,
                               seed=(stats.meta.get("split") or {}).get("seed", 0), show_progress=show_progress)
    path = out or Path(stats_dir) / "eps_table.json"
    table.save(path)
    return table, path
