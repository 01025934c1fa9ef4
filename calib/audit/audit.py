"""The audit: is each adversarial example a *fair* one (docs/design.md)?

For every attacked x -> x' with label y, classifier f and the run's judge (:mod:`calib.judges`):

* ``success``: f(x') != y;
* perceptibility (:mod:`calib.audit.perceptibility`): L-inf, L2, L0, background changes and the
  trivial detector, SSIM; ``perceptible`` = SSIM < the class's SSIM threshold (:class:`SsimThresholds`:
  people's fitted threshold where the run has one, else ``ssim_min``; the audit names each class's
  source) (or, with ``detector_in_verdict``, also any background change);
* ``class_changed``: the judge's verdict that x' no longer shows y (``judge_label``, its continuous
  ``judge_score`` = minus its margin, ``judge_clean`` its label of the clean x, and for an ensemble
  each member's label ``judge_<member>``); the audit names the judge;
* ``interpolated``: x' is closer to another same-class reference image than to x
  (in the attack's norm), and ``ball_has_wrong``: the attack's budget ball around x contains a
  same-class reference image f misclassifies;
* ``valid`` = success and not perceptible and not class-changed and not interpolated.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from calib.audit.interpolation import ball_has_wrong, interpolation
from calib.data.dataset import standard_layout
from calib.audit.perceptibility import ONE_LEVEL, perceptibility
from calib.errors import ConfigError, DataError
from calib.io import to_jsonable, write_json, write_npz
from calib.models.infer import forward_batched

FLAGS = ("clean_error", "success", "perceptible", "detected", "class_changed", "interpolated", "ball_has_wrong",
         "valid")


@dataclass(frozen=True)
class AuditConfig:
    """Thresholds of the verdict.

    Attributes:
        ssim_min: an example with SSIM below this is perceptible.
        tol: a pixel changed by more than ``tol`` counts (L0, background).
        detector_in_verdict: also call every example the trivial background detector flags perceptible.
    """

    ssim_min: float = 0.9
    tol: float = ONE_LEVEL
    detector_in_verdict: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.ssim_min <= 1:
            raise ConfigError(f"ssim_min must lie in [0, 1]; got {self.ssim_min}")


@dataclass(frozen=True)
class SsimThresholds:
    """The SSIM threshold of each class (``values`` (C,): an example with SSIM below its class's value is
    perceptible) and where it comes from (``sources`` (C,): "people, N pairs", or "uncalibrated, SSIM ≥ 0.9")."""

    values: tuple[float, ...]
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.sources) or not all(0 <= v <= 1 for v in self.values):
            raise ConfigError(f"SSIM thresholds must be one per class in [0, 1], each with its source; got "
                              f"{self.values} from {self.sources}")

    @staticmethod
    def uncalibrated_source(ssim_min: float) -> str:
        return f"uncalibrated, SSIM ≥ {ssim_min:g}"

    @classmethod
    def uncalibrated(cls, ssim_min: float, num_classes: int) -> "SsimThresholds":
        """``ssim_min`` for every class, named as uncalibrated."""
        return cls((float(ssim_min),) * num_classes, (cls.uncalibrated_source(ssim_min),) * num_classes)


@dataclass
class Reference:
    """The reference set the audit compares against (normally the training part).

    ``images`` (R, C, H, W) in [0,1], ``labels`` (R,), ``wrong`` (R,) where the classifier errs,
    ``embeddings[name]`` (R, d) per embedding model.
    """

    images: np.ndarray
    labels: np.ndarray
    wrong: np.ndarray
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def flat(self) -> np.ndarray:
        return self.images.reshape(len(self.images), -1)


def build_reference(classifier: nn.Module, embeddings: dict[str, nn.Module], images: np.ndarray,
                    labels: np.ndarray, device: str | torch.device = "cpu") -> Reference:
    """Classifier errors and embeddings of the reference images."""
    pred = forward_batched(classifier, images, device=device).argmax(1).numpy()
    embs = {name: forward_batched(g, images, device=device).numpy() for name, g in embeddings.items()}
    return Reference(images, labels.astype(np.int64), pred != labels, embs)


@dataclass
class AuditResult:
    """Per-example audit arrays (all (N,)) and the audit's settings."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    def rates(self, mask: np.ndarray | None = None) -> dict[str, Any]:
        a = self.arrays
        m = np.ones(len(a["labels"]), bool) if mask is None else mask
        n = int(m.sum())
        out: dict[str, Any] = {"n": n}
        for f in FLAGS:  # (results saved before clean errors were counted have no clean_error)
            out[f"{f}_rate"] = float(a[f][m].mean()) if n and f in a else float("nan")
        succ = m & a["success"]
        out["valid_among_successes"] = float(a["valid"][succ].mean()) if succ.any() else float("nan")
        for key in ("linf", "l2", "l0", "background_share", "ssim"):
            out[f"mean_{key}"] = float(a[key][m].mean()) if n else float("nan")
        for name in self.meta.get("judge_members", []):
            changed = a[f"judge_{name}"][m] != a["labels"][m]
            out[f"class_changed_{name}_rate"] = float(changed.mean()) if n else float("nan")
        if succ.any():
            out["class_preserving_among_successes"] = float((~a["class_changed"][succ]).mean())
            for f in ("perceptible", "interpolated"):
                out[f"{f}_among_successes"] = float(a[f][succ].mean())
        else:
            out |= {f"{f}_among_successes": float("nan") for f in ("class_preserving", "perceptible", "interpolated")}
        return out

    def summary(self, class_names: list[str] | tuple[str, ...]) -> dict[str, Any]:
        y = self.arrays["labels"]
        return {**self.meta, "overall": self.rates(),
                "per_class": {name: self.rates(y == c) | self.threshold_of(c) for c, name in enumerate(class_names)
                              if (y == c).any()}}

    def threshold_of(self, c: int) -> dict[str, Any]:
        """Class ``c``'s SSIM threshold and its source (``ssim_min``, ``ssim_source``; empty for an audit
        saved before thresholds were recorded)."""
        t = self.meta.get("ssim_thresholds")
        if not t or not 0 <= c < len(t["values"]):
            return {}
        return {"ssim_min": t["values"][c], "ssim_source": t["sources"][c]}

    def save(self, folder: str | os.PathLike[str], name: str, class_names: list[str] | tuple[str, ...]) -> Path:
        """``<name>.npz`` (arrays, no pickle) and ``<name>.json`` (summary), written atomically."""
        folder = Path(folder)
        write_npz(folder / f"{name}.npz", self.arrays)
        write_json(folder / f"{name}.json", to_jsonable(self.summary(class_names)))
        return folder / f"{name}.json"

    @classmethod
    def load(cls, folder: str | os.PathLike[str], name: str) -> "AuditResult":
        folder = Path(folder)
        try:
            doc = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
            with np.load(folder / f"{name}.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{folder / name}: unreadable audit ({exc})") from exc
        meta = {k: v for k, v in doc.items() if k not in ("overall", "per_class")}
        return cls(arrays, meta)


