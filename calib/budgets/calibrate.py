"""From saved statistics to an epsilon table: geometric budgets for every computed space and norm."""
from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.budgets.geometric import CUSTOMARY, Policy, geometric_budget, global_violations
from calib.budgets.intervals import CONFIDENCE, class_intervals, min_interval
from calib.budgets.margin import margin_budget
from calib.budgets.table import EpsTable, table_from_budgets
from calib.errors import ConfigError
from calib.io import to_jsonable, versions
from calib.stats import Stats

if TYPE_CHECKING:
    from calib.budgets.semantic import Radii

#: which side of the judge's radius the final budget uses
SEMANTIC_BOUNDS = ("empirical", "certified")
#: which radius the semantic budget is: how far x moves toward another class's image before the judge sees
#: that class (default), or the judge's worst-case robustness radius
SEMANTIC_RULES = ("invariance", "adversarial")


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
            iv = np.maximum(class_intervals(mb.margin, ps.query_labels, k, policy.q, policy.s), 0.0)
            budgets[key] = {"eps": mb.eps, "coverage": mb.coverage, "n": mb.n, "rule": "margin", "interval": iv,
                            "components": {"margin_q": mb.margin_q, "negative_margin_share": mb.negative_share}}
            continue
        b = geometric_budget(ps.nn.d_same, ps.nn.d_diff, ps.query_labels, k, policy)
        parts = geometric_intervals(ps, k, policy, parts=2)
        budgets[key] = {"eps": b.eps, "coverage": b.coverage, "n": b.n, "rule": "geometric", "interval": parts["eps"],
                        "components": {"half_d_diff_q": b.half_d_diff_q, "d_same_q": b.d_same_q,
                                       "half_d_diff_q_interval": parts["half_d_diff"],
                                       "d_same_q_interval": parts["d_same"]}}
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


