"""From saved statistics to an epsilon table: geometric budgets for every computed space and norm."""
from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.budgets.geometric import CUSTOMARY, Policy, geometric_budget, global_violations
from calib.budgets.margin import margin_budget
from calib.budgets.table import EpsTable, table_from_budgets
from calib.errors import ConfigError
from calib.io import to_jsonable, versions
from calib.stats import Stats

if TYPE_CHECKING:
    from calib.budgets.semantic import Radii

#: which side of the judge's robustness radius the final budget uses
SEMANTIC_BOUNDS = ("empirical", "certified")


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
        key = f"{space}/{norm}"
        if space == "embedding":
            mb = margin_budget(ps.nn.d_same, ps.nn.d_diff, ps.query_labels, k, policy)
            budgets[key] = {"eps": mb.eps, "coverage": mb.coverage, "n": mb.n, "rule": "margin",
                            "components": {"margin_q": mb.margin_q, "negative_margin_share": mb.negative_share}}
            continue
        b = geometric_budget(ps.nn.d_same, ps.nn.d_diff, ps.query_labels, k, policy)
        budgets[key] = {"eps": b.eps, "coverage": b.coverage, "n": b.n, "rule": "geometric",
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
                  "quantile_method": policy.method, "pair": pair,
                  "safe": {"input": "eps < d_same and eps < d_diff / 2",
                           "embedding": "eps < m = (d_diff_g - d_same_g) / 2 (the 1-NN label is kept)"}}
    return table_from_budgets(dataset=dataset, policy=policy_doc, budgets=budgets, provenance=prov,
                              baselines=baselines)


def per_sample_budgets(stats: Stats, policy: Policy = Policy(), pair: str = "calibration-train"
                       ) -> dict[str, dict[str, np.ndarray]]:
    """Per-sample budgets with the dataset indices they belong to: ``s * min(d_diff/2, d_same)`` in
    input space, ``s * max(m, 0)`` with the 1-NN margin ``m = (d_diff - d_same)/2`` in the embedding."""
    out = {}
    for space, norm, p in sorted(stats.pairs):
        if p == pair:
            ps = stats.pairs[(space, norm, p)]
            k = len(stats.class_names)
            if space == "embedding":
                eps = margin_budget(ps.nn.d_same, ps.nn.d_diff, ps.query_labels, k, policy).per_sample
            else:
                eps = geometric_budget(ps.nn.d_same, ps.nn.d_diff, ps.query_labels, k, policy).per_sample
            out[f"{space}/{norm}"] = {"indices": ps.query_indices, "labels": ps.query_labels, "eps": eps}
    return out


def final_table(geo: EpsTable, stats: Stats, radii: dict[str, Radii], judge: dict[str, Any], *,
                bound: str = "empirical", q: float | None = None, s: float | None = None,
                semantic_info: dict[str, Any] | None = None) -> EpsTable:
    """The table with final input budgets ``min(geometric, semantic)`` for every norm in ``radii``.

    Semantic budgets are the judge's robustness radii (:mod:`calib.budgets.semantic`) of the
    calibration points of the geometric table's statistics pair, per class ``s * Q_q``; the table
    records the bracket ``[certified, empirical]`` (certified only for a judge with a certificate)
    and uses ``bound`` for the final budget. Coverage is measured at the final budget: the share of
    class points whose ball is geometrically safe *and* smaller than their radius under ``bound``.

    Args:
        radii: norm -> :class:`~calib.budgets.semantic.Radii` of the pair's query points, in order.
        judge: the judge's description (:meth:`calib.judges.Judge.describe`), recorded in the table.
        bound: ``empirical`` (attack: an upper, optimistic estimate) or ``certified`` (a guaranteed
            lower one).
    """
    from calib.budgets.geometric import class_share, safe_mask
    from calib.budgets.semantic import semantic_budget

    if bound not in SEMANTIC_BOUNDS:
        raise ConfigError(f"unknown semantic bound {bound!r}; choose {', '.join(SEMANTIC_BOUNDS)}")
    pair = geo.policy["pair"]
    q = geo.policy["q"] if q is None else q
    s = geo.policy["s"] if s is None else s
    method = geo.policy.get("quantile_method", "linear")
    doc = geo.to_dict()
    k = len(geo.class_names)
    for norm, r in radii.items():
        ps = stats.pair("input", norm, pair)
        if len(r.empirical) != len(ps.query_labels):
            raise ConfigError(f"{norm} radii cover {len(r.empirical)} points; the {pair} pair has "
                              f"{len(ps.query_labels)}")
        if bound == "certified" and r.certified is None:
            raise ConfigError(f"judge {judge.get('name')!r} has no certificate; use the empirical semantic bound")
        sem = semantic_budget(r, ps.query_labels, k, q, s, method)
        chosen = sem.certified if bound == "certified" else sem.empirical
        geo_eps = geo.eps("input", norm)
        final = np.minimum(geo_eps, chosen)
        per_point = r.certified if bound == "certified" else r.empirical
        geo_ok = safe_mask(final[ps.query_labels], ps.nn.d_same, ps.nn.d_diff)

        def share(mask: np.ndarray) -> np.ndarray:
            return class_share(mask, ps.query_labels, k)

        b = doc["budgets"][f"input/{norm}"]
        b["components"] = {
            **b.get("components", {}), "geometric": geo_eps.tolist(), "geometric_coverage": list(b["coverage"]),
            "semantic": {
                "judge": judge.get("name"), "bound": bound, "empirical": sem.empirical.tolist(),
                "certified": None if sem.certified is None else sem.certified.tolist(),
                "empirical_coverage": share(final[ps.query_labels] < r.empirical).tolist(),
                "certified_coverage": None if r.certified is None else
                share(final[ps.query_labels] < r.certified).tolist(),
                "clean_errors": share(r.clean_wrong).tolist(),
                "no_change_found": share(~np.isfinite(r.empirical)).tolist()}}
        b["eps"], b["coverage"] = final.tolist(), share(geo_ok & (final[ps.query_labels] < per_point)).tolist()
        b["rule"] = "min(geometric, semantic)"
    doc["policy"] = {**doc["policy"], "method": "final", "final": "min(geometric, semantic)",
                     "semantic": {"judge": judge.get("name"), "judge_description": judge, "bound": bound,
                                  "norms": list(radii), "q": q, "s": s,
                                  "radius": "r(x) = min ||delta|| with judge(x + delta) != y",
                                  "empirical": "per-point bisection of PGD on the judge's margin: an upper bound "
                                               "(optimistic budgets)",
                                  "certified": "margin / Lipschitz constant: a guaranteed lower bound",
                                  **(semantic_info or {})}}
    return EpsTable.from_dict(to_jsonable(doc))
