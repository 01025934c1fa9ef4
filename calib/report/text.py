"""The terminal view of a run's results: rich tables for the epsilon table, statistics, an attack, the
audits and the validation against people. Every string that comes from data (class names, judge
and attack names, set names) is escaped, so rich markup in a class name is shown, never interpreted."""
from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table


def _e(v: Any) -> str:
    return escape(str(v))


def num(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def with_ci(v: Any, ci: Any) -> str:
    return num(v) + ("" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def eps_table(table: Any) -> Table:
    """Per class and budget: eps (coverage), and for final input budgets the semantic bracket
    [certified, empirical]."""
    judge = table.semantic_judge
    title = "epsilon [95% interval] (coverage)" + (
        f"; semantic ({table.semantic_rule} radius) [certified, empirical] of judge {judge} over the points it gets "
        f"right, final uses the {table.semantic_bound} bound" if judge else "")
    columns = [table.budget(k) for k in table.keys]
    heads = []
    for b in columns:
        heads.append(b.key)
        if b.semantic is not None:
            heads.append(f"{b.key} semantic")
    t = Table("class", *map(_e, heads), title=_e(title))
    for c, name in enumerate(table.class_names):
        row = [_e(name)]
        for b in columns:
            iv = "" if b.interval is None else f" [{b.interval[c, 0]:.3g}, {b.interval[c, 1]:.3g}]"
            row.append(f"{b.eps[c]:.4g}{iv} ({b.coverage[c]:.2f})")
            if b.semantic is not None:
                emp = b.semantic.empirical[c]
                lo = "–" if b.semantic.certified is None else f"{b.semantic.certified[c]:.4g}"
                row.append(f"[{lo}, {'none found' if emp is None else f'{emp:.4g}'}]")
        t.add_row(*row)
    return t


def baselines(table: Any) -> list[str]:
    """One line per customary global budget: how often its ball is unsafe."""
    out = []
    for key, base in table.baselines.items():
        for eps, v in base.items():
            out.append(f"global {key} eps={eps}: balls unsafe (same-class image inside or halfway to another class) "
                       f"for {min(v['either']):.0%}-{max(v['either']):.0%} of each class's points")
    return out


def table_check_line(path: Any, table: Any) -> str:
    pol = {k: v for k, v in table.policy.items() if k in ("method", "rule", "q", "s", "pair")}
    if table.semantic_judge is not None:
        pol |= {"judge": table.semantic_judge, "semantic bound": table.semantic_bound}
    return (f"{path}: valid calib eps table v{table.version} for {table.dataset['name']} "
            f"({table.fingerprint[:12]}…), policy {pol}")


def stats_summary(summary: dict[str, Any]) -> Table:
    """Per (space, norm, pair): separation, the median class's median d_same and d_diff, duplicates."""
    t = Table("space/norm/pair", "separation r", "median d_same", "median d_diff", "dup same", "dup cross")
    for key, v in summary["neighbours"].items():
        med_same = sorted(c["d_same_quantiles"][2] for c in v["per_class"].values())
        med_diff = sorted(c["d_diff_quantiles"][2] for c in v["per_class"].values())
        t.add_row(_e(key), f"{v['separation']:.4g}", f"{med_same[len(med_same) // 2]:.4g}",
                  f"{med_diff[len(med_diff) // 2]:.4g}", str(v["same_class_duplicates"]),
                  str(v["cross_class_duplicates"]))
    return t


def models(summary: dict[str, Any]) -> Table:
    """The run's models and their held-out metric."""
    t = Table("model", "held-out metric", "value", "weights sha256")
    for key, m in summary["models"].items():
        metric, label = (("test_accuracy", "accuracy") if "test_accuracy" in m["metrics"] else
                         ("test_precision_at_1", "precision@1"))
        extra = f" (L2 Lipschitz {m['metrics']['lipschitz_l2']:.6f})" if "lipschitz_l2" in m["metrics"] else ""
        if "test_bits_per_pixel" in m["metrics"]:
            extra += f" ({m['metrics']['test_bits_per_pixel']:.4f} bits/pixel)"
        who = f"{key} (yours: {m['external']})" if m.get("external") else key
        t.add_row(_e(who), label, f"{m['metrics'][metric]:.4f}{extra}", m["weights_sha256"][:16])
    return t


def run_attacks(summary: dict[str, Any]) -> Table:
    t = Table("attack", "budget", "success", "valid", title=f"audit (judge: {_e(summary['judge'])})")
    for k, a in summary["attacks"].items():
        t.add_row(_e(k), _e(a["budget"]), f"{a['success_rate']:.3f}", f"{a['valid_rate']:.3f}")
    return t


def attack(summary: dict[str, Any], class_names: list[str]) -> Table:
    """Per class: n, success, mean eps, mean L-inf and L2 of one attack."""
    t = Table("class", "n", "success", "mean eps", "mean Linf", "mean L2")
    for c, v in summary["per_class"].items():
        t.add_row(_e(class_names[int(c)]), str(v["n"]), f"{v['success_rate']:.3f}", f"{v['mean_eps']:.4g}",
                  f"{v['mean_linf']:.4g}", f"{v['mean_l2']:.4g}")
    return t


AUDIT_RATES = ("clean_error", "success", "perceptible", "class_changed", "interpolated", "valid")


def audit(name: str, result: Any, class_names: list[str]) -> Table:
    """Per class and over all: the audit's rates, each over all attacked examples of the row (clean
    errors, f(x) != y, counted apart: they are not successes)."""
    judge = (result.meta.get("judge") or {}).get("name", "?")
    t = Table("class", "n", "clean error", "success", "perceptible", f"class changed ({_e(judge)})", "interpolated",
              "VALID", title=f"{_e(name)}: rates over all n attacked examples",
              caption="success = f(x') != y on a point f gets right (clean errors apart); valid = success, "
                      "not perceptible, not class-changed, not interpolated")
    y = result.arrays["labels"]
    for c, n in enumerate(class_names):
        if (y == c).any():
            r = result.rates(y == c)
            t.add_row(_e(n), str(r["n"]), *(_rate(r[f + "_rate"]) for f in AUDIT_RATES))
    r = result.rates()
    t.add_row("all", str(r["n"]), *(_rate(r[f + "_rate"]) for f in AUDIT_RATES))
    return t


def _rate(v: float) -> str:
    return "–" if v != v else f"{v:.3f}"


def validation_summary(per_judge: dict[str, Any]) -> Table:
    t = Table("judge", "n", "balanced accuracy", "ROC AUC", title="agreement with people on 'the class changed'")
    for name, a in per_judge.items():
        t.add_row(_e(name), str(a["n"]), num(a["balanced_accuracy"]), num(a["auc"]))
    return t


def validation_sets(doc: dict[str, Any]) -> list[str]:
    return [f"[bold]{_e(s)}[/]: {info['n']} images, people relabelled {info['relabelled']} ({info['unclear']} unclear)"
            for s, info in doc["sets"].items()]


def validation(doc: dict[str, Any]) -> Table:
    """Per judge and set (and over all sets): balanced accuracy, AUC, confusion counts, label agreement."""
    t = Table("judge", "set", "n", "balanced acc. [95%]", "ROC AUC [95%]", "TP", "FP", "TN", "FN",
              "label agreement [95%]", title="agreement with people on 'the class changed'")
    for name, j in doc["judges"].items():
        for s, r in [*j["sets"].items(), ("all sets", j["all"])]:
            c = r["confusion"]
            la = r["label_agreement"]
            t.add_row(_e(name), _e(s), str(r["n"]), with_ci(r["balanced_accuracy"], r["balanced_accuracy_ci95"]),
                      with_ci(r["auc"], r["auc_ci95"]), *(str(c[k]) for k in ("tp", "fp", "tn", "fn")),
                      with_ci(la["value"], la["wilson95"]))
    return t


def validation_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The validation document without its ROC curves (the CLI's ``--json``)."""
    return {"judges": {name: {"sets": {s: {k: v for k, v in r.items() if k != "roc"} for s, r in j["sets"].items()},
                              "all": {k: v for k, v in j["all"].items() if k != "roc"},
                              "per_class": j["per_class"]}
                       for name, j in doc["judges"].items()}, "sets": doc["sets"]}


def describe(info: dict[str, Any]) -> list[Any]:
    """A dataset: name, size, shape, fingerprint, and its class counts per part of the split."""
    d, sp = info["dataset"], info["splits"]
    head = (f"[bold]{_e(d['name'])}[/]  {d['num_samples']} images of shape {tuple(d['image_shape'])}, values in "
            f"[0,1]\nfingerprint sha256: {d['fingerprint']}")
    t = Table("class", "all", "train", "calibration", "test")
    parts = ("train", "calibration", "test")
    for name, count in d["classes"].items():
        t.add_row(_e(name), str(count), *(str(sp[p]["classes"].get(name, 0)) for p in parts))
    t.add_row("total", str(d["num_samples"]), *(str(sp[p]["num_samples"]) for p in parts))
    return [head, t]


def trained(what: str, metrics: dict[str, Any], saved: dict[str, Any], path: Any) -> str:
    if what == "classifier":
        score = f"classifier test accuracy {metrics['test_accuracy']:.4f} on {metrics.get('test_n', '?')} held-out images"
    else:
        score = (f"embedding precision@1 {metrics['test_precision_at_1']:.4f}, MAP@R {metrics['test_map_at_r']:.4f} "
                 "on the held-out queries")
    return f"{score}; weights sha256 {saved['weights_sha256'][:16]}… -> {_e(path)}"


def run_summary(summary: dict[str, Any], seed: int) -> list[Any]:
    """What ``calib run`` prints at the end: dataset, models, the table, the audits, validation."""
    from calib.budgets import load_table

    out: list[Any] = [f"[bold]{_e(summary['dataset']['name'])}[/] fingerprint "
                      f"{summary['dataset']['fingerprint'][:16]}…, seed {seed}", models(summary)]
    table = load_table(summary["eps_table"])
    out += [eps_table(table), *baselines(table)]
    if summary["attacks"]:
        out.append(run_attacks(summary))
    if summary.get("validation"):
        out.append(validation_summary(summary["validation"]))
    reused = sum(v["reused"] for v in summary["stages"].values())
    folder = str(summary["eps_table"]).rsplit("/", 1)[0]
    out.append(f"written to {_e(folder)}/ in {summary['seconds']:.1f} s ({reused}/{len(summary['stages'])} stages "
               "cached)" + (f"; report: {_e(summary['report'])}" if summary["report"] else ""))
    return out


def attack_lines(summary: dict[str, Any], path: Any) -> list[str]:
    out = []
    if summary["projection"]:
        p = summary["projection"]
        out.append(f"projection active in {p['active_rate']:.1%} of steps; {p['g_forward_per_candidate']:.2f} extra "
                   f"forward passes of g per sample-step; backward {int(p.get('g_backward', 0))}")
    out.append(f"success rate {summary['success_rate']:.3f} on {summary['n']} images in {summary['seconds']:.1f} s "
               f"-> {_e(path)}")
    return out


def probe(res: Any) -> str:
    import numpy as np

    return (f"class-mixing probe eps={res.eps}: {len(res.index0)} probes; embedding distance to x0 median "
            f"{float(np.median(res.embedding_to_x0)):.3f}, to x1 {float(np.median(res.embedding_to_x1)):.3f}")


def run_list(rows: list[dict[str, Any]]) -> Table:
    """``calib list``: one row per run folder."""
    t = Table("run", "dataset", "seed", "judge", "table", "input budgets (min-max per class)", "finished",
              "recorded", title="calib runs")
    for r in rows:
        if "problem" in r:
            t.add_row(_e(r["path"]), "", "", "", "", f"unreadable: {_e(r['problem'])}", "", "")
            continue
        budgets = "; ".join(f"{k.split('/')[1]} {lo:.3g}-{hi:.3g}" for k, (lo, hi) in (r.get("budgets") or {}).items())
        t.add_row(_e(r["path"]), _e(r["dataset"]), str(r["seed"]), _e(r["judge"]), _e(r.get("table", "–")),
                  budgets or "–", "yes" if r["finished"] else "no", _e(r.get("recorded") or ""))
    return t


def comparison(doc: dict[str, Any]) -> list[Any]:
    """``calib compare``: per budget and class, both runs' eps (coverage) and B/A."""
    a, b = doc["a"], doc["b"]
    head = [f"A = {_e(a['path'])}: {_e(a['method'])}, judge {_e(a['judge'])}, q {a['q']}, s {a['s']}",
            f"B = {_e(b['path'])}: {_e(b['method'])}, judge {_e(b['judge'])}, q {b['q']}, s {b['s']}"]
    t = Table("budget", "class", "A eps (coverage)", "B eps (coverage)", "B / A")
    for r in doc["rows"]:
        t.add_row(_e(r["budget"]), _e(r["class"]), f"{r['a']:.4g} ({r['coverage_a']:.2f})",
                  f"{r['b']:.4g} ({r['coverage_b']:.2f})", "–" if r["ratio"] is None else f"{r['ratio']:.3f}")
    tail = [f"only in {side}: {', '.join(keys)}" for side, keys in (("A", doc["only_a"]), ("B", doc["only_b"])) if keys]
    return [*head, t, *tail]


def experiment(name: str, doc: dict[str, Any]) -> list[Any]:
    """What an experiment found, as ``calib experiment`` prints it (the report has the figures)."""
    if name == "transfer":
        m = doc["models"]
        t = Table("attack", "budget", "n (both right)", "f1 success", "transfer to f2",
                  title=f"transfer: f1 accuracy {m['f1']['test_accuracy']:.3f}, f2 {m['f2']['test_accuracy']:.3f}")
        for k, v in doc["attacks"].items():
            t.add_row(_e(k), _e(v["budget"]), str(v["n_both_correct"]), num(v["f1_success"]), num(v["transfer_rate"]))
        return [t]
    if name == "adversarial-training":
        t = Table("classifier", "clean accuracy", "robust (global eps)", "robust (per-class eps)",
                  title=f"adversarial training ({_e(doc['attack'])}, alpha {doc['alpha']}), {doc['n']} test points")
        for k, v in doc["variants"].items():
            t.add_row(_e(k), num(v["clean_accuracy"]), num(v["robust_accuracy_global"]),
                      num(v["robust_accuracy_per-class"]))
        return [t]
    if name == "robust-embedding":
        norms = doc["semantic_norms"]
        t = Table("embedding", "P@1", *[f"median semantic {n} over classes" for n in norms],
                  "probe: share within budget", title="robust triplet embedding vs plain")
        for k, v in doc["embeddings"].items():
            med = [float(sorted(v[f"semantic_{n}"])[len(v[f"semantic_{n}"]) // 2]) for n in norms]
            t.add_row(_e(k), num(v["metrics"].get("test_precision_at_1")), *(f"{x:.4g}" for x in med),
                      num(v["probe"]["share_within_budget"]))
        return [t]
    if name == "linearity":
        t = Table("inputs n", "clean accuracy", "predicted score change", "measured (clipped)", "FGSM success",
                  title=f"linearity at eps {doc['eps']}")
        for r in doc["rows"]:
            t.add_row(str(r["n"]), num(r["clean_accuracy"]), f"{r['predicted']:.4g}", f"{r['measured_clipped']:.4g}",
                      num(r["fgsm_success"]))
        return [t]
    if name == "units":
        return [f"units: top-{doc['top']} label purity along embedding coordinates {doc['mean_unit_purity']:.3f}, "
                f"along random directions {doc['mean_random_purity']:.3f}, random sets {doc['null_purity_mean']:.3f}"]
    return []
