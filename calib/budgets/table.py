"""The epsilon table: versioned JSON (and a flat CSV view) that other attack code imports.

JSON document (``schema = "calib-eps-table"``, ``version = 4``)::

    {
      "schema": "calib-eps-table", "version": 4,
      "dataset": {"name": "mnist", "fingerprint": "<sha256 of the whole dataset>",
                  "class_names": ["0", ..., "9"], "image_shape": [1, 28, 28], "value_range": [0, 1]},
      "policy": {"method": "final", "q": 0.05, "s": 1.0, "quantile_method": "linear",
                 "pair": "calibration-train",
                 "semantic": {"judge": "knn", "judge_description": {"name": "knn", "kind": "knn", ...},
                              "bound": "empirical", "rule": "invariance", ...}},
      "budgets": {                       # key: "<space>/<norm>", space in input|embedding,
        "input/linf": {                  # norm in linf|l2|l1; lists are indexed by class label
          "eps": [...], "coverage": [...], "n": [...], "rule": "min(geometric, semantic)",
          "interval": [[lo, hi], ...],    # 95 % distribution-free, per class; hi null = unbounded
          "components": {"geometric": [...], "geometric_interval": [...], "half_d_diff_q": [...],
                         "half_d_diff_q_interval": [...], "d_same_q": [...], "d_same_q_interval": [...],
                         "semantic": {"judge": "knn", "bound": "empirical", "rule": "invariance",
                                      "empirical": [...],    # upper bound; null = no change found
                                      "empirical_interval": [...],
                                      "certified": [...] | null,   # lower bound, if certified
                                      "clean_errors": [...], "judge_correct": [...]}},
          "human": {"sets": [...], "n": [...], "relabelled": [...], "share": [...],   # optional: people
                    "wilson95": [[lo, hi], ...], "status": ["human-verified" | "not verified" |
                    "unlabelled", ...], "judge": "knn", "judge_agreement": {...} | null}
        },
        "embedding/l2": {"eps": [...], ..., "rule": "margin",   # s * Q_q{(d_diff_g - d_same_g) / 2}
                         "components": {"margin_q": [...], "negative_margin_share": [...]}}
      },
      "baselines": {"input/linf": {"0.3": {"either": [...], "contains_same": [...],
                                           "reaches_halfway": [...]}}, ...},     # optional
      "provenance": {"calib": "0.1.0", "seed": 0, "embedding_sha256": "...",
                     "classifier_sha256": "...", "created": "...", ...}
    }

Read a table through its typed accessors (:meth:`EpsTable.budget`, :attr:`EpsTable.semantic_judge`,
...), not by indexing the document. Older versions are refused with one line naming what changed
(:data:`CHANGES`); there is no silent migration, since every older version computed some budget
differently: recompute the table with ``calib run`` (cached stages are reused) or ``calib budgets``.

Epsilons are in data units (pixels in [0,1]). ``eps_for(labels)`` expands a table to per-sample
epsilons shaped (N, 1, 1, 1), the form ART takes. CSV view: one row per (class, space, norm), the
first line a ``#`` comment carrying the rest of the document as JSON, so CSV -> table is lossless.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calib.errors import CalibError
from calib.io import atomic_open, read_json, read_text, to_jsonable, write_json

SCHEMA = "calib-eps-table"
VERSION = 4
#: what changed since each older version, for the one-line refusal
CHANGES = {1: "version 2 computes the embedding budget as the 1-NN margin s*Q_q{(d_diff_g - d_same_g)/2} "
              "(version 1 used min(Q_q{d_diff_g/2}, Q_q{d_same_g})) and records semantic budgets as "
              "[certified, empirical] brackets of a named judge; recompute it with `calib run` or `calib budgets`",
           2: "version 3 names the semantic judge by one string everywhere (policy.semantic.judge; version 2 "
              "stored a dict there, now policy.semantic.judge_description); recompute it with `calib run` (cached "
              "stages are reused) or `calib budgets`",
           3: "version 4 gives every per-class budget a 95 % interval and takes semantic budgets over the points "
              "the judge gets right, by default from invariance radii (policy.semantic.rule); recompute it with "
              "`calib run`"}
TABLE_SPACES = ("input", "embedding")
TABLE_NORMS = ("linf", "l2", "l1")
CSV_FIELDS = ("dataset", "dataset_fingerprint", "class", "class_name", "space", "norm", "method", "q", "s",
              "eps", "eps_lo", "eps_hi", "coverage", "n")


class EpsTableError(CalibError):
    """A malformed, inconsistent or mismatched epsilon table."""


@dataclass(frozen=True)
class SemanticBracket:
    """The semantic budget of one norm: per class the judge's radius quantile, ``empirical`` (an attack:
    an upper, optimistic estimate; ``None`` = no change found) and ``certified`` (a guaranteed lower
    bound; ``None`` for a judge without a certificate), and which one the final budget uses."""

    judge: str
    bound: str
    empirical: tuple[float | None, ...]
    certified: tuple[float, ...] | None
    rule: str = "adversarial"
    empirical_interval: np.ndarray | None = None


@dataclass(frozen=True)
class BudgetColumn:
    """One (space, norm) column of a table, read-only: per class ``eps``, ``coverage`` and ``n``, the rule
    that made it, the semantic bracket (final input budgets) and people's relabelling, if any."""

    space: str
    norm: str
    eps: np.ndarray
    coverage: np.ndarray
    n: np.ndarray
    rule: str
    components: dict[str, Any]
    semantic: SemanticBracket | None
    human: dict[str, Any] | None
    interval: np.ndarray | None = None  # (K, 2) 95 % interval; inf = no finite upper end

    @property
    def key(self) -> str:
        return f"{self.space}/{self.norm}"