def judge_verdicts(judge: Any, x: np.ndarray, x_adv: np.ndarray, labels: np.ndarray, batch_size: int = 512,
                   device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """The judge's verdicts on (N, C, H, W) images ``x_adv`` of source labels ``labels`` (clean ``x``):
    ``judge_label``, ``judge_score`` (> 0: another class), ``class_changed``, ``judge_clean`` and, for
    an ensemble, ``judge_<member>`` (each member's label)."""
    from calib.perturb.pgd import eval_mode

    cols: dict[str, list[np.ndarray]] = {}

    def put(key: str, v: torch.Tensor) -> None:
        cols.setdefault(key, []).append(v.detach().cpu().numpy())

    with torch.no_grad(), eval_mode(*judge.modules):
        for s in range(0, len(labels), batch_size):
            # standard strides (calib.data.dataset.standard_layout: the last bit depends on them)
            xa = torch.from_numpy(standard_layout(x_adv[s:s + batch_size])).to(device)
            xc = torch.from_numpy(standard_layout(x[s:s + batch_size])).to(device)
            y = torch.from_numpy(np.asarray(labels[s:s + batch_size], np.int64)).to(device)
            put("judge_label", judge.label(xa))
            put("judge_score", judge.score(xa, y).double())
            put("class_changed", judge.changed(xa, y))
            put("judge_clean", judge.label(xc))
            for name, lab in (judge.member_labels(xa).items() if hasattr(judge, "member_labels") else ()):
                put(f"judge_{name}", lab)
    return {k: np.concatenate(v) for k, v in cols.items()}


def audit(x: np.ndarray, x_adv: np.ndarray, labels: np.ndarray, pred_adv: np.ndarray, *, norm: str,
          eps: np.ndarray, reference: Reference, judge: Any, config: AuditConfig = AuditConfig(),
          ball_space: str = "input", embedding: nn.Module | None = None, num_classes: int | None = None,
          device: str | torch.device = "cpu", pred_clean: np.ndarray | None = None,
          thresholds: SsimThresholds | None = None) -> AuditResult:
    """Audit one attack's outputs.

    Every rate the result gives (:meth:`AuditResult.rates`) is over all N examples, unless it says
    ``among_successes``. A point the classifier already gets wrong on the clean image is a *clean
    error*, counted apart: it is not a success of the attack (nor valid), whatever ``x_adv`` is.

    Args:
        x, x_adv: (N, C, H, W) clean and adversarial images in [0,1]; labels: (N,) true labels;
        pred_adv: (N,) the attacked classifier's predictions on ``x_adv``.
        pred_clean: (N,) its predictions on ``x`` (clean errors); ``None`` when unknown (then none is
            counted, and ``meta["clean_predictions"]`` is false).
        norm: input norm of the attack's threat model (``linf``/``l2``), used for interpolation
            and for the budget ball when ``ball_space == "input"``.
        eps: (N,) the budget each example was attacked under (input radius, or embedding radius
            when ``ball_space == "embedding"``, i.e. embedding-projected PGD: the ball is then
            measured with ``embedding``, whose reference embeddings are ``reference.embeddings["g"]``).
        reference: the reference set (the training part).
        judge: the run's :class:`calib.judges.Judge`; its verdict is ``class_changed``.
        thresholds: the SSIM threshold of each class and its source (people's fitted thresholds,
            :func:`calib.human.thresholds.audit_thresholds`); default: ``config.ssim_min`` for every
            class, "uncalibrated". Recorded in ``meta["ssim_thresholds"]``.
    """
    n = len(labels)
    if x.shape != x_adv.shape or len(x) != n or len(pred_adv) != n or len(eps) != n:
        raise DataError(f"audit inputs disagree in length: x {x.shape}, x_adv {x_adv.shape}, labels {n}, "
                        f"predictions {len(pred_adv)}, eps {len(eps)}")
    if ball_space not in ("input", "embedding"):
        raise ConfigError(f"ball_space must be input or embedding; got {ball_space!r}")
    if ball_space == "embedding" and (embedding is None or "g" not in reference.embeddings):
        raise ConfigError("an embedding ball needs the embedding g and the reference set's g embeddings")
    labels = labels.astype(np.int64)
    clean_error = np.zeros(n, bool) if pred_clean is None else np.asarray(pred_clean) != labels
    arrays: dict[str, np.ndarray] = {"labels": labels, "pred_adv": pred_adv.astype(np.int64),
                                     "eps": np.asarray(eps, np.float64), "clean_error": clean_error,
                                     "success": (pred_adv != labels) & ~clean_error}
    arrays |= perceptibility(x, x_adv, config.tol)
    n_classes = max(int(num_classes or 0), int(labels.max()) + 1 if n else 0)
    thresholds = thresholds or SsimThresholds.uncalibrated(config.ssim_min, n_classes)
    if len(thresholds.values) < n_classes:
        raise ConfigError(f"{len(thresholds.values)} SSIM thresholds for {n_classes} classes")
    perceptible = arrays["ssim"] < np.asarray(thresholds.values, np.float64)[labels]
    if config.detector_in_verdict:
        perceptible = perceptible | arrays["detected"]
    arrays["perceptible"] = perceptible
    arrays |= judge_verdicts(judge, x, x_adv, labels, device=device)
    changed = arrays["class_changed"]
    flat_x, flat_adv = x.reshape(n, -1), x_adv.reshape(n, -1)
    inter = interpolation(flat_x, flat_adv, labels, reference.flat, reference.labels, norm)
    arrays |= {"dist_to_x": inter["dist_to_x"], "dist_to_same": inter["dist_to_same"],
               "nearest_same": inter["nearest_same"], "interpolated": inter["interpolated"]}
    if ball_space == "input":
        ball = ball_has_wrong(flat_x, labels, eps, reference.flat, reference.labels, reference.wrong, norm)
    else:
        e_clean = forward_batched(embedding, x, device=device).numpy()
        arrays["shift_g"] = np.linalg.norm(forward_batched(embedding, x_adv, device=device).numpy() - e_clean, axis=1)
        ball = ball_has_wrong(e_clean, labels, eps, reference.embeddings["g"], reference.labels, reference.wrong, "l2")
    arrays |= {"dist_to_wrong": ball["dist_to_wrong"], "ball_has_wrong": ball["has_wrong"]}
    arrays["valid"] = arrays["success"] & ~perceptible & ~changed & ~arrays["interpolated"]
    members = [m.name for m in getattr(judge, "members", [])]
    meta = {"config": asdict(config), "norm": norm, "ball_space": ball_space, "judge": judge.describe(),
            "judge_members": members, "reference_size": int(len(reference.labels)),
            "ssim_thresholds": {"values": list(thresholds.values), "sources": list(thresholds.sources)},
            "clean_predictions": pred_clean is not None,
            "rates": "over all examples; success excludes clean errors (f(x) != y)",
            "reference_misclassified": int(reference.wrong.sum())}
    return AuditResult(arrays, meta)
