"""People's perceptibility threshold: a psychometric fit of "different" on the size of a perturbation.

Each trial of a perceptibility session (:mod:`calib.human.pairs`) shows a clean image beside a copy
perturbed by a known amount, or beside itself (a control), and a person answers *same* or
*different*. Per class, and pooled over classes, the perturbed trials are fitted by logistic
regression of "different" on

    x = log(1 - SSIM)

(scikit-learn's ``LogisticRegression`` without penalty), so ``P(different) = 1 / (1 + exp(-b1 (x - x0)))``
and the *just-noticeable difference* (P = 0.5) is x0 = -b0 / b1, reported as the SSIM value
``1 - exp(x0)``: directly a threshold the audit can use (an example with SSIM below it is perceptible).
Its 95 % interval is the **profile-likelihood** interval: the x0 whose profile log-likelihood (the
slope re-fitted for each x0, SciPy's bounded scalar minimiser) lies within chi2_1(0.95) / 2 of the
maximum, its ends found by Brent's method; an end the data do not close is open (``None``).

A fit is degenerate, and gives no threshold (``threshold`` None, ``reason`` says why), with fewer
than :data:`MIN_TRIALS` perturbed trials, all answers alike, answers that separate perfectly by size
(every "different" larger than every "same": the slope is infinite and the interval collapses onto
the gap), a slope <= 0, a slope not significantly
above 0 (likelihood-ratio test against a constant, the same chi2_1(0.95) cut: the interval would be
open), or a JND outside the SSIMs tested. The controls' false-alarm rate ("different" to identical
pairs) is reported with its Wilson interval.

``RUN/human/perceptibility.json`` (:data:`calib.runfolder.artefacts.PERCEPTIBILITY`) holds the fit of
every perceptibility session of a run; the audit reads each class's ``threshold`` there
(:func:`calib.human.thresholds.audit_thresholds`), else the pooled one, else its own ``ssim_min``.
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.errors import DataError
from calib.human.agreement import wilson
from calib.human.thresholds import VERSION
from calib.io import to_jsonable, write_json
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
MIN_TRIALS = 12
FLOOR = 1e-6  # 1 - SSIM below this counts as this (an exactly identical perturbed pair)
SLOPE_MAX = 1e3  # profile: slopes searched in [0, SLOPE_MAX] per unit of x
METHOD = ("logistic regression of 'different' on x = log(1 - SSIM) (scikit-learn LogisticRegression, no penalty); "
          "JND = SSIM where P(different) = 0.5; 95 % profile-likelihood interval (chi2_1 cut, slope re-fitted "
          "per x0 with SciPy, ends by Brent's method)")


def size(ssim: np.ndarray) -> np.ndarray:
    """x = log(1 - SSIM) of (N,) SSIMs (1 - SSIM floored at :data:`FLOOR`)."""
    return np.log(np.maximum(1.0 - np.asarray(ssim, np.float64), FLOOR))


def to_ssim(x: float) -> float:
    """The SSIM of size ``x`` (the inverse of :func:`size`)."""
    return float(1.0 - math.exp(x))


def _cut() -> float:
    from scipy.stats import chi2

    return float(chi2.ppf(CONFIDENCE, 1)) / 2.0


def log_likelihood(x: np.ndarray, y: np.ndarray, b0: float, b1: float) -> float:
    """Bernoulli log-likelihood of answers ``y`` (N,) in {0, 1} under logit p = b0 + b1 x."""
    z = b0 + b1 * x
    return float(np.sum(y * z - np.logaddexp(0.0, z)))


def logistic_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (intercept b0, slope b1) of logit P(y = 1) = b0 + b1 x (scikit-learn, no
    penalty). ``x``, ``y``: (N,); y in {0, 1}, both values present."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():  # separable answers: the slope grows until lbfgs stops, the JND is still fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = LogisticRegression(C=np.inf, max_iter=1000).fit(x[:, None], y)
    return float(m.intercept_[0]), float(m.coef_[0, 0])


def profile(x: np.ndarray, y: np.ndarray, x0: float) -> float:
    """Profile log-likelihood of the threshold ``x0``: max over slopes b1 in [0, SLOPE_MAX] of the
    log-likelihood of logit p = b1 (x - x0) (concave in b1; SciPy's bounded minimiser)."""
    from scipy.optimize import minimize_scalar

    d = x - x0
    r = minimize_scalar(lambda b: -float(np.sum(y * b * d - np.logaddexp(0.0, b * d))), bounds=(0.0, SLOPE_MAX),
                        method="bounded", options={"xatol": 1e-6})
    return -float(r.fun)


def profile_interval(x: np.ndarray, y: np.ndarray, x0: float, best: float) -> tuple[float | None, float | None]:
    """Ends of the profile-likelihood interval of the threshold around the MLE ``x0`` (log-likelihood
    ``best``), in units of x; ``None`` for an end the data do not close within 3 spans of x."""
    from scipy.optimize import brentq

    cut = best - _cut()
    span = float(x.max() - x.min()) or 1.0
    g = lambda t: profile(x, y, t) - cut  # noqa: E731  (> 0 inside the interval)
    ends: list[float | None] = []
    for sign in (-1.0, 1.0):
        inner, step, end = x0, span / 8, None
        while abs(inner - x0) < 3 * span:
            outer = inner + sign * step
            if g(outer) < 0:
                end = brentq(g, min(inner, outer), max(inner, outer), xtol=1e-5)
                break
            inner, step = outer, step * 1.5
        ends.append(end)
    return ends[0], ends[1]


def fit_class(ssim: np.ndarray, different: np.ndarray) -> dict[str, Any]:
    """The psychometric fit of one group of perturbed trials: ``ssim`` (N,) of each pair, ``different``
    (N,) bool answers. Returns ``n``, ``n_different``, ``intercept``, ``slope`` (per unit of x),
    ``jnd_x``, ``jnd_ssim``, ``ci95_ssim`` ([low, high] SSIM, either end ``None`` when open),
    ``threshold`` (the JND's SSIM, or ``None``) and ``reason`` (why there is none)."""
    x, y = size(ssim), np.asarray(different, bool).astype(np.int64)
    n, k = int(len(y)), int(y.sum())
    out: dict[str, Any] = {"n": n, "n_different": k, "intercept": None, "slope": None, "jnd_x": None,
                           "jnd_ssim": None, "ci95_ssim": None, "threshold": None, "reason": None,
                           "ssim_tested": [float(np.min(ssim)), float(np.max(ssim))] if n else None}
    if n < MIN_TRIALS:
        return out | {"reason": f"too few trials ({n} < {MIN_TRIALS})"}
    if k in (0, n):
        return out | {"reason": f"all answers {'different' if k else 'same'}"}
    if x[y == 0].max() <= x[y == 1].min():
        return out | {"reason": "answers separate perfectly by size (no finite slope, no reliable interval)"}
    b0, b1 = logistic_fit(x, y)
    out |= {"intercept": b0, "slope": b1}
    if not b1 > 0:
        return out | {"reason": f"slope {b1:.3g} <= 0 (larger perturbations not seen more often)"}
    x0 = -b0 / b1
    best = max(log_likelihood(x, y, b0, b1), profile(x, y, x0))  # (a separable fit: lbfgs stopped early)
    p = k / n
    null = k * math.log(p) + (n - k) * math.log(1 - p)
    lo, hi = profile_interval(x, y, x0, best)
    # SSIM decreases with x: the interval's low SSIM is its high x
    out |= {"jnd_x": x0, "jnd_ssim": to_ssim(x0), "lr_statistic": 2 * (best - null),
            "ci95_ssim": [None if hi is None else to_ssim(hi), None if lo is None else to_ssim(lo)]}
    if best - null < _cut():
        return out | {"reason": "slope not significantly above 0 (likelihood-ratio test, 95 %)"}
    if not x.min() <= x0 <= x.max():
        return out | {"reason": f"JND (SSIM {to_ssim(x0):.4f}) outside the SSIMs tested"}
    return out | {"threshold": to_ssim(x0)}


def fit(trials: dict[str, np.ndarray], class_names: list[str], sessions: list[str]) -> dict[str, Any]:
    """The document of ``RUN/human/perceptibility.json`` from answered trials (all (N,)): ``ssim``,
    ``different`` (bool), ``control`` (bool), ``source_label``; per class, pooled, and the controls."""
    ssim, diff, ctrl, lab = (np.asarray(trials[k]) for k in ("ssim", "different", "control", "source_label"))
    if not (len(ssim) == len(diff) == len(ctrl) == len(lab)):
        raise DataError("perceptibility trials disagree in length")
    adv = ~ctrl
    per_class = {name: fit_class(ssim[adv & (lab == c)], diff[adv & (lab == c)]) for c, name in enumerate(class_names)}
    k, m = int(diff[ctrl].sum()), int(ctrl.sum())
    return to_jsonable({
        "version": VERSION, "variable": "x = log(1 - SSIM)", "method": METHOD, "confidence": CONFIDENCE,
        "min_trials": MIN_TRIALS, "sessions": sessions, "class_names": list(class_names),
        "n_pairs": int(adv.sum()), "per_class": per_class, "pooled": fit_class(ssim[adv], diff[adv]),
        "controls": {"n": m, "false_alarms": k, "rate": k / m if m else None, "wilson95": wilson(k, m)},
        "recomputed": "from every perceptibility session of the run, when a session's last pair is answered "
                      "and when `calib label --task perceptibility` stops",
    })


def write_fit(run: RunFolder) -> dict[str, Any] | None:
    """Fit every perceptibility session of ``run`` and write ``RUN/human/perceptibility.json``
    atomically; returns the document (``None``, and nothing written, without answered pairs)."""
    from calib.human.pairs import all_trials

    trials, sessions = all_trials(run)
    if not sessions:
        return None
    doc = fit(trials, list(run.class_names), sessions)
    write_json(run.file(A.PERCEPTIBILITY), doc)
    log.info("perceptibility fit of %d pairs from %s written", doc["n_pairs"], ", ".join(sessions))
    return doc


__all__ = ["size", "to_ssim", "logistic_fit", "log_likelihood", "profile", "profile_interval", "fit_class", "fit",
           "write_fit", "MIN_TRIALS", "METHOD", "CONFIDENCE"]
