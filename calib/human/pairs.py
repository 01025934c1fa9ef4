"""A perceptibility session: same/different judgements of a clean image beside a perturbed copy.

The perturbations are the run's own: for each chosen attacked example (by default half from
``pgd-table-<norm>``, half from ``invariance-table-<norm>``, as the relabelling session picks them)
with perturbation delta = x' - x, the page shows x beside ``clip(x + t delta, 0, 1)`` for a *ladder* of
scale factors t per example, each found by bisection so that the pair's SSIM hits one of
``levels`` targets geometric in 1 - SSIM between ``ssim_range`` (default 0.995, clearly invisible,
down to 0.6, clearly visible), each example's ladder shifted by a random part of a step (seeded) so
that the sizes tested spread over the range instead of piling up on 7 values (the fit's interval
is then honest; the SSIM actually reached is recorded). Examples are stratified per
class and seeded; about ``controls`` (default 12 %) of the pairs are identical (the clean image
twice), and the perturbed image goes left or right at random (seeded). Both images are quantised to
the 8-bit grey levels the page shows before SSIM, L-inf and L2 are measured, so the numbers describe
what a person saw.

Per pair the plan records ``source_index``, ``source_label``, ``t``, ``linf``, ``l2``, ``ssim``,
``side`` (0 = perturbed image on the left, 1 = right, -1 = a control), ``control``, ``target_ssim``
and ``item_attack``. Every answer (0 = same, 1 = different) is saved at once, atomically, with those
records of the answered pairs, so a killed server loses nothing and reopening resumes. Files:
``RUN/human/perceptibility/<session>.plan`` and ``.answers`` (:func:`calib.runfolder.artefacts.pair_session`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.audit.perceptibility import ssim as ssim_of
from calib.errors import ConfigError, DataError
from calib.human.session import NAME, NOT_ANSWERED, _stratified
from calib.io import write_npz
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

SAME, DIFFERENT = 0, 1
RECORDS = ("source_index", "source_label", "t", "linf", "l2", "ssim", "side", "control", "target_ssim", "item_attack")
LEVELS = 7
SSIM_RANGE = (0.995, 0.6)
CONTROLS = 0.12
BISECTION = 20
T_MAX = 1e3


@dataclass
class PairSession:
    """Pairs to judge (display order) and the answers so far (``NOT_ANSWERED`` where none).

    ``left``, ``right``: (N, C, H, W) float32 in [0, 1], the two images of each pair as shown;
    ``records``: (N,) arrays named in :data:`RECORDS`; ``answers``: (N,) int64.
    """

    run: RunFolder
    name: str
    left: np.ndarray
    right: np.ndarray
    records: dict[str, np.ndarray]
    answers: np.ndarray
    class_names: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def path(self) -> Path:
        return self.run.file(A.pair_session(self.name)[0])

    def __len__(self) -> int:
        return len(self.answers)

    def next_item(self) -> int:
        """The first unanswered pair (``len`` when all are answered)."""
        left = np.flatnonzero(self.answers == NOT_ANSWERED)
        return int(left[0]) if left.size else len(self.answers)

    def done(self) -> bool:
        return bool((self.answers != NOT_ANSWERED).all())

    def answer(self, item: int, different: int) -> None:
        """Record ``different`` (0 = same, 1 = different) for pair ``item`` and save every answer atomically."""
        if not 0 <= item < len(self.answers):
            raise ConfigError(f"pair {item} is outside the session's {len(self.answers)} pairs")
        if different not in (SAME, DIFFERENT):
            raise ConfigError(f"answer {different!r}: 0 (same) or 1 (different)")
        with self.lock:
            self.answers[item] = different
            done = np.flatnonzero(self.answers != NOT_ANSWERED)
            write_npz(self.path, {"item": done.astype(np.int64), "different": self.answers[done].astype(np.int64),
                                  **{k: v[done] for k, v in self.records.items()}})

    def trials(self) -> dict[str, np.ndarray]:
        """The answered pairs: their records and ``different`` (bool), all (K,)."""
        done = self.answers != NOT_ANSWERED
        return {**{k: v[done] for k, v in self.records.items()}, "different": self.answers[done] == DIFFERENT}


def quantise(x: np.ndarray) -> np.ndarray:
    """Images as the page shows them: rounded to 8-bit grey levels, float32 in [0, 1]."""
    return (np.clip(np.round(np.asarray(x, np.float64) * 255), 0, 255) / 255).astype(np.float32)


def scaled(x: np.ndarray, delta: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``clip(x + t delta, 0, 1)`` quantised to 8 bits: x, delta (N, C, H, W), t (N,)."""
    return quantise(x + t.reshape(-1, *([1] * (x.ndim - 1))) * delta)