@dataclass
class EpsTable:
    """A validated epsilon table; see the module docstring for the document layout."""

    dataset: dict[str, Any]
    policy: dict[str, Any]
    budgets: dict[str, dict[str, Any]]
    provenance: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION

    def __post_init__(self) -> None:
        validate(self.to_dict())

    # ---- access ----------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.dataset["class_names"])

    @property
    def fingerprint(self) -> str:
        return self.dataset["fingerprint"]

    @property
    def keys(self) -> list[str]:
        """The ``<space>/<norm>`` budgets the table holds."""
        return list(self.budgets)

    def budget(self, space_or_key: str, norm: str | None = None) -> BudgetColumn:
        """The budget ``space/norm`` (``table.budget("input", "linf")`` or ``table.budget("input/linf")``)."""
        key = space_or_key if norm is None else f"{space_or_key}/{norm}"
        if key not in self.budgets:
            raise EpsTableError(f"the table has no {key} budget; it has {', '.join(self.budgets)}")
        b = self.budgets[key]
        space, nrm = key.split("/")
        comp = b.get("components") or {}
        sem = comp.get("semantic")
        bracket = None if sem is None else SemanticBracket(
            sem["judge"], sem["bound"], tuple(sem["empirical"]),
            None if sem.get("certified") is None else tuple(sem["certified"]), sem.get("rule", "adversarial"),
            _intervals(sem.get("empirical_interval")))
        return BudgetColumn(space, nrm, np.asarray(b["eps"], np.float64), np.asarray(b["coverage"], np.float64),
                            np.asarray(b["n"], np.int64), str(b.get("rule", "")), comp, bracket, b.get("human"),
                            _intervals(b.get("interval")))

    @property
    def method(self) -> str:
        """``geometric`` or ``final`` (min(geometric, semantic))."""
        return str(self.policy.get("method", ""))

    @property
    def q(self) -> float:
        return float(self.policy["q"])

    @property
    def s(self) -> float:
        return float(self.policy["s"])

    @property
    def pair(self) -> str:
        return str(self.policy.get("pair", "calibration-train"))

    @property
    def semantic_judge(self) -> str | None:
        """The judge whose radii set the semantic budgets (``None`` for a geometric table)."""
        sem = self.policy.get("semantic")
        return None if not sem else sem["judge"]

    @property
    def semantic_rule(self) -> str | None:
        """``invariance`` or ``adversarial``: which radius the semantic budgets are (``None``: geometric)."""
        sem = self.policy.get("semantic")
        return None if not sem else sem.get("rule", "adversarial")

    @property
    def semantic_bound(self) -> str | None:
        sem = self.policy.get("semantic")
        return None if not sem else sem["bound"]

    @property
    def judge_agreement(self) -> dict[str, Any] | None:
        """The semantic judge's measured agreement with people, when it was validated."""
        sem = self.policy.get("semantic")
        return None if not sem else sem.get("judge_agreement")

    def eps(self, space: str = "input", norm: str = "linf") -> np.ndarray:
        """Per-class epsilons (K,) float64 for one space and norm."""
        key = f"{space}/{norm}"
        if key not in self.budgets:
            raise EpsTableError(f"the table has no {key} budget; it has {', '.join(self.budgets)}")
        return np.asarray(self.budgets[key]["eps"], dtype=np.float64)

    def eps_for(self, labels: Any, space: str = "input", norm: str = "linf", *, as_tensor: bool = True,
                fingerprint: str | None = None, allow_mismatch: bool = False):
        """Per-sample epsilons shaped (N, 1, 1, 1): a float32 torch tensor (on ``labels``'s device
        when it is a tensor) or, with ``as_tensor=False``, a float32 numpy array.

        Args:
            labels: (N,) integer class labels, numpy or torch.
            fingerprint: the data's fingerprint; refused if it differs from the table's unless
                ``allow_mismatch``.
        """
        if fingerprint is not None:
            self.check_fingerprint(fingerprint, allow_mismatch)
        eps = self.eps(space, norm)
        device = None
        if hasattr(labels, "detach"):
            device = labels.device
            labels = labels.detach().cpu().numpy()
        lab = np.asarray(labels)
        if lab.ndim != 1 or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
            raise EpsTableError(f"labels must be a 1-D integer array; got dtype {lab.dtype}, shape {lab.shape}")
        if lab.size and (lab.min() < 0 or lab.max() >= len(eps)):
            bad = sorted(set(lab[(lab < 0) | (lab >= len(eps))].tolist()))[:5]
            raise EpsTableError(f"labels {bad} are outside the table's {len(eps)} classes")
        out = eps[lab].astype(np.float32).reshape(-1, 1, 1, 1)
        if not as_tensor:
            return out
        import torch

        return torch.from_numpy(out).to(device) if device is not None else torch.from_numpy(out)

    def check_fingerprint(self, fingerprint: str, allow_mismatch: bool = False) -> None:
        """Refuse data whose fingerprint differs from the table's (unless explicitly allowed)."""
        if fingerprint != self.fingerprint and not allow_mismatch:
            raise EpsTableError(f"the table was calibrated on data {self.fingerprint[:12]}… but is used with "
                                f"data {fingerprint[:12]}…; pass allow_mismatch=True / --allow-mismatch to "
                                "use it anyway")

    # ---- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": self.version, "dataset": self.dataset, "policy": self.policy,
                "budgets": self.budgets, "baselines": self.baselines, "provenance": self.provenance}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "eps table") -> "EpsTable":
        validate(doc, where)
        return cls(doc["dataset"], doc["policy"], doc["budgets"], doc.get("provenance", {}),
                   doc.get("baselines", {}), doc["version"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON document atomically (and, for a ``.json`` path, the ``.csv`` view beside it)."""
        path = Path(path)
        write_json(path, self.to_dict())
        if path.suffix == ".json":
            self.to_csv(path.with_suffix(".csv"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EpsTable":
        """Read and validate a ``.json`` or ``.csv`` table."""
        path = Path(path)
        if path.suffix == ".csv":
            return cls.from_csv(path)
        return cls.from_dict(read_json(path, EpsTableError, "eps table"), str(path))

    # ---- CSV -------------------------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike[str]) -> None:
        rest = {k: v for k, v in self.to_dict().items() if k != "budgets"}
        rest["budget_extras"] = {k: {f: v for f, v in b.items() if f not in ("eps", "coverage", "n", "interval")}
                                 for k, b in self.budgets.items()}
        buf = io.StringIO()
        buf.write("# " + json.dumps(rest, sort_keys=True, allow_nan=False) + "\n")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for key, b in self.budgets.items():
            space, norm = key.split("/")
            iv = b.get("interval") or [[None, None]] * len(self.class_names)
            for c, name in enumerate(self.class_names):
                lo, hi = iv[c]
                w.writerow([self.dataset["name"], self.fingerprint, c, name, space, norm,
                            self.policy.get("method", ""), self.policy.get("q", ""), self.policy.get("s", ""),
                            repr(float(b["eps"][c])), "" if lo is None else repr(float(lo)),
                            "inf" if hi is None else repr(float(hi)), repr(float(b["coverage"][c])), int(b["n"][c])])
        with atomic_open(path, "w") as fh:
            fh.write(buf.getvalue())

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> "EpsTable":
        path = Path(path)
        text = read_text(path, EpsTableError, "eps table")
        first, _, body = text.partition("\n")
        try:
            if not first.startswith("# "):
                raise ValueError("first line must be '# {...}' with the table's metadata")
            doc = json.loads(first[2:])
            rows = list(csv.DictReader(io.StringIO(body)))
            if not rows or set(CSV_FIELDS) - set(rows[0]):
                raise ValueError(f"expected columns {', '.join(CSV_FIELDS)}")
            k = len(doc["dataset"]["class_names"])
            budgets: dict[str, dict[str, Any]] = {}
            for row in rows:
                key = f"{row['space']}/{row['norm']}"
                b = budgets.setdefault(key, {"eps": [None] * k, "coverage": [None] * k, "n": [None] * k,
                                             "interval": [None] * k, **doc.get("budget_extras", {}).get(key, {})})
                c = int(row["class"])
                if not 0 <= c < k:
                    raise ValueError(f"class {c} outside the {k} classes")
                b["eps"][c], b["coverage"][c], b["n"][c] = float(row["eps"]), float(row["coverage"]), int(row["n"])
                hi = float(row["eps_hi"])
                b["interval"][c] = [float(row["eps_lo"]), None if math.isinf(hi) else hi]
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise EpsTableError(f"{path}: malformed eps table CSV ({exc})") from exc
        doc.pop("budget_extras", None)
        doc["budgets"] = budgets
        return cls.from_dict(doc, str(path))


def validate(doc: Any, where: str = "eps table") -> None:
    """Raise :class:`EpsTableError` (one line naming the problem) unless ``doc`` is a valid table."""
    def fail(msg: str) -> None:
        raise EpsTableError(f"{where}: {msg}")

    if not isinstance(doc, dict):
        fail("not a JSON object")
    if doc.get("schema") != SCHEMA:
        fail(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    if "version" not in doc:
        fail("missing version")
    if doc["version"] != VERSION:
        why = CHANGES.get(doc["version"]) if isinstance(doc["version"], int) else None
        fail(f"version {doc['version']!r} is not supported (this calib reads version {VERSION})"
             + (f": {why}" if why else ""))
    ds = doc.get("dataset")
    if not isinstance(ds, dict) or not isinstance(ds.get("fingerprint"), str) or not ds.get("fingerprint"):
        fail("dataset.fingerprint is missing")
    names = ds.get("class_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        fail("dataset.class_names must list at least 2 class names")
    if len(set(names)) != len(names):
        fail("dataset.class_names are not unique")
    if not isinstance(doc.get("policy"), dict):
        fail("policy is missing")
    sem_policy = doc["policy"].get("semantic")
    if sem_policy is not None:
        if not isinstance(sem_policy, dict) or not isinstance(sem_policy.get("judge"), str):
            fail("policy.semantic.judge must name the judge (a string)")
        if sem_policy.get("bound") not in ("empirical", "certified"):
            fail(f"policy.semantic.bound must be empirical or certified; got {sem_policy.get('bound')!r}")
    budgets = doc.get("budgets")
    if not isinstance(budgets, dict) or not budgets:
        fail("budgets are missing")
    k = len(names)
    for key, b in budgets.items():
        parts = key.split("/")
        if len(parts) != 2:
            fail(f"budget key {key!r} is not '<space>/<norm>'")
        space, norm = parts
        if space not in TABLE_SPACES:
            fail(f"unknown space {space!r} in {key!r} (known: {', '.join(TABLE_SPACES)})")
        if norm not in TABLE_NORMS:
            fail(f"unknown norm {norm!r} in {key!r} (known: {', '.join(TABLE_NORMS)})")
        if not isinstance(b, dict) or "eps" not in b:
            fail(f"{key}: missing eps")
        for fld in ("eps", "coverage", "n"):
            vals = b.get(fld)
            if not isinstance(vals, list):
                fail(f"{key}: {fld} must be a list with one value per class")
            if len(vals) != k:
                fail(f"{key}: {fld} has {len(vals)} values for {k} classes (missing classes?)")
        for c, v in enumerate(b["eps"]):
            if not _nonneg(v):
                fail(f"{key}: eps for class {names[c]!r} is {v!r}; it must be a finite number >= 0")
        if "interval" not in b:
            fail(f"{key}: missing interval (a 95 % interval per class)")
        _validate_interval(b["interval"], b["eps"], f"{key}: interval", names, fail)
        sem = (b.get("components") or {}).get("semantic") if isinstance(b.get("components"), dict) else None
        if sem is not None:
            _validate_semantic(sem, key, names, fail)
        if b.get("human") is not None:
            _validate_human(b["human"], key, names, fail)


#: a class's status after people relabelled budget-respecting examples of it
HUMAN_STATUS = ("human-verified", "not verified", "unlabelled")


def _validate_human(h: Any, key: str, names: list[str], fail) -> None:
    """People's relabelling of budget-respecting examples, per class: n labelled, k relabelled (k <= n),
    the share and its Wilson interval, and a status among :data:`HUMAN_STATUS`."""
    k = len(names)
    if not isinstance(h, dict) or not isinstance(h.get("sets"), list):
        fail(f"{key}: human must be an object naming its sets")
    for fld in ("n", "relabelled", "status", "share", "wilson95"):
        if not isinstance(h.get(fld), list) or len(h[fld]) != k:
            fail(f"{key}: human.{fld} must hold one value per class")
    for c in range(k):
        n, r = h["n"][c], h["relabelled"][c]
        if not (isinstance(n, int) and isinstance(r, int) and 0 <= r <= n):
            fail(f"{key}: human counts for class {names[c]!r} must be integers with 0 <= relabelled <= n")
        if h["status"][c] not in HUMAN_STATUS:
            fail(f"{key}: human.status for class {names[c]!r} must be one of {', '.join(HUMAN_STATUS)}")

def _validate_interval(iv: Any, eps: list[Any], where: str, names: list[str], fail) -> None:
    """One [lo, hi] per class with 0 <= lo <= eps <= hi (hi null: no finite upper end)."""
    if not isinstance(iv, list) or len(iv) != len(names):
        fail(f"{where} must hold one [lo, hi] per class")
    for c, pair in enumerate(iv):
        if not (isinstance(pair, list) and len(pair) == 2 and _nonneg(pair[0]) and (pair[1] is None or _nonneg(pair[1]))):
            fail(f"{where} for class {names[c]!r} must be [lo, hi] with numbers >= 0 (hi may be null); got {pair!r}")
        lo, hi = pair
        e = eps[c] if c < len(eps) else None
        if _nonneg(e) and (lo > e * (1 + 1e-9) + 1e-12 or (hi is not None and hi < e * (1 - 1e-9) - 1e-12)):
            fail(f"{where} [{lo!r}, {hi!r}] for class {names[c]!r} does not contain its eps {e!r}")


def _intervals(iv: Any) -> np.ndarray | None:
    """(K, 2) float array from a JSON interval list (null upper ends -> inf)."""
    if iv is None:
        return None
    return np.array([[lo, np.inf if hi is None else hi] for lo, hi in iv], np.float64)


def _nonneg(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def _validate_semantic(sem: Any, key: str, names: list[str], fail) -> None:
    """A semantic bracket: per class an empirical (upper) value or null (no change found) and, when
    certified, a certified (lower) value that never exceeds it."""
    if not isinstance(sem, dict) or not isinstance(sem.get("judge"), str):
        fail(f"{key}: components.semantic must name its judge")
    if sem.get("bound") not in ("empirical", "certified"):
        fail(f"{key}: components.semantic.bound must be empirical or certified; got {sem.get('bound')!r}")
    emp, cert = sem.get("empirical"), sem.get("certified")
    if not isinstance(emp, list) or len(emp) != len(names) or not all(v is None or _nonneg(v) for v in emp):
        fail(f"{key}: components.semantic.empirical must hold one number >= 0 (or null) per class")
    if cert is None:
        if sem["bound"] == "certified":
            fail(f"{key}: the final budget uses the certified bound but the table has no certified values")
        return
    if not isinstance(cert, list) or len(cert) != len(names) or not all(_nonneg(v) for v in cert):
        fail(f"{key}: components.semantic.certified must hold one number >= 0 per class")
    for c, (lo, hi) in enumerate(zip(cert, emp)):
        if hi is not None and lo > hi + 1e-12:
            fail(f"{key}: certified semantic budget {lo!r} exceeds the empirical one {hi!r} for class {names[c]!r}")


def table_from_budgets(*, dataset: dict[str, Any], policy: dict[str, Any], budgets: dict[str, Any],
                       provenance: dict[str, Any], baselines: dict[str, Any] | None = None) -> EpsTable:
    """Build a table from numpy results (via :func:`calib.io.to_jsonable`; a non-finite eps is refused)."""
    return EpsTable(to_jsonable(dataset), to_jsonable(policy), to_jsonable(budgets), to_jsonable(provenance),
                    to_jsonable(baselines or {}))


def load_table(path: str | os.PathLike[str]) -> EpsTable:
    """Read a table (``.json`` or ``.csv``); raises :class:`EpsTableError` with one clear line."""
    return EpsTable.load(path)


__all__ = ["EpsTable", "EpsTableError", "BudgetColumn", "SemanticBracket", "load_table", "table_from_budgets",
           "validate", "HUMAN_STATUS"]
