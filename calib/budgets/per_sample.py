"""Per-sample budgets that other attack code can import (``RUN/per_sample_eps.npz``).

For every calibration point (by dataset index) and input norm: the geometric budget
``s * min(d_diff/2, d_same)``, the run judge's robustness radius (``semantic_empirical_<norm>``, an
upper bound; ``semantic_certified_<norm>``, a guaranteed lower bound, for a certified judge), and the
final ``eps_input_<norm> = min(geometric, semantic under the chosen bound)``; in the embedding, the
1-NN margin budget ``eps_embedding_l2 = s * max((d_diff_g - d_same_g)/2, 0)``. ``inf`` means no
change was found (the semantic radius does not bind).

Test points (version 2; ``part == 1``) have their own geometric and margin budgets (from the
test-train statistics), but the judge's radius is measured at calibration points only: their final
input budget is ``min(own geometric, the class's semantic budget from the table)``, and their
``semantic_*`` values are NaN (not measured). Arrays are plain (no pickle); ``meta`` is a JSON string
(schema, version, dataset fingerprint, judge, bound, parts).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calib.budgets.geometric import Policy, geometric_budget
from calib.budgets.margin import margin_budget
from calib.errors import CalibError
from calib.io import write_npz

SCHEMA = "calib-per-sample-eps"
VERSION = 2
#: versions this calib reads (version 1 holds calibration points only)
READS = (1, 2)
#: ``part`` codes
PARTS = ("calibration", "test")


class PerSampleError(CalibError):
    """A malformed per-sample budget file, or indices it does not cover."""


def per_sample_arrays(stats: Any, policy: Policy, pair: str, radii: dict[str, Any] | None = None,
                      bound: str = "empirical", test_pair: str | None = "test-train",
                      class_semantic: dict[str, np.ndarray] | None = None,
                      rule: str = "adversarial") -> dict[str, np.ndarray]:
    """The arrays of the per-sample file: the query points of ``pair`` (the calibration points) and, when
    ``stats`` has it, of ``test_pair``, whose final budget takes the per-class semantic budget
    ``class_semantic[norm]`` (K,) as its cap (see the module docstring)."""
    out = _block(stats, policy, pair, radii, bound, None, rule)
    out["part"] = np.zeros(len(out["indices"]), np.int8)
    if test_pair and test_pair != pair and any(p == test_pair for (_, _, p) in stats.pairs):
        test = _block(stats, policy, test_pair, None, bound, class_semantic or {}, rule)
        for key in set(out) - {"part"} - set(test):
            if not key.startswith("semantic_"):
                raise PerSampleError(f"the {test_pair} statistics do not cover the spaces and norms of {pair}")
            test[key] = np.full(len(test["indices"]), np.nan)  # not measured at test points
        test["part"] = np.ones(len(test["indices"]), np.int8)
        out = {k: np.concatenate([out[k], test[k]]) for k in out}
    return out


def _block(stats: Any, policy: Policy, pair: str, radii: dict[str, Any] | None, bound: str,
           class_semantic: dict[str, np.ndarray] | None, rule: str = "adversarial") -> dict[str, np.ndarray]:
    k = len(stats.class_names)
    out: dict[str, np.ndarray] = {}
    for (space, norm, p), ps in sorted(stats.pairs.items()):
        if p != pair:
            continue
        if "indices" in out and not np.array_equal(out["indices"], ps.query_indices):
            raise PerSampleError("statistics of one pair disagree on their query points")
        out["indices"], out["labels"] = ps.query_indices, ps.query_labels
        if space == "embedding":
            out[f"eps_embedding_{norm}"] = margin_budget(ps.nn.d_same, ps.nn.d_diff, ps.query_labels, k,
                                                         policy).per_sample
            continue
        geo = geometric_budget(ps.nn.d_same, ps.nn.d_diff, ps.query_labels, k, policy).per_sample
        out[f"geometric_{norm}"] = geo
        final = geo
        r = (radii or {}).get(norm)
        if r is not None:
            out[f"semantic_empirical_{norm}"] = policy.s * r.upper(rule)
            if r.certified is not None:
                out[f"semantic_certified_{norm}"] = policy.s * r.certified
            sem = r.certified if bound == "certified" else r.upper(rule)
            final = np.minimum(geo, policy.s * sem)
        elif class_semantic is not None and norm in class_semantic:  # test points: the class's budget caps
            cap = np.asarray(class_semantic[norm], float)[ps.query_labels]
            out[f"semantic_empirical_{norm}"] = np.full(len(geo), np.nan)
            final = np.minimum(geo, cap)
        out[f"eps_input_{norm}"] = final
    return out


def write_per_sample(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write the per-sample file atomically (``meta`` as a JSON string array)."""
    doc = {"schema": SCHEMA, "version": VERSION, **meta}
    write_npz(path, {**arrays, "meta": np.array(json.dumps(doc, sort_keys=True))})
    return Path(path)


@dataclass
class PerSampleBudgets:
    """Per-sample budgets by dataset index; ``eps["input/linf"]`` etc. are (N,) arrays."""

    indices: np.ndarray
    labels: np.ndarray
    eps: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def eps_for(self, indices: Any, space: str = "input", norm: str = "linf", *, as_tensor: bool = True):
        """Per-sample budgets (N, 1, 1, 1) for dataset ``indices`` (all must be covered), float32."""
        key = f"{space}/{norm}"
        if key not in self.eps:
            raise PerSampleError(f"the file has no {key} budgets; it has {', '.join(self.eps)}")
        idx = np.asarray(indices.detach().cpu() if hasattr(indices, "detach") else indices)
        pos = {int(i): j for j, i in enumerate(self.indices)}
        missing = [int(i) for i in idx.ravel() if int(i) not in pos][:5]
        if missing:
            raise PerSampleError(f"dataset indices {missing} have no per-sample budget (the file covers "
                                 f"{len(self.indices)} calibration and test points; training points have none)")
        out = self.eps[key][[pos[int(i)] for i in idx.ravel()]].astype(np.float32).reshape(-1, 1, 1, 1)
        if not as_tensor:
            return out
        import torch

        return torch.from_numpy(out)


def load_per_sample(path: str | os.PathLike[str]) -> PerSampleBudgets:
    """Read and check a per-sample file written by :func:`write_per_sample`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except FileNotFoundError as exc:
        raise PerSampleError(f"per-sample budgets not found: {path}") from exc
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise PerSampleError(f"{path}: not a calib per-sample budget file ({exc})") from exc
    if meta.get("schema") != SCHEMA or meta.get("version") not in READS:
        raise PerSampleError(f"{path}: schema {meta.get('schema')!r} version {meta.get('version')!r}; expected "
                             f"{SCHEMA!r} version {VERSION}")
    n = len(arrays.get("indices", []))
    eps = {}
    for k, v in arrays.items():
        if k.startswith("eps_"):
            _, space, norm = k.split("_", 2)
            if v.shape != (n,) or np.isnan(v).any() or (v < 0).any():
                raise PerSampleError(f"{path}: {k} must hold {n} numbers >= 0")
            eps[f"{space}/{norm}"] = v
    return PerSampleBudgets(arrays["indices"], arrays["labels"], eps, meta)


__all__ = ["PerSampleBudgets", "PerSampleError", "load_per_sample", "per_sample_arrays", "write_per_sample"]