def ladder(x: np.ndarray, delta: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per example and target SSIM, the scale factor t at which the SSIM of (x, x + t delta) (both
    quantised) crosses the target, by bisection in log t on [1e-3, T_MAX] (the largest t when even
    that does not reach it). x, delta: (K, C, H, W); targets: (L,), or (K, L) per example. Returns t
    and the SSIM reached, both (K, L)."""
    k = len(x)
    goal = np.broadcast_to(np.asarray(targets, np.float64), (k, np.shape(targets)[-1])).ravel()
    L = len(goal) // max(k, 1)
    xs, ds = np.repeat(x, L, 0), np.repeat(delta, L, 0)
    base = quantise(xs)
    lo, hi = np.full(k * L, np.log(1e-3)), np.full(k * L, np.log(T_MAX))
    reach = ssim_of(base, scaled(xs, ds, np.exp(hi)))
    for _ in range(BISECTION):
        mid = (lo + hi) / 2
        above = ssim_of(base, scaled(xs, ds, np.exp(mid))) > goal
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    t = np.where(reach > goal, T_MAX, np.exp(hi))
    return t.reshape(k, L), ssim_of(base, scaled(xs, ds, t)).reshape(k, L)


def _load_plan(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable perceptibility session ({exc})") from exc


def default_attacks(run: RunFolder, attack: str | None) -> list[str]:
    """The attacks whose perturbations a session scales: ``attack``, else the per-class-budget PGD and
    the invariance examples of the run's first norm.

    Raises:
        ConfigError: the run has no such attack.
    """
    have = run.names(A.ATTACKS)
    norms = [a.rsplit("-", 1)[-1] for a in have if a.startswith("pgd-table-")]
    if attack is None and norms:
        attacks = [f"{kind}-table-{norms[0]}" for kind in ("pgd", "invariance") if f"{kind}-table-{norms[0]}" in have]
    else:
        attacks = [attack] if attack else []
    missing = [a for a in attacks if not run.exists(A.attack(a)[0])]
    if not attacks or missing:
        raise ConfigError(f"the run has no attack {(missing or [attack or 'at the per-class budgets'])[0]!r} to take "
                          f"perturbations from (it has: {', '.join(have) or 'none'})")
    return attacks


def open_pair_session(run: RunFolder, name: str, *, attack: str | None = None, n: int = 280,
                      controls: float = CONTROLS, levels: int = LEVELS,
                      ssim_range: tuple[float, float] = SSIM_RANGE, seed: int = 0) -> PairSession:
    """Create perceptibility session ``name`` of a run folder (about ``n`` perturbed pairs: ``levels``
    per chosen example, examples spread evenly over the classes), or reopen it (the other options are
    then ignored).

    Raises:
        ConfigError: a bad name or option, or an attack the run does not have.
        DataError: an unreadable plan or attack file.
    """
    if not NAME.fullmatch(name):
        raise ConfigError(f"session name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    if not 0 <= controls < 1 or n < 1 or not 2 <= levels <= 20:
        raise ConfigError("controls must be in [0, 1), n >= 1 and levels in [2, 20]")
    hi, lo = ssim_range
    if not 0 < lo < hi < 1:
        raise ConfigError(f"ssim_range must be (high, low) with 0 < low < high < 1; got {ssim_range}")
    names = list(run.class_names)
    answers_file, plan_file = (run.file(p) for p in A.pair_session(name))
    if plan_file.exists():
        p = _load_plan(plan_file)
        answers = np.full(len(p["side"]), NOT_ANSWERED, np.int64)
        if answers_file.exists():
            a = _load_plan(answers_file)
            answers[a["item"]] = a["different"]
        return PairSession(run, name, p["left"], p["right"], {k: p[k] for k in RECORDS}, answers, names)
    attacks = default_attacks(run, attack)
    rng = np.random.default_rng([seed, 21])
    per_attack = max(1, round(n / levels / len(attacks)))
    xs, ds, lab, src, from_attack = [], [], [], [], []
    for j, name_j in enumerate(attacks):
        path = run.file(A.attack(name_j)[0])
        z = _load_plan(path)
        if "x" not in z or "indices" not in z:
            raise DataError(f"{path}: no clean images or indices saved with the attack")
        moved = np.abs(z["x_adv"] - z["x"]).reshape(len(z["x"]), -1).max(1) >= 1 / 255
        keep = np.flatnonzero(moved)
        pick = keep[_stratified(z["labels"][keep], per_attack, rng)]
        xs.append(z["x"][pick]), ds.append(z["x_adv"][pick] - z["x"][pick]), lab.append(z["labels"][pick])
        src.append(z["indices"][pick]), from_attack.append(np.full(len(pick), j, np.int64))
    x, delta = np.concatenate(xs).astype(np.float64), np.concatenate(ds).astype(np.float64)
    if not len(x):
        raise ConfigError(f"the attacks {', '.join(attacks)} moved no image by a grey level: nothing to show")
    k = len(x)
    gaps = np.geomspace(1 - hi, 1 - lo, levels)  # 1 - SSIM, each example's ladder jittered by up to half a step
    jitter = rng.uniform(-0.5, 0.5, (k, 1)) * np.log(gaps[1] / gaps[0])
    targets = 1 - gaps[None, :] * np.exp(jitter)
    t, _ = ladder(x, delta, targets)
    n_ctrl = round(controls * k * levels / (1 - controls)) if controls else 0
    ctrl = rng.choice(k, n_ctrl, replace=n_ctrl > k)  # identical pairs of the same source images
    base = np.concatenate([np.repeat(np.arange(k), levels), ctrl])  # the example each pair shows
    src_all, lab_all, att_all = (np.concatenate(v)[base] for v in (src, lab, from_attack))
    rec = {"source_index": src_all.astype(np.int64), "source_label": lab_all.astype(np.int64),
           "t": np.concatenate([t.ravel(), np.zeros(n_ctrl)]),  # a control: t = 0, the clean image twice
           "target_ssim": np.concatenate([targets.ravel(), np.ones(n_ctrl)]),
           "item_attack": att_all.astype(np.int64),
           "control": np.concatenate([np.zeros(k * levels, bool), np.ones(n_ctrl, bool)])}
    clean = quantise(x[base])
    shown = scaled(x[base], delta[base], rec["t"])
    d = (shown.astype(np.float64) - clean).reshape(len(shown), -1)
    rec |= {"linf": np.abs(d).max(1), "l2": np.sqrt((d * d).sum(1)), "ssim": ssim_of(clean, shown)}
    right = rng.random(len(shown)) < 0.5
    rec["side"] = np.where(rec["control"], -1, right.astype(np.int64))
    left_img = np.where(right[:, None, None, None], clean, shown)
    right_img = np.where(right[:, None, None, None], shown, clean)
    order = rng.permutation(len(shown))
    rec = {k_: v[order] for k_, v in rec.items()}
    plan = {"left": left_img[order].astype(np.float32), "right": right_img[order].astype(np.float32), **rec,
            "attacks": np.array(attacks), "seed": np.int64(seed), "levels": np.int64(levels),
            "ssim_range": np.array(ssim_range, np.float64)}
    write_npz(plan_file, plan)
    return PairSession(run, name, plan["left"], plan["right"], {k_: plan[k_] for k_ in RECORDS},
                       np.full(len(order), NOT_ANSWERED, np.int64), names)


def pair_sessions(run: RunFolder) -> list[str]:
    """Names of the run's perceptibility sessions (those with a plan)."""
    folder = run.file(A.PAIR_SESSIONS)
    return sorted(p.stem for p in folder.glob("*.plan")) if folder.is_dir() else []


def all_trials(run: RunFolder) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every answered pair of every perceptibility session of ``run`` (records and ``different``, all
    (K,)), and the names of the sessions with answers."""
    parts, used = [], []
    for name in pair_sessions(run):
        path = run.file(A.pair_session(name)[0])
        if not path.exists():
            continue
        a = _load_plan(path)
        missing = [k for k in (*RECORDS, "different") if k not in a]
        if missing:
            raise DataError(f"{path}: not a perceptibility session (no {', '.join(missing)})")
        if len(a["different"]):
            parts.append({**{k: a[k] for k in RECORDS}, "different": a["different"] == DIFFERENT})
            used.append(name)
    if not parts:
        return {k: np.zeros(0) for k in (*RECORDS, "different")}, []
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, used


def summary(session: PairSession) -> dict[str, Any]:
    """Progress of a session: pairs, answered, controls answered and their false alarms."""
    done = session.answers != NOT_ANSWERED
    ctrl = session.records["control"]
    return {"total": len(session), "answered": int(done.sum()), "controls": int((done & ctrl).sum()),
            "false_alarms": int((done & ctrl & (session.answers == DIFFERENT)).sum())}


__all__ = ["PairSession", "open_pair_session", "pair_sessions", "all_trials", "ladder", "quantise", "scaled",
           "default_attacks", "summary", "SAME", "DIFFERENT", "RECORDS"]
