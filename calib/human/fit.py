"""``calib judge fit``: a judge fitted to people's labels, chosen and scored by cross-validation.

Protocol (the one a user with a single labelled set can follow; docs/design.md, "Judges"):

* features: for each candidate judge j of the run, its margin of the source label at every perturbed
  image, standardised by the mean and standard deviation of its margins at the run's clean
  calibration points (so a judge's unit no longer matters);
* target: people say "the class changed" (their label differs from the source's); unclear answers
  are left out of the fit;
* model: scikit-learn's ``LogisticRegression`` (L2 penalty ``C``, ``class_weight="balanced"`` so
  that probability 1/2 is the balanced-accuracy threshold) on a subset of at most ``max_features``
  judges;
* selection: the subset and ``C`` with the lowest out-of-fold log loss (balanced weights) under
  ``StratifiedGroupKFold`` grouped by source image (two perturbations of one image never sit on
  both sides of a split);
* scoring: **nested** cross-validation: every outer fold's selection and fit see only the other
  folds, so the reported figures are never computed on labels the judge was fitted or selected on.
  The judge saved is then selected and fitted on all the labels.

The document ``RUN/models/judges/<name>.json`` holds the judge (members, centres, scales,
coefficients), the selection, the nested-CV figures and the out-of-fold scores of every image of
every set it was fitted on (keyed by the set's content fingerprint), which ``calib validate`` reports
for those sets instead of the (optimistic) in-sample ones.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from calib.errors import ConfigError, DataError
from calib.human.agreement import agreement
from calib.human.sets import HumanSet
from calib.judges.fitted import FORMAT, VERSION

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
CS = (0.01, 0.1, 1.0, 10.0, 100.0)
FOLDS = 5


def set_fingerprint(s: HumanSet) -> str:
    """sha256 of a set's content (images, people's labels, source indices): which set, wherever it lies."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(s.x, np.float32), np.asarray(s.human_label, np.int64),
              np.asarray(s.source_index, np.int64)):
        h.update(a.tobytes())
    return h.hexdigest()


