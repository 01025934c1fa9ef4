"""Stage functions shared by ``calib run`` and the single-stage commands (``calib stats``,
``calib budgets``, ``calib attack``): each takes artefacts, checks they belong together, and returns
the next artefact."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from calib.budgets import EpsTable, Policy, geometric_table
from calib.budgets.semantic import Radii, load_radii, robustness_radii, save_radii
from calib.data import DEFAULT_FRACTIONS, Dataset, Splits
from calib.data.split import DEFAULT_MAX_CALIBRATION
from calib.errors import ArtefactError, ConfigError, DataError
from calib.judges import Judge, JudgeConfig, build_judge
from calib.models import load_model
from calib.pipeline.config import SemanticConfig
from calib.stats import Stats, StatsConfig, compute_stats
from calib.train import embed

log = logging.getLogger(__name__)


def check_model_data(config: dict[str, Any], dataset: Dataset, splits: Splits, what: str,
                     allow_mismatch: bool = False, subset: bool = False) -> None:
    """Refuse a model trained on other data or another split (its calibration points could have
    been training points), unless ``allow_mismatch``. ``subset``: the model was trained on a
    recorded subset of the training part (g2), whose indices are checked to lie in it."""
    data = config.get("data", {})
    if allow_mismatch or data.get("external"):  # a user's classifier: trained elsewhere, on data calib cannot see
        return
    if data.get("data_fingerprint") != dataset.fingerprint:
        raise ArtefactError(f"the {what} was trained on data {str(data.get('data_fingerprint'))[:12]}…, not on "
                            f"{dataset.name} ({dataset.fingerprint[:12]}…); pass --allow-mismatch to use it anyway")
    if subset:
        if data.get("train_parent_fingerprint") != splits.train.fingerprint:
            raise ArtefactError(f"the {what} was not trained on a subset of this run's training part")
        return
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


def query_part(dataset: Dataset, splits: Splits, pair: str) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices and labels of the query points of a statistics ``pair`` (``calibration-train``)."""
    query = pair.split("-")[0]
    idx = np.arange(len(dataset)) if query == "all" else getattr(splits, query).indices
    return idx, dataset.labels[idx]


def run_judge(name: str, run_dir: Path, dataset: Dataset, splits: Splits, config: JudgeConfig,
              device: str = "cpu") -> Judge:
    """The judge ``name`` built from the models of a run folder, with the training part as its
    reference set (an ensemble's scales set on the calibration part).

    Raises:
        ConfigError: the run has no model the judge needs.
    """
    models = Path(run_dir) / "models"

    def load(stem: str):
        if not (models / f"{stem}.json").exists():
            raise ConfigError(f"judge {name!r} needs the model models/{stem}, which {run_dir} does not have; "
                              f"run `calib run --judge {name}` (or list it under [judge] also)")
        model, cfg = load_model(models / stem, device)
        check_model_data(cfg, dataset, splits, stem, subset=stem == "embedding2")
        return model, cfg

    tr, cal = splits.train, splits.calibration
    return build_judge(name, config, load, tr.images, tr.labels, dataset.num_classes, device=device,
                       calibration=(cal.images, cal.labels))


def semantic_radii(judge: Judge, dataset: Dataset, splits: Splits, pair: str, config: SemanticConfig, *,
                   seed: int = 0, device: str = "cpu", show_progress: bool = True
                   ) -> tuple[dict[str, Radii], np.ndarray, np.ndarray]:
    """The judge's robustness radii at the query points of ``pair``, per norm of ``config``;
    returns (norm -> Radii, dataset indices, labels)."""
    idx, y = query_part(dataset, splits, pair)
    x = dataset.images[idx]
    radii = {norm: robustness_radii(judge, x, y, norm, iters=config.iters, steps=config.steps,
                                    restarts=config.restarts, seed=seed, device=device, show_progress=show_progress)
             for norm in config.norms}
    return radii, idx, y


