"""From saved statistics to an epsilon table: geometric budgets for every computed space and norm."""
from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np

from calib.budgets.geometric import CUSTOMARY, Policy, geometric_budget, global_violations
from calib.budgets.table import EpsTable, table_from_budgets
from calib.models.artefact import versions
from calib.stats import Stats


def geometric_table(stats: Stats, policy: Policy = Policy(), pair: str = "calibration-train",
                    customary: dict[str, tuple[float, ...]] = CUSTOMARY,
                    provenance: dict[str, Any] | None = None) -> EpsTable:
    """The geometric epsilon table of every (space, norm) in ``stats`` for one query/reference pair.

    ``pair`` defaults to calibration points against the training set: the calibration part was
    not used to train the embedding, so its embedding distances are not shrunk by training.
    Baselines record, for each customary global epsilon of a norm, the per-class share of balls
    that contain a same-class image or reach halfway to another class.
    """
    names = stats.class_names
    k = len(names)
    budgets: dict[str, Any] = {}
    baselines: dict[str, Any] = {}
    for space, norm, p in sorted(stats.pairs):
        if p != pair:
            continue
        ps = stats.pairs[(space, norm, p)]
        b = geometric_budget(ps.nn.d_same, ps.nn.d_diff, ps.query_labels, k, policy)
        key = f"{space}/{norm}"
        budgets[key] = {"eps": b.eps, "coverage": b.coverage, "n": b.n,
                        "components": {"half_d_diff_q": b.half_d_diff_q, "d_same_q": b.d_same_q}}
        if space == "input":
            baselines[key] = {
                repr(float(e)): {**{f: v for f, v in global_violations(e, ps.nn.d_same, ps.nn.d_diff,
                                                                    ps.query_labels, k).items()},
                                 "per_class_eps_either": 1.0 - b.coverage}
                for e in customary.get(norm, ())}
    if not budgets:
        stats.pair("input", "l2", pair)  # raises the "no statistics for ..." error with the list
    meta = stats.meta
    prov = {"versions": versions(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "split": meta.get("split"), "stats_config": meta.get("config"),
            "embedding_sha256": meta.get("embedding_sha256"), "classifier_sha256": meta.get("classifier_sha256"),
            "seed": (meta.get("split") or {}).get("seed"), **(provenance or {})}
    dataset = {"name": meta["dataset"]["name"], "fingerprint": meta["dataset"]["fingerprint"],
               "class_names": list(names), "image_shape": meta["dataset"]["image_shape"], "value_range": [0, 1]}
    policy_doc = {"method": "geometric", "q": policy.q, "s": policy.s, "quantile_method": policy.method,
                  "pair": pair, "safe": "eps < d_same and eps < d_diff / 2"}
    return table_from_budgets(dataset=dataset, policy=policy_doc, budgets=budgets, provenance=prov,
                              baselines=baselines)


def per_sample_budgets(stats: Stats, policy: Policy = Policy(), pair: str = "calibration-train"
                       ) -> dict[str, dict[str, np.ndarray]]:
    """Per-sample budgets ``s * min(d_diff/2, d_same)`` with the dataset indices they belong to."""
    out = {}
    for space, norm, p in sorted(stats.pairs):
        if p == pair:
            ps = stats.pairs[(space, norm, p)]
            b = geometric_budget(ps.nn.d_same, ps.nn.d_diff, ps.query_labels, len(stats.class_names), policy)
            out[f"{space}/{norm}"] = {"indices": ps.query_indices, "labels": ps.query_labels, "eps": b.per_sample}
    return out