def geometric_intervals(ps: Any, k: int, policy: Policy, parts: int = 2,
                        alpha: float = 1 - CONFIDENCE) -> dict[str, np.ndarray]:
    """95 % intervals (K, 2) of the geometric budget and its quantiles, each quantile at level
    ``1 - alpha / parts`` so that a minimum of ``parts`` quantiles (the geometric budget's 2, the final
    budget's 3) holds jointly at ``1 - alpha`` (Bonferroni); the coverage rule's budget is the
    q-quantile of the per-sample budgets, one interval."""
    y, a = ps.query_labels, alpha / parts
    half = class_intervals(ps.nn.d_diff / 2, y, k, policy.q, policy.s, a)
    same = class_intervals(ps.nn.d_same, y, k, policy.q, policy.s, a)
    if policy.rule == "coverage":
        eps = class_intervals(np.minimum(ps.nn.d_diff / 2, ps.nn.d_same), y, k, policy.q, policy.s, a)
    else:
        eps = min_interval(half, same)
    return {"eps": eps, "half_d_diff": half, "d_same": same}


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
                bound: str = "empirical", rule: str = "invariance", q: float | None = None, s: float | None = None,
                semantic_info: dict[str, Any] | None = None) -> EpsTable:
    """The table with final input budgets ``min(geometric, semantic)`` for every norm in ``radii``.

    Semantic budgets come from the judge's radii (:mod:`calib.budgets.semantic`) at the calibration
    points of the geometric table's statistics pair, per class ``s * Q_q`` over the points the judge
    gets right (a point it already gets wrong says nothing about perturbations; its clean error is
    recorded beside the budget). ``rule``: ``invariance`` (default; the invariance radius, how far x
    moves toward an image of another class before the judge sees that class) or ``adversarial`` (the
    judge's worst-case robustness radius, which measures the judge's own weakness). The table records
    the bracket ``[certified, empirical]`` (certified only for a judge with a certificate; it bounds
    both radii from below, since r_adv <= r_inv) and uses ``bound`` for the final budget. Coverage is
    measured at the final budget over *all* points of the class: the share whose ball is
    geometrically safe *and* smaller than their radius under ``bound``. Every per-class value carries
    a 95 % interval (:mod:`calib.budgets.intervals`; the final one jointly over its three quantiles).

    Args:
        radii: norm -> :class:`~calib.budgets.semantic.Radii` of the pair's query points, in order.
        judge: the judge's description (:meth:`calib.judges.Judge.describe`), recorded in the table.
        bound: ``empirical`` (an upper, optimistic estimate) or ``certified`` (a guaranteed lower one).
    """
    from calib.budgets.geometric import class_share, safe_mask
    from calib.budgets.semantic import semantic_budget

    if bound not in SEMANTIC_BOUNDS:
        raise ConfigError(f"unknown semantic bound {bound!r}; choose {', '.join(SEMANTIC_BOUNDS)}")
    if rule not in SEMANTIC_RULES:
        raise ConfigError(f"unknown semantic rule {rule!r}; choose {', '.join(SEMANTIC_RULES)}")
    pair = geo.policy["pair"]
    q = geo.policy["q"] if q is None else q
    s = geo.policy["s"] if s is None else s
    policy = Policy(q=q, s=s, method=geo.policy.get("quantile_method", "linear"), rule=geo.policy.get("rule", "quantile"))
    doc = geo.to_dict()
    k = len(geo.class_names)
    for norm, r in radii.items():
        ps = stats.pair("input", norm, pair)
        if len(r.empirical) != len(ps.query_labels):
            raise ConfigError(f"{norm} radii cover {len(r.empirical)} points; the {pair} pair has "
                              f"{len(ps.query_labels)}")
        if bound == "certified" and r.certified is None:
            raise ConfigError(f"judge {judge.get('name')!r} has no certificate; use the empirical semantic bound")
        sem = semantic_budget(r, ps.query_labels, k, q, s, policy.method, rule=rule, alpha=(1 - CONFIDENCE) / 3)
        chosen = sem.certified if bound == "certified" else sem.empirical
        chosen_iv = sem.certified_interval if bound == "certified" else sem.empirical_interval
        geo_eps = geo.eps("input", norm)
        final = np.minimum(geo_eps, chosen)
        upper = r.upper(rule)
        per_point = r.certified if bound == "certified" else upper
        geo_ok = safe_mask(final[ps.query_labels], ps.nn.d_same, ps.nn.d_diff)

        def share(mask: np.ndarray) -> np.ndarray:
            return class_share(mask, ps.query_labels, k)

        b = doc["budgets"][f"input/{norm}"]
        joint = geometric_intervals(ps, k, policy, parts=3)
        b["components"] = {
            **b.get("components", {}), "geometric": geo_eps.tolist(), "geometric_coverage": list(b["coverage"]),
            "geometric_interval": list(b["interval"]),
            "semantic": {
                "judge": judge.get("name"), "bound": bound, "rule": rule, "empirical": sem.empirical.tolist(),
                "certified": None if sem.certified is None else sem.certified.tolist(),
                "empirical_interval": sem.empirical_interval, "certified_interval": sem.certified_interval,
                "adversarial": semantic_budget(r, ps.query_labels, k, q, s, policy.method).empirical.tolist()
                if rule == "invariance" else None,
                "empirical_coverage": share(final[ps.query_labels] < upper).tolist(),
                "certified_coverage": None if r.certified is None else
                share(final[ps.query_labels] < r.certified).tolist(),
                "clean_errors": sem.clean_error.tolist(), "judge_correct": sem.n_correct.tolist(),
                "no_change_found": share(~np.isfinite(upper) & ~r.clean_wrong).tolist()}}
        b["eps"], b["coverage"] = final.tolist(), share(geo_ok & (final[ps.query_labels] < per_point)).tolist()
        b["interval"] = min_interval(joint["eps"], chosen_iv)
        b["rule"] = "min(geometric, semantic)"
    radius = {"invariance": "r_inv(x) = the smallest eps at which the judge relabels x moved toward the nearest "
                            "training image of some other class (projected onto the eps ball and the box)",
              "adversarial": "r_adv(x) = min ||delta|| with judge(x + delta) != y (the judge's robustness)"}[rule]
    doc["policy"] = {**doc["policy"], "method": "final", "final": "min(geometric, semantic)",
                     "semantic": {"judge": judge.get("name"), "judge_description": judge, "bound": bound, "rule": rule,
                                  "norms": list(radii), "q": q, "s": s, "radius": radius,
                                  "quantiles_over": "the calibration points the judge gets right",
                                  "empirical": "a witnessed radius: an upper bound (optimistic budgets)",
                                  "certified": "margin / Lipschitz constant: a guaranteed lower bound of both radii",
                                  "interval": f"{CONFIDENCE:.0%} distribution-free, from order statistics",
                                  **(semantic_info or {})}}
    return EpsTable.from_dict(to_jsonable(doc))
