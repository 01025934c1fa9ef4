"""Adversarial examples made elsewhere (torchattacks, ART, foolbox, AutoAttack, ...), audited with a
run's models and judge and added to the run (``calib audit RUN --adversarial X.npz``)."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.errors import ConfigError, DataError
from calib.io import write_npz
from calib.pipeline.cache import StageCache
from calib.pipeline.stage import StageContext
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def audit_external(ctx: StageContext, x_adv: np.ndarray, indices: np.ndarray, *, norm: str = "linf",
                   eps: np.ndarray | float | None = None, config: Any = None,
                   pred: np.ndarray | None = None, pred_clean: np.ndarray | None = None
                   ) -> tuple[Any, dict[str, np.ndarray]]:
    """Audit adversarial examples made elsewhere with a run's models and its judge.

    Args:
        ctx: the run (a :class:`~calib.pipeline.stage.StageContext`: it builds the audit's reference set).
        x_adv: (N, C, H, W) adversarial images in [0,1].
        indices: (N,) dataset indices of the clean images (test or calibration part; training
            images are the audit's reference set and are refused).
        norm: the attack's input norm (``linf``/``l2``) for interpolation and the budget ball.
        eps: the budget each example was made under (scalar or (N,)); default: its own distance.
        pred: (N,) the attacked model's own predictions on ``x_adv`` (success is judged by the model
            that was attacked); default: the run's classifier's, which must then be the attacked one.
            Which was used is recorded in the result's ``meta["predictions"]``.
        pred_clean: (N,) the attacked model's predictions on the clean images (its clean errors are
            counted apart); default: the run's classifier's when ``pred`` is not given, else unknown.
    Returns:
        the :class:`calib.audit.AuditResult` and the attack arrays (``x``, ``x_adv``, ...).
    """
    import torch

    from calib.audit import AuditConfig, audit
    from calib.models.infer import forward_batched
    from calib.perturb.invariants import perturbation_norms

    ds = ctx.dataset
    given = (("x_adv", x_adv), ("indices", indices), ("eps", eps), ("pred", pred), ("pred_clean", pred_clean))
    for what, a in given:
        if a is not None and np.iscomplexobj(a):
            raise DataError(f"{what} holds complex numbers; it must be real")
        if a is not None and not np.issubdtype(np.asarray(a).dtype, np.number):
            raise DataError(f"{what} must be numbers; got dtype {np.asarray(a).dtype}")
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
    dist = perturbation_norms(torch.from_numpy(x), torch.from_numpy(x_adv), norm).double().numpy()
    if eps is None:
        eps = dist
    eps = np.asarray(eps)
    if eps.shape not in ((), (idx.size,)) or not np.issubdtype(eps.dtype, np.number):
        raise DataError(f"eps must be a number or (N,) = ({idx.size},) numbers, one per example; got shape "
                        f"{eps.shape}, dtype {eps.dtype}")
    eps = np.broadcast_to(eps.astype(np.float64), (idx.size,)).copy()
    if not np.isfinite(eps).all() or (eps < 0).any():
        raise DataError("eps must be finite and >= 0")
    outside = dist > eps * (1 + 1e-6) + 1e-6
    if outside.any():
        i = int(np.argmax(dist - eps))
        raise DataError(f"{int(outside.sum())} of the {idx.size} examples lie outside their {norm} ball (e.g. example "
                        f"{i}: distance {dist[i]:.6g} > eps {eps[i]:.6g}); give the eps they were made under, or the "
                        "right --norm")
    if pred is None:
        pred = forward_batched(f, x_adv).argmax(1).numpy()
        pred_clean = forward_batched(f, x).argmax(1).numpy() if pred_clean is None else pred_clean
        source = {"by": "the run's classifier", "classifier": ctx.config.get("classifier") or "trained by calib",
                  "weights_sha256": ctx.model_config("classifier")["weights_sha256"]}
    else:
        pred = np.asarray(pred)
        if pred.shape != idx.shape or not np.issubdtype(pred.dtype, np.integer):
            raise DataError(f"pred must be (N,) integer predictions, one per example; got shape {pred.shape}, "
                            f"dtype {pred.dtype}")
        if pred.min() < 0 or pred.max() >= ds.num_classes:
            raise DataError(f"pred must lie in [0, {ds.num_classes - 1}] (class indices)")
        pred = pred.astype(np.int64)
        source = {"by": "the attacked model (pred supplied with the examples)"}
    if pred_clean is not None:
        pred_clean = np.asarray(pred_clean)
        if pred_clean.shape != idx.shape or not np.issubdtype(pred_clean.dtype, np.integer):
            raise DataError(f"pred_clean must be (N,) integer predictions; got shape {pred_clean.shape}")
    from calib.human.thresholds import audit_thresholds

    config = config or AuditConfig()
    result = audit(x, x_adv, y, pred, norm=norm, eps=eps, reference=ctx.reference(), judge=judge,
                   config=config, num_classes=ds.num_classes, pred_clean=pred_clean,
                   thresholds=audit_thresholds(ctx, config.ssim_min))
    result.arrays["indices"] = idx
    result.meta["predictions"] = source
    arrays = {"x": x, "x_adv": x_adv, "labels": y, "pred": pred, "eps": eps, "indices": idx,
              "success": pred != y}
    return result, arrays


def read_adversarial(path: Path) -> dict[str, np.ndarray]:
    """An ``.npz`` (read without pickle) with ``x_adv`` and ``indices`` (optionally ``eps``, ``pred``)."""
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
    return arrays


def import_adversarial(folder: RunFolder, path: Path, name: str, norm: str) -> int:
    """``calib audit RUN --adversarial PATH``: audit adversarial examples made elsewhere and add them to
    the run (``attacks/<name>.npz``, ``audit/<name>.*``) and its report (the caller holds the lock);
    returns how many were audited.

    ``path`` is an ``.npz`` (read without pickle) with ``x_adv`` (N, C, H, W) in [0,1], ``indices`` (N,)
    of the clean images in the dataset and optionally ``eps`` (scalar or (N,)) and ``pred`` (N,), the
    attacked model's predictions on ``x_adv`` (without it, the run's classifier's are used).
    """
    from calib.report import write_report

    if norm not in ("linf", "l2"):
        raise ConfigError(f"--norm must be linf or l2; got {norm!r}")
    if not NAME.fullmatch(name):
        raise ConfigError(f"attack name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    if folder.exists(A.manifest(f"attack-{name}")):
        raise ConfigError(f"{name!r} is one of the run's own attacks ({A.attack(name)[0]}); import these examples "
                          "under another --name")
    arrays = read_adversarial(path)
    ctx = StageContext(folder, StageCache(folder.path))
    result, att = audit_external(ctx, arrays["x_adv"], arrays["indices"], norm=norm, eps=arrays.get("eps"),
                                 pred=arrays.get("pred"), pred_clean=arrays.get("pred_clean"))
    result.meta |= {"attack": name, "budget": "imported", "spec": {"norm": norm, "source": str(path)}}
    write_npz(folder.file(A.attack(name)[0]), att)
    result.save(folder.file(A.AUDIT), name, folder.class_names)
    write_report(folder)
    return len(att["labels"])
