"""Agreement of a judge with people on "did the class change?" and on the label itself.

Per perturbed image: the source label y (the clean image's dataset label), the label a person gave h
(-1 = unclear), and the judge's verdict (changed or not), its continuous "class changed" score and
its label. People say the class changed when ``h != y``; unclear answers are left out of every
rate and counted. Reported:

* confusion counts (positive = "the class changed"), sensitivity (TPR), specificity (TNR), accuracy
  and agreement on the label (judge label == h), each with a Wilson 95 % interval
  (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``);
* balanced accuracy ``(TPR + TNR) / 2`` (equal to scikit-learn's ``balanced_accuracy_score``) and
  ROC AUC of the score (``sklearn.metrics.roc_auc_score``), each with a seeded percentile bootstrap
  95 % interval (2000 resamples of the images); ``None`` where a set holds only one kind of answer.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from calib.errors import DataError

CONFIDENCE = 0.95
BOOTSTRAP = 2000


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Wilson score interval of a proportion k/n (``None`` for n = 0)."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"value": (k / n) if n else None, "k": int(k), "n": int(n), "wilson95": wilson(k, n)}


def _balanced_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    return float((np.mean(pred[truth]) + np.mean(~pred[~truth])) / 2)


def _auc(truth: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, score))


def balanced_accuracy_rows(t: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each row of (B, n) boolean truth / verdict arrays."""
    pos = t.sum(1)
    return ((t & o).sum(1) / pos + (~t & ~o).sum(1) / (t.shape[1] - pos)) / 2


def auc_rows(t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of (B, n) truth / score arrays (Mann-Whitney U with average ranks for ties,
    which is what ``roc_auc_score`` computes)."""
    from scipy.stats import rankdata

    r = rankdata(s, axis=1)
    p = t.sum(1)
    return ((r * t).sum(1) - p * (p + 1) / 2) / (p * (t.shape[1] - p))


def _bootstrap(rows, truth: np.ndarray, other: np.ndarray, seed: int) -> tuple[float, float] | None:
    """Percentile bootstrap 95 % interval of a statistic (``rows``: vectorised over resamples);
    resamples holding only one kind of answer are skipped."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    i = rng.integers(0, n, (BOOTSTRAP, n))
    t, o = truth[i], other[i]
    keep = t.any(1) & ~t.all(1)
    if keep.sum() < BOOTSTRAP // 2:
        return None
    lo, hi = np.quantile(rows(t[keep], o[keep]), [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(lo), float(hi)


def agreement(source_label: np.ndarray, human_label: np.ndarray, changed: np.ndarray, score: np.ndarray,
              judge_label: np.ndarray, seed: int = 0, intervals: bool = True) -> dict[str, Any]:
    """Agreement of one judge with people on one group of images (all arrays (N,)); ``intervals``:
    also the bootstrap intervals of balanced accuracy and AUC (the Wilson ones always).

    Raises:
        DataError: the arrays disagree in length.
    """
    arrays = [np.asarray(a) for a in (source_label, human_label, changed, score, judge_label)]
    if len({len(a) for a in arrays}) != 1:
        raise DataError(f"agreement: arrays of lengths {[len(a) for a in arrays]}")
    y, h, ch, sc, jl = arrays
    clear = h >= 0
    y, h, ch, sc, jl = y[clear], h[clear], ch[clear].astype(bool), sc[clear].astype(np.float64), jl[clear]
    truth = h != y
    tp, fn = int((ch & truth).sum()), int((~ch & truth).sum())
    fp, tn = int((ch & ~truth).sum()), int((~ch & ~truth).sum())
    both = truth.any() and (~truth).any()
    out: dict[str, Any] = {
        "n": int(clear.sum()), "unclear": int((~clear).sum()), "people_changed": int(truth.sum()),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "sensitivity": _rate(tp, tp + fn), "specificity": _rate(tn, tn + fp), "accuracy": _rate(tp + tn, len(truth)),
        "label_agreement": _rate(int((jl == h).sum()), len(h)),
        "balanced_accuracy": _balanced_accuracy(truth, ch) if both else None,
        "balanced_accuracy_ci95": _bootstrap(balanced_accuracy_rows, truth, ch, seed) if both and intervals else None,
        "auc": _auc(truth, sc) if both else None,
        "auc_ci95": _bootstrap(auc_rows, truth, sc, seed + 1) if both and intervals else None,
    }
    return out


def roc_points(source_label: np.ndarray, human_label: np.ndarray, score: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve of the score against people's "changed" (unclear answers left out)."""
    from sklearn.metrics import roc_curve

    clear = np.asarray(human_label) >= 0
    truth = np.asarray(human_label)[clear] != np.asarray(source_label)[clear]
    if truth.all() or not truth.any():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(truth, np.asarray(score, np.float64)[clear])
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


__all__ = ["agreement", "roc_points", "wilson"]
