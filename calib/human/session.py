"""A labelling session: the experimenter's own relabelling of a run's adversarial examples.

A session shows, in a seeded shuffled order, a stratified sample of the adversarial examples a run
made at its per-class budgets (by default half from ``pgd-table-<norm>``, half from
``invariance-table-<norm>``: moved toward an image of another class, the direction the semantic
budget was computed in; ``item_attack`` in the plan says which) mixed with about 10 %
clean controls (the unperturbed source images: an attention check, and the specificity of the
judges). Every answer (a class, or -1 = unclear) is saved at once, atomically, to
``RUN/human/<session>.npz`` in calib's human-labelled layout (:mod:`calib.human.sets`) with the extra
arrays ``control`` (a clean control) and ``item`` (its position in the session), so ``calib
validate`` reads it like any other set, a killed server loses nothing already answered, and
reopening the session resumes it. The plan (items, order) lives in ``RUN/human/<session>.plan``.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.errors import ConfigError, DataError
from calib.human.agreement import wilson
from calib.human.sets import save_human_set
from calib.io import write_npz
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
UNCLEAR = -1
NOT_ANSWERED = -2


@dataclass
class Session:
    """Items to label (in display order) and the answers so far (``NOT_ANSWERED`` where none)."""

    run: RunFolder
    name: str
    x: np.ndarray              # (N, C, H, W) float32 in [0,1], display order
    source_index: np.ndarray   # (N,) dataset indices of the clean images
    source_label: np.ndarray   # (N,) their labels
    control: np.ndarray        # (N,) bool: a clean control
    answers: np.ndarray        # (N,) int64
    attack: str
    norm: str | None
    class_names: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def path(self) -> Path:
        return self.run.file(A.session(self.name)[0])

    @property
    def plan_path(self) -> Path:
        return self.run.file(A.session(self.name)[1])

    def next_item(self) -> int:
        """The first unanswered item (``len`` when all are answered)."""
        left = np.flatnonzero(self.answers == NOT_ANSWERED)
        return int(left[0]) if left.size else len(self.answers)

    def answer(self, item: int, label: int) -> None:
        """Record ``label`` (a class or -1 = unclear) for ``item`` and save every answer atomically."""
        if not 0 <= item < len(self.answers):
            raise ConfigError(f"item {item} is outside the session's {len(self.answers)} items")
        if not (label == UNCLEAR or 0 <= label < len(self.class_names)):
            raise ConfigError(f"label {label} is not a class (0..{len(self.class_names) - 1}) or -1 (unclear)")
        with self.lock:
            self.answers[item] = label
            done = np.flatnonzero(self.answers != NOT_ANSWERED)
            save_human_set(self.path, self.x[done], self.answers[done], self.source_index[done],
                           name=f"session/{self.name}", norm=self.norm,
                           extra={"control": self.control[done], "item": done.astype(np.int64)})

    def relabel_rates(self) -> dict[str, Any]:
        """Per source class, among answered adversarial items with a clear answer: the share people
        relabelled, with its Wilson 95 % interval; and the controls answered correctly."""
        answered = self.answers != NOT_ANSWERED
        clear = answered & (self.answers != UNCLEAR)
        adv = clear & ~self.control
        out: dict[str, Any] = {"answered": int(answered.sum()), "total": len(self.answers),
                               "unclear": int((answered & (self.answers == UNCLEAR)).sum()), "per_class": {}}
        for c, name in enumerate(self.class_names):
            m = adv & (self.source_label == c)
            k = int((self.answers[m] != c).sum())
            out["per_class"][name] = {"n": int(m.sum()), "relabelled": k, "rate": k / m.sum() if m.any() else None,
                                      "wilson95": wilson(k, int(m.sum()))}
        ctrl = clear & self.control
        ok = int((self.answers[ctrl] == self.source_label[ctrl]).sum())
        out["controls"] = {"n": int(ctrl.sum()), "correct": ok, "wilson95": wilson(ok, int(ctrl.sum()))}
        return out


def _stratified(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """About ``n`` positions, as even across classes as the data allows."""
    classes = np.unique(labels)
    per = max(1, n // len(classes))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes]
    return np.concatenate(picks)


def open_session(run: RunFolder, name: str, *, attack: str | None = None, n: int = 100,
                 controls: float = 0.1, seed: int = 0) -> Session:
    """Create session ``name`` for a run folder, or reopen it (then the other options are ignored).

    Raises:
        ConfigError: a bad name, or an attack the run does not have.
    """
    if not NAME.fullmatch(name):
        raise ConfigError(f"session name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    if not 0 <= controls < 1 or n < 1:
        raise ConfigError("controls must be in [0, 1) and n >= 1")
    names = run.class_names
    plan = run.file(A.session(name)[1])
    if plan.exists():
        try:
            with np.load(plan, allow_pickle=False) as z:
                p = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{plan}: unreadable labelling session ({exc})") from exc
        answers = np.full(len(p["source_index"]), NOT_ANSWERED, np.int64)
        saved = run.file(A.session(name)[0])
        if saved.exists():
            with np.load(saved, allow_pickle=False) as z:
                answers[z["item"]] = z["human_label"]
        return Session(run, name, p["x"], p["source_index"], p["source_label"], p["control"], answers,
                       str(p["attack"]), str(p["norm"]) or None, names)
    have = run.names(A.ATTACKS)
    norms = [a.rsplit("-", 1)[-1] for a in have if a.startswith("pgd-table-")]
    if attack is None and norms:  # both directions at the per-class budgets: PGD and toward another class
        attacks = [f"{kind}-table-{norms[0]}" for kind in ("pgd", "invariance") if f"{kind}-table-{norms[0]}" in have]
    else:
        attacks = [attack] if attack else []
    missing = [a for a in attacks if not run.exists(A.attack(a)[0])]
    if not attacks or missing:
        raise ConfigError(f"the run has no attack {(missing or [attack or 'at the per-class budgets'])[0]!r} to label "
                          f"(it has: {', '.join(have) or 'none'})")
    rng = np.random.default_rng([seed, 11])
    xs, srcs, labs, item_attack = [], [], [], []
    for j, name_j in enumerate(attacks):
        path = run.file(A.attack(name_j)[0])
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in ("x", "x_adv", "labels", "indices") if k in z.files}
        if "x" not in a or "indices" not in a:
            raise DataError(f"{path}: no clean images or indices saved with the attack")
        adv = _stratified(a["labels"], max(1, n // len(attacks)), rng)
        xs.append(a["x_adv"][adv]), srcs.append(a["indices"][adv]), labs.append(a["labels"][adv])
        item_attack.append(np.full(len(adv), j, np.int64))
        if j == 0:
            clean = a
    n_adv = sum(len(v) for v in labs)
    n_ctrl = min(len(clean["labels"]), max(1, round(controls * n_adv / (1 - controls)))) if controls else 0
    ctrl = rng.choice(len(clean["labels"]), n_ctrl, replace=False)
    x = np.concatenate([*xs, clean["x"][ctrl]])
    src = np.concatenate([*srcs, clean["indices"][ctrl]])
    lab = np.concatenate([*labs, clean["labels"][ctrl]])
    is_ctrl = np.concatenate([np.zeros(n_adv, bool), np.ones(len(ctrl), bool)])
    from_attack = np.concatenate([*item_attack, np.full(len(ctrl), -1, np.int64)])
    order = rng.permutation(len(x))
    attack = "+".join(attacks)
    norm = attacks[0].rsplit("-", 1)[-1] if attacks[0].rsplit("-", 1)[-1] in ("linf", "l2") else ""
    made_at = ""
    if norm and all("-table-" in a for a in attacks):
        from calib.human.table import eps_hash

        made_at = eps_hash(run.table(), norm)
    p = {"x": x[order].astype(np.float32), "source_index": src[order].astype(np.int64),
         "source_label": lab[order].astype(np.int64), "control": is_ctrl[order], "attack": np.array(attack),
         "norm": np.array(norm), "seed": np.int64(seed), "eps_hash": np.array(made_at),
         "attacks": np.array(attacks), "item_attack": from_attack[order]}
    write_npz(plan, p)
    return Session(run, name, p["x"], p["source_index"], p["source_label"], p["control"],
                   np.full(len(x), NOT_ANSWERED, np.int64), attack, norm or None, names)


def class_keys(class_names: list[str]) -> dict[str, int]:
    """Keyboard key -> class: the class names themselves when they are single characters (digits),
    else each name's first free letter or digit (shown on screen)."""
    keys: dict[str, int] = {}
    if all(len(n) == 1 and n.lower() not in ("u",) for n in class_names) and \
            len({n.lower() for n in class_names}) == len(class_names):
        return {n.lower(): c for c, n in enumerate(class_names)}
    for c, n in enumerate(class_names):
        for ch in (n.lower() + "abcdefghijklmnopqrstvwxyz0123456789"):
            if ch.isalnum() and ch != "u" and ch not in keys:
                keys[ch] = c
                break
    if len(keys) < len(class_names):
        raise ConfigError("too many classes to give each its own key")
    return keys


__all__ = ["Session", "open_session", "class_keys", "UNCLEAR", "NOT_ANSWERED"]
