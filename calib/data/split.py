"""Stratified, seeded train / calibration / test splits.

Roles: *train* fits the classifier and the embedding; *calibration* is where epsilon budgets are
measured; *test* is held out for scoring and attacks. Every class is represented in every part.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.data.dataset import Dataset
from calib.errors import ConfigError, DataError

PARTS = ("train", "calibration", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
#: the calibration part's default cap: beyond it, more calibration points barely move a per-class 5 %
#: quantile (200 points per class of 10 put it between the 4th and 17th smallest with 95 % confidence)
#: while the judges' per-point radius search grows linearly; the rest goes to training
DEFAULT_MAX_CALIBRATION = 2000


@dataclass(frozen=True)
class Splits:
    """The three parts of a dataset; each is a :class:`Dataset` named ``<name>:<part>``.
    ``held_out``: dataset indices the split was made to keep in the test part (sorted), if any."""

    train: Dataset
    calibration: Dataset
    test: Dataset
    seed: int
    fractions: tuple[float, float, float]
    held_out: tuple[int, ...] = ()
    max_calibration: int | None = DEFAULT_MAX_CALIBRATION

    def describe(self) -> dict:
        return {"seed": self.seed, "fractions": list(self.fractions), "held_out": list(self.held_out),
                "max_calibration": self.max_calibration,
                **{p: getattr(self, p).describe() for p in PARTS}}


def _allocate(n: int, fractions: np.ndarray) -> np.ndarray:
    """Largest-remainder allocation of ``n`` items to parts, at least one per non-zero part."""
    raw = fractions * n
    counts = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((fractions > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        counts[donor] -= 1
        counts[i] += 1
    return counts


def stratified_indices(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Split indices 0..N-1 into ``len(fractions)`` sorted parts, stratified by label.

    Raises:
        DataError: a class has fewer samples than there are non-empty parts.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ConfigError(f"split fractions must be non-negative and sum to 1; got {list(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    need = int((fr > 0).sum())
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < need:
            raise DataError(f"class {int(c)} has {idx.size} samples; a stratified split into {need} "
                            f"parts needs at least {need}")
        idx = rng.permutation(idx)
        bounds = np.cumsum(_allocate(idx.size, fr))[:-1]
        for part, chunk in zip(parts, np.split(idx, bounds)):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def split_dataset(ds: Dataset, seed: int = 0,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                  hold_out: np.ndarray | list[int] | tuple[int, ...] | None = None,
                  max_calibration: int | None = DEFAULT_MAX_CALIBRATION) -> Splits:
    """Stratified, seeded split of ``ds`` into train / calibration / test.

    If ``ds`` carries the source's official test samples and also has others (a full MNIST with
    its ``train`` files), the official test samples are the test part and the rest is split into
    train / calibration in the ratio ``fractions[0] : fractions[1]``. Otherwise (e.g. only the
    ``t10k`` files exist) all samples are split three ways by ``fractions``.

    If ``ds`` carries an explicit calibration part (``official_calibration``, from a ``.npz`` with
    ``X_calibration``), it is the calibration part as given and ``max_calibration`` is not applied.

    ``max_calibration``: the calibration part holds at most this many samples (a seeded, stratified
    choice; ``None``: no cap); the others go to the training part. Default
    :data:`DEFAULT_MAX_CALIBRATION`; small data sets (MNIST's 10k: 1,500) are below it.

    ``hold_out``: dataset indices that must land in the test part (the sources of human-labelled
    sets: the models must never train on them). Each one the split put elsewhere trades places with
    a test sample of its class that is not held out (chosen with the same seed), so every part keeps
    its size per class and the rest of the split is unchanged.

    Raises:
        DataError: a held-out index is outside the dataset, or a class has more held-out samples
            than its test part has places.
    """
    if max_calibration is not None and max_calibration < 2:
        raise ConfigError(f"max_calibration must be >= 2 or None; got {max_calibration}")
    mask = ds.official_test
    explicit_cal = ds.official_calibration is not None and ds.official_calibration.any()
    if explicit_cal and mask is not None and mask.any():
        test = np.flatnonzero(mask)
        cal = np.flatnonzero(ds.official_calibration & ~mask)
        train = np.flatnonzero(~mask & ~ds.official_calibration)
    elif mask is not None and mask.any() and (~mask).any():
        rest = np.flatnonzero(~mask)
        tr, ca = fractions[0], fractions[1]
        if tr + ca <= 0:
            raise ConfigError(f"split fractions leave nothing for train/calibration: {list(fractions)}")
        p_train, p_cal = stratified_indices(ds.labels[rest], (tr / (tr + ca), ca / (tr + ca)), seed)
        train, cal, test = rest[p_train], rest[p_cal], np.flatnonzero(mask)
    else:
        train, cal, test = stratified_indices(ds.labels, fractions, seed)
    if not explicit_cal and max_calibration is not None and cal.size > max_calibration:
        keep, _ = stratified_indices(ds.labels[cal], (max_calibration / cal.size, 1 - max_calibration / cal.size),
                                     seed + 1)
        moved = np.setdiff1d(cal, cal[keep])
        cal, train = cal[keep], np.sort(np.concatenate([train, moved]))
    held: tuple[int, ...] = ()
    if hold_out is not None and len(hold_out):
        train, cal, test, held = _hold_out(ds.labels, train, cal, test, np.asarray(hold_out), seed)
    return Splits(train=ds.subset(train, "train"), calibration=ds.subset(cal, "calibration"),
                  test=ds.subset(test, "test"), seed=seed, fractions=tuple(float(f) for f in fractions),
                  held_out=held, max_calibration=None if explicit_cal else max_calibration)


@dataclass(frozen=True)
class SplitSpec:
    """What a split is made from, as a run folder records it: rebuilding it from the same dataset gives
    the same parts (checked by their fingerprints). :meth:`build` is the one place calib makes a split.

    Attributes:
        seed: the split's seed.
        fractions: train / calibration / test shares.
        max_calibration: the calibration part's cap (``None``: no cap).
        held_out: dataset indices kept in the test part (sources of human-labelled sets).
    """

    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    max_calibration: int | None = DEFAULT_MAX_CALIBRATION
    held_out: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"split seed must be an integer >= 0; got {self.seed!r}")
        fr = tuple(self.fractions)
        if len(fr) != 3 or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fr):
            raise ConfigError(f"split fractions must be 3 numbers (train, calibration, test); got {list(fr)}")
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "fractions", tuple(float(f) for f in fr))
        object.__setattr__(self, "held_out", tuple(int(i) for i in self.held_out))

    def build(self, ds: Dataset) -> Splits:
        """The split of ``ds`` this spec describes (see :func:`split_dataset`)."""
        return split_dataset(ds, seed=self.seed, fractions=self.fractions, hold_out=self.held_out or None,
                             max_calibration=self.max_calibration)

    def to_json(self) -> dict:
        return {"seed": self.seed, "fractions": list(self.fractions), "max_calibration": self.max_calibration,
                "held_out": list(self.held_out)}

    @classmethod
    def from_json(cls, doc: dict, where: str = "split record") -> "SplitSpec":
        if not isinstance(doc, dict) or "seed" not in doc or "fractions" not in doc:
            raise DataError(f"{where}: a split record needs seed and fractions")
        try:
            return cls(seed=doc["seed"], fractions=tuple(doc["fractions"]),
                       max_calibration=doc.get("max_calibration", DEFAULT_MAX_CALIBRATION),
                       held_out=tuple(doc.get("held_out") or ()))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: malformed split record ({exc})") from exc


def _hold_out(labels: np.ndarray, train: np.ndarray, cal: np.ndarray, test: np.ndarray, hold: np.ndarray,
              seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Move the ``hold`` indices into the test part by swapping with same-class test samples."""
    if not np.issubdtype(hold.dtype, np.integer) or hold.ndim != 1:
        raise DataError(f"held-out indices must be a 1-D integer array; got {hold.dtype}, shape {hold.shape}")
    hold = np.unique(hold)
    if hold.size and (hold[0] < 0 or hold[-1] >= len(labels)):
        raise DataError(f"held-out indices must lie in [0, {len(labels) - 1}]")
    parts = {"train": train.copy(), "calibration": cal.copy()}
    test = test.copy()
    rng = np.random.default_rng([seed, 7])
    for name, part in parts.items():
        for h in hold[np.isin(hold, part)]:
            c = labels[h]
            free = test[(labels[test] == c) & ~np.isin(test, hold)]
            if free.size == 0:
                raise DataError(f"class {int(c)} has more held-out samples than places in the test part")
            t = free[rng.integers(free.size)]
            part[part == h] = t
            test[test == t] = h
        parts[name] = np.sort(part)
    return parts["train"], parts["calibration"], np.sort(test), tuple(int(i) for i in hold)


def stratified_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Positions (sorted) of at most ``n`` examples, stratified by class and seeded; all if ``n`` is None
    (the attacked test examples, the projected points)."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    frac = n / len(labels)
    keep, _ = stratified_indices(labels, (frac, 1 - frac), seed)
    return keep