def semantic_table(geo: EpsTable, stats: Stats, run_dir: Path, judge_name: str, bound: str = "empirical"
                   ) -> EpsTable:
    """The final table from the geometric one and the saved radii ``RUN/semantic/<judge>.*``."""
    from calib.budgets import final_table

    radii, doc, idx, _ = load_radii(Path(run_dir) / "semantic", judge_name)
    for norm in radii:
        ps = stats.pair("input", norm, geo.policy["pair"])
        if not np.array_equal(ps.query_indices, idx):
            raise ConfigError(f"the {judge_name} radii were measured on other points than the statistics' "
                              f"{geo.policy['pair']} pair; recompute them")
    info = {norm: {k: v for k, v in i.items() if k in ("iters", "steps", "restarts", "max_radius", "seed",
                                                            "certificate_checked", "not_found", "clean_wrong")}
            for norm, i in doc["norms"].items()}
    return final_table(geo, stats, radii, doc["judge"], bound=bound, semantic_info={"per_norm": info})


def budgets_stage(stats_dir: Path, policy: Policy, pair: str, out: Path | None = None,
                  semantic: SemanticConfig | None = None, dataset: Dataset | None = None,
                  judge: str = "knn", judge_config: JudgeConfig | None = None, bound: str = "empirical",
                  device: str = "cpu", show_progress: bool = True) -> tuple[EpsTable, Path]:
    """Epsilon table from saved statistics (geometric; final = min(geometric, semantic) with
    ``semantic``, the radii of ``judge`` measured on the run folder's models), written to ``out``
    (default beside the statistics)."""
    stats = Stats.load(stats_dir)
    table = geometric_table(stats, policy, pair=pair)
    if semantic is not None:
        if dataset is None:
            raise ConfigError("semantic budgets need the dataset")
        if stats.meta["dataset"]["fingerprint"] != dataset.fingerprint:
            raise ConfigError("the statistics were computed on other data than the dataset given")
        from calib.data import split_dataset

        split = stats.meta.get("split") or {}
        splits = split_dataset(dataset, seed=int(split.get("seed", 0)),
                               fractions=tuple(split.get("fractions", DEFAULT_FRACTIONS)),
                               hold_out=split.get("held_out") or None,
                               max_calibration=split.get("max_calibration", DEFAULT_MAX_CALIBRATION))
        jc = judge_config or JudgeConfig(name=judge)
        j = run_judge(judge, Path(stats_dir), dataset, splits, jc, device)
        radii, idx, y = semantic_radii(j, dataset, splits, pair, semantic, seed=int(split.get("seed", 0)),
                                       device=device, show_progress=show_progress)
        save_radii(Path(stats_dir) / "semantic", judge, radii, idx, y, j.describe())
        table = semantic_table(table, stats, Path(stats_dir), judge, bound)
    path = out or Path(stats_dir) / "eps_table.json"
    table.save(path)
    return table, path