@torch.no_grad()
def judge_margins(judges: Sequence[Any], x: np.ndarray, y: np.ndarray, device: str = "cpu",
                  batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(N, J) margins of label y and (N, J) labels of each judge at images x (N, C, H, W)."""
    m = np.empty((len(x), len(judges)))
    lab = np.empty((len(x), len(judges)), np.int64)
    for j, judge in enumerate(judges):
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size]).to(device)
            yb = torch.from_numpy(y[i:i + batch_size]).to(device)
            m[i:i + len(xb), j] = judge.margin(xb, yb).double().cpu().numpy()
            lab[i:i + len(xb), j] = judge.label(xb).cpu().numpy()
    return m, lab


def _balanced_weights(t: np.ndarray) -> np.ndarray:
    pos = t.mean()
    return np.where(t, 0.5 / pos, 0.5 / (1 - pos))


def _cv_loss(z: np.ndarray, t: np.ndarray, groups: np.ndarray, cols: tuple[int, ...], c: float, seed: int) -> float:
    """Out-of-fold balanced log loss of one candidate (feature columns, C)."""
    from sklearn.linear_model import LogisticRegression

    p = np.empty(len(t))
    for tr, te in _folds(t, groups, seed):
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=1000).fit(z[tr][:, cols], t[tr])
        p[te] = lr.predict_proba(z[te][:, cols])[:, 1]
    p = np.clip(p, 1e-9, 1 - 1e-9)
    w = _balanced_weights(t)
    return float(-(w * (t * np.log(p) + (~t) * np.log(1 - p))).sum() / w.sum())


def _folds(t: np.ndarray, groups: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    k = min(FOLDS, int(t.sum()), int((~t).sum()), len(np.unique(groups)))
    if k < 2:
        raise DataError(f"fitting a judge needs at least 2 images people relabelled and 2 they did not "
                        f"(got {int(t.sum())} and {int((~t).sum())})")
    return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(t, t, groups))


def select(z: np.ndarray, t: np.ndarray, groups: np.ndarray, max_features: int, seed: int,
           cs: Sequence[float] = CS) -> dict[str, Any]:
    """The candidate (feature subset of size <= ``max_features``, C) with the lowest grouped-CV loss."""
    best: dict[str, Any] | None = None
    n = z.shape[1]
    tried = 0
    for size in range(1, min(max_features, n) + 1):
        for cols in itertools.combinations(range(n), size):
            for c in cs:
                loss = _cv_loss(z, t, groups, cols, c, seed)
                tried += 1
                if best is None or loss < best["loss"] - 1e-12:
                    best = {"cols": cols, "C": c, "loss": loss}
    if best is None:  # no feature columns to choose from
        raise DataError("fitting a judge needs at least one candidate judge's margins; got none")
    return {**best, "candidates": tried}


def nested_cv(z: np.ndarray, t: np.ndarray, groups: np.ndarray, labels: np.ndarray, max_features: int,
              seed: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Out-of-fold log-odds (N,) and labels (N,) from nested CV, and each outer fold's choice."""
    from sklearn.linear_model import LogisticRegression

    logit = np.empty(len(t))
    lab = np.empty(len(t), np.int64)
    chosen = []
    for k, (tr, te) in enumerate(_folds(t, groups, seed)):
        sel = select(z[tr], t[tr], groups[tr], max_features, seed + 1 + k)
        cols = sel["cols"]
        lr = LogisticRegression(C=sel["C"], class_weight="balanced", max_iter=1000).fit(z[tr][:, cols], t[tr])
        logit[te] = lr.decision_function(z[te][:, cols])
        lab[te] = labels[te, cols[int(np.argmax(np.abs(lr.coef_[0])))]]
        chosen.append({"fold": k, "features": list(cols), "C": sel["C"], "n_test": int(len(te))})
    return logit, lab, chosen


def fit_judge(folder: RunFolder, sets: list[HumanSet], *, name: str = "fitted", judges: Sequence[str] | None = None,
              max_features: int = 3, seed: int | None = None) -> dict[str, Any]:
    """Fit, select and score (nested CV) a judge on ``sets``; returns its document (not yet saved).

    Args:
        judges: candidate member judges (default: every single judge whose models the run has).
        max_features: the largest subset of judges combined.

    Raises:
        ConfigError: a bad name or candidate; DataError: the sets do not fit the run, or hold too few
            answers of either kind.
    """
    from sklearn.linear_model import LogisticRegression

    from calib.human.validate import check_sets
    from calib.judges import JUDGES
    from calib.judges.ensemble import clean_margins

    if not NAME.fullmatch(name) or name in JUDGES:
        raise ConfigError(f"a fitted judge's name must match {NAME.pattern} and not be a built-in judge "
                          f"({', '.join(JUDGES)}); got {name!r}")
    if max_features < 1:
        raise ConfigError(f"max_features must be >= 1; got {max_features}")
    if not sets:
        raise DataError("no human-labelled sets given")
    seed = folder.seed if seed is None else seed
    candidates = list(judges) if judges else [j for j in folder.available_judges() if j in JUDGES and j != "ensemble"]
    for j in candidates:
        if j not in JUDGES or j == "ensemble":
            raise ConfigError(f"a fitted judge combines single built-in judges; {j!r} is not one")
    if len(set(candidates)) != len(candidates):
        raise ConfigError(f"candidate judges repeat: {candidates}")
    jc = folder.judge_config()
    members = [folder.judge(j, jc.identity(j)) for j in candidates]
    indices = check_sets(folder, sets)
    ds = folder.dataset
    cal = folder.splits.calibration
    dev = folder.device
    centres, scales = [], []
    for judge in members:
        m = clean_margins(judge, torch.from_numpy(cal.images).to(dev), torch.from_numpy(cal.labels).to(dev))
        m = m.double().cpu().numpy()
        centres.append(float(m.mean()))
        scales.append(float(m.std()) if m.std() > 0 else 1.0)
    rows_m, rows_l, ys, hs, groups, where = [], [], [], [], [], []
    for s in sets:
        idx = indices[s.name]
        y = ds.labels[idx]
        m, lab = judge_margins(members, s.x, y, device=dev)
        rows_m.append(m)
        rows_l.append(lab)
        ys.append(y)
        hs.append(s.human_label)
        groups.append(idx)
        where += [(s.name, i) for i in range(len(idx))]
    m_all, l_all = np.concatenate(rows_m), np.concatenate(rows_l)
    y_all, h_all, g_all = np.concatenate(ys), np.concatenate(hs), np.concatenate(groups)
    z_all = (m_all - np.array(centres)) / np.array(scales)
    if not np.isfinite(z_all).all():
        raise DataError("a judge's margin is not finite on some perturbed image")
    clear = h_all >= 0
    z, t, g, lab = z_all[clear], (h_all != y_all)[clear], g_all[clear], l_all[clear]
    log.info("fitting judge %s on %d answers (%d relabelled), candidates %s", name, len(t), int(t.sum()), candidates)
    # scored by nested CV; unclear images get the out-of-fold score of the fold model that held out their source
    oof_logit, oof_label, chosen = nested_cv(z, t, g, lab, max_features, seed)
    logit_all = np.full(len(h_all), np.nan)
    label_all = np.full(len(h_all), -1, np.int64)
    logit_all[clear], label_all[clear] = oof_logit, oof_label
    cv = agreement(y_all, h_all, logit_all > 0, np.nan_to_num(logit_all), label_all, seed)
    sel = select(z, t, g, max_features, seed)
    cols = sel["cols"]
    lr = LogisticRegression(C=sel["C"], class_weight="balanced", max_iter=1000).fit(z[:, cols], t)
    per_set: dict[str, Any] = {}
    pos = 0
    for s in sets:
        n = len(s)
        part = slice(pos, pos + n)
        per_set[s.name] = {"fingerprint": set_fingerprint(s), "path": s.path, "n": n,
                           "out_of_fold_logit": [None if not np.isfinite(v) else float(v) for v in logit_all[part]],
                           "out_of_fold_label": label_all[part].tolist()}
        pos += n
    feats = [candidates[c] for c in cols]
    return {
        "format": FORMAT, "version": VERSION, "name": name, "kind": "fitted",
        "members": feats,
        "members_weights_sha256": {j: folder.judge(j, jc.identity(j)).describe().get("weights_sha256")
                                   for j in feats},
        "centres": [centres[c] for c in cols], "scales": [scales[c] for c in cols],
        "coef": [float(v) for v in lr.coef_[0]], "intercept": float(lr.intercept_[0]),
        "standardised_on": {"part": "calibration", "n": int(len(cal)), "statistic": "mean and std of clean margins"},
        "selection": {"candidates": candidates, "max_features": max_features, "C_grid": list(CS),
                      "chosen_C": sel["C"], "cv_log_loss": sel["loss"], "candidates_tried": sel["candidates"],
                      "criterion": "balanced out-of-fold log loss, StratifiedGroupKFold by source image",
                      "folds": len(_folds(t, g, seed)), "seed": seed},
        "cross_validation": {"protocol": "nested: each outer fold selects and fits on the other folds only "
                                         "(StratifiedGroupKFold grouped by source image)",
                             "outer_folds": chosen, "agreement": cv},
        "fitted_on": per_set,
        "n_answers": int(len(t)), "n_relabelled": int(t.sum()),
    }


__all__ = ["fit_judge", "set_fingerprint", "judge_margins", "select", "nested_cv", "NAME"]
