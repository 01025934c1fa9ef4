"""From saved statistics to an epsilon table: geometric budgets for every computed space and norm."""
from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np

from calib.budgets.geometric import CUSTOMARY, Policy, geometric_budget, global_violations
from calib.budgets.table import EpsTable, table_from_budgets
from calib.errors import ConfigError
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
    policy_doc = {"method": "geometric", "rule": policy.rule, "q": policy.q, "s": policy.s,
                  "quantile_method": policy.method,
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


def final_table(geo: EpsTable, stats: Stats, embedding, images: np.ndarray, norms: tuple[str, ...] = ("linf", "l2"),
                *, q: float | None = None, iters: int = 8, steps: int = 20, restarts: int = 1, seed: int = 0,
                device: str = "cpu", embedding_sha256: str | None = None, show_progress: bool = False) -> EpsTable:
    """The table with final input budgets ``min(geometric, semantic)`` for ``norms``.

    Semantic budgets come from :func:`calib.budgets.semantic.semantic_budget` on the calibration
    points of the geometric table's statistics pair, with the table's ``embedding/l2`` budgets.
    The coverage recorded for a final budget is measured at that budget: the share of class points
    whose ball is geometrically safe *and* whose measured worst-case embedding shift stays within
    the class's embedding budget. Geometric and semantic values and coverages are kept as components.

    Args:
        images: the whole dataset's images (N, C, H, W); the pair's query indices select the points.
    """
    from calib.budgets.geometric import safe_mask
    from calib.budgets.semantic import semantic_budget

    if "embedding/l2" not in geo.budgets:
        raise ConfigError("semantic budgets need the table's embedding/l2 budgets (statistics with an embedding)")
    pair = geo.policy["pair"]
    q = geo.policy["q"] if q is None else q
    doc = geo.to_dict()
    k = len(geo.class_names)
    eps_emb = geo.eps("embedding", "l2")
    semantic_meta = {}
    for norm in norms:
        ps = stats.pair("input", norm, pair)
        geo_eps = geo.eps("input", norm)
        sem = semantic_budget(embedding, images[ps.query_indices], ps.query_labels, eps_emb, geo_eps, norm, q,
                              iters=iters, steps=steps, restarts=restarts, seed=seed, device=device,
                              show_progress=show_progress)
        final = np.minimum(geo_eps, sem.eps)
        geo_ok = safe_mask(final[ps.query_labels], ps.nn.d_same, ps.nn.d_diff)
        both = geo_ok & sem.per_sample_ok
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = np.bincount(ps.query_labels, weights=both, minlength=k) / sem.n
        b = doc["budgets"][f"input/{norm}"]
        b["components"] = {**b.get("components", {}), "geometric": geo_eps.tolist(), "semantic": sem.eps.tolist(),
                           "semantic_censored": sem.censored.tolist(), "geometric_coverage": list(b["coverage"]),
                           "semantic_coverage": sem.coverage.tolist()}
        b["eps"], b["coverage"] = final.tolist(), cov.tolist()
        semantic_meta[norm] = {"bisection_iters": iters, "pgd_steps": steps, "restarts": restarts, "seed": seed}
    doc["policy"] = {**doc["policy"], "method": "final", "final": "min(geometric, semantic)",
                     "semantic": {"norms": list(norms), "q": q, "embedding_budget": "embedding/l2",
                                  "worst_case": "embedding-shift PGD (a lower bound: semantic budgets are optimistic)",
                                  **semantic_meta}}
    if embedding_sha256:
        doc["provenance"] = {**doc["provenance"], "embedding_sha256": embedding_sha256}
    return EpsTable.from_dict(doc)