def audit_external(ctx, x_adv: np.ndarray, indices: np.ndarray, *, norm: str = "linf",
                   eps: np.ndarray | float | None = None, config=None,
                   pred: np.ndarray | None = None) -> tuple[Any, dict[str, np.ndarray]]:
    """Audit adversarial examples made elsewhere (torchattacks, ART, foolbox, ...) with a run's models.

    Args:
        ctx: :class:`calib.pipeline.context.RunContext` of the run.
        x_adv: (N, C, H, W) adversarial images in [0,1].
        indices: (N,) dataset indices of the clean images (test or calibration part; training
            images are the audit's reference set and are refused).
        norm: the attack's input norm (``linf``/``l2``) for interpolation and the budget ball.
        eps: the budget each example was made under (scalar or (N,)); default: its own distance.
        pred: (N,) the attacked model's own predictions on ``x_adv`` (success is judged by the model
            that was attacked); default: the run's classifier's, which must then be the attacked one.
            Which was used is recorded in the result's ``meta["predictions"]``.
    Returns:
        the :class:`calib.audit.AuditResult` and the attack arrays (``x``, ``x_adv``, ...).
    """
    from calib.perturb.invariants import perturbation_norms
    from calib.audit import AuditConfig, audit
    from calib.models.infer import forward_batched

    ds = ctx.dataset
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"indices must be a 1-D integer array; got shape {idx.shape}, dtype {idx.dtype}")
    if idx.size == 0 or idx.min() < 0 or idx.max() >= len(ds):
        raise DataError(f"indices must lie in [0, {len(ds) - 1}] (dataset indices of the clean images)")
    x = ds.images[idx]
    if x_adv.shape != x.shape:
        raise DataError(f"x_adv has shape {tuple(x_adv.shape)}; the {idx.size} clean images have {tuple(x.shape)}")
    if not np.isfinite(x_adv).all():
        raise DataError("x_adv contains NaN or inf")
    if x_adv.min() < 0 or x_adv.max() > 1:
        raise DataError(f"x_adv must lie in [0, 1]; found [{float(x_adv.min()):.4g}, {float(x_adv.max()):.4g}]")
    if np.isin(idx, ctx.splits.train.indices).any():
        raise DataError("some indices are training images (the audit's reference set); attack test or "
                        "calibration images")
    x_adv = np.ascontiguousarray(x_adv, np.float32)
    y = ds.labels[idx]
    f = ctx.model("classifier")
    judge = ctx.judge()
    if eps is None:
        import torch

        eps = perturbation_norms(torch.from_numpy(x), torch.from_numpy(x_adv), norm).double().numpy()
    eps = np.broadcast_to(np.asarray(eps, np.float64), (idx.size,)).copy()
    if pred is None:
        pred = forward_batched(f, x_adv).argmax(1).numpy()
        cfg = ctx.run_config
        source = {"by": "the run's classifier", "classifier": cfg.get("classifier") or "trained by calib",
                  "weights_sha256": _weights_sha(ctx.run_dir)}
    else:
        pred = np.asarray(pred)
        if pred.shape != idx.shape or not np.issubdtype(pred.dtype, np.integer):
            raise DataError(f"pred must be (N,) integer predictions, one per example; got shape {pred.shape}, "
                            f"dtype {pred.dtype}")
        if pred.min() < 0 or pred.max() >= ds.num_classes:
            raise DataError(f"pred must lie in [0, {ds.num_classes - 1}] (class indices)")
        pred = pred.astype(np.int64)
        source = {"by": "the attacked model (pred supplied with the examples)"}
    result = audit(x, x_adv, y, pred, norm=norm, eps=eps, reference=ctx.reference(), judge=judge,
                   config=config or AuditConfig(), num_classes=ds.num_classes)
    result.arrays["indices"] = idx
    result.meta["predictions"] = source
    arrays = {"x": x, "x_adv": x_adv, "labels": y, "pred": pred, "eps": eps, "indices": idx,
              "success": pred != y}
    return result, arrays


def _weights_sha(run_dir: Path) -> str | None:
    from calib.models import read_config

    try:
        return read_config(Path(run_dir) / "models" / "classifier")["weights_sha256"]
    except ArtefactError:
        return None


def import_adversarial(run_dir: Path, path: Path, name: str, norm: str) -> int:
    """``calib audit RUN --adversarial PATH``: audit adversarial examples made elsewhere and add them to
    the run (``attacks/<name>.npz``, ``audit/<name>.*``) and its report; returns how many were audited.

    ``path`` is an ``.npz`` (read without pickle) with ``x_adv`` (N, C, H, W) in [0,1], ``indices`` (N,)
    of the clean images in the dataset and optionally ``eps`` (scalar or (N,)) and ``pred`` (N,), the
    attacked model's predictions on ``x_adv`` (without it, the run's classifier's are used).
    """
    import re
    import zipfile

    from calib.io import write_npz
    from calib.pipeline.context import load_run
    from calib.report import write_report

    if norm not in ("linf", "l2"):
        raise ConfigError(f"--norm must be linf or l2; got {norm!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ConfigError(f"attack name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as exc:
        raise DataError(f"adversarial examples not found: {path}") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz without pickled objects ({exc})") from exc
    missing = [k for k in ("x_adv", "indices") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)} (need x_adv and indices)")
    ctx = load_run(run_dir)
    result, att = audit_external(ctx, arrays["x_adv"], arrays["indices"], norm=norm, eps=arrays.get("eps"),
                                 pred=arrays.get("pred"))
    result.meta |= {"attack": name, "budget": "imported", "spec": {"norm": norm, "source": str(path)}}
    write_npz(Path(run_dir) / "attacks" / f"{name}.npz", att)
    result.save(Path(run_dir) / "audit", name, ctx.dataset.class_names)
    write_report(run_dir)
    return len(att["labels"])
