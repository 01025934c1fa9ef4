"""The report's sections, one function each: ``section(report, page)`` adds one ``<section>`` to the
page from what :class:`Report` read from the run folder. :func:`calib.report.build.write_report`
only composes them, in the order of :data:`SECTIONS`."""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from calib.report import figures as F
from calib.report.figures import NORM_LABEL, esc
from calib.report.page import Page, html_table, load_npz
from calib.runfolder import artefacts as A

if TYPE_CHECKING:
    from calib.runfolder import RunFolder


@dataclass
class Report:
    """What every section reads: the run folder, its statistics and table, the class names, the stage
    manifests, the statistics pair of the table (by ``space/norm``), the audits (in headline order),
    the experiments with a section, and the report's options."""

    run: RunFolder
    stats: Any
    table: Any
    names: list[str]
    manifests: dict[str, dict[str, Any]]
    pairs: dict[str, Any]
    audits: dict[str, Any]
    experiments: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]
    gallery_per_class: int = 2

    @classmethod
    def read(cls, run: RunFolder, gallery_per_class: int = 2) -> "Report":
        from calib.audit import AuditResult
        from calib.report.experiments import SECTIONS as EXP_SECTIONS, load_experiments

        stats, table = run.stats(), run.table()
        pairs = {f"{s}/{n}": ps for (s, n, p), ps in sorted(stats.pairs.items(), key=lambda kv: _space_order(kv[0][:2]))
                 if p == table.pair}
        audits = {name: AuditResult.load(run.file(A.AUDIT), name) for name in run.names(A.AUDIT)}
        order = {"global": 0, "per-class": 1, "per-class invariance": 2, "embedding": 3}
        audits = dict(sorted(audits.items(), key=lambda kv: (kv[1].meta.get("norm", ""),
                                                            order.get(kv[1].meta.get("budget"), 9))))
        experiments = {k: v for k, v in load_experiments(run).items() if k in EXP_SECTIONS}
        return cls(run, stats, table, list(stats.class_names), run.manifests(), pairs, audits, experiments,
                   gallery_per_class)

    @property
    def judge(self) -> dict[str, Any]:
        """The audits' judge (its description), or ``{}`` without audits."""
        return next((a.meta.get("judge") for a in self.audits.values() if a.meta.get("judge")), None) or {}


def _space_order(key: tuple[str, str]) -> int:
    """Input L-inf first (the customary threat model), then L2, L1, then the embedding."""
    order = [("input", "linf"), ("input", "l2"), ("input", "l1"), ("embedding", "l2")]
    return order.index(tuple(key)) if tuple(key) in order else len(order)


# ---- summary ---------------------------------------------------------------------------------------
MODELS = (("classifier", "classifier f"), ("embedding", "embedding g"),
          ("embedding2", "independent embedding g2 (judge knn2)"),
          ("robust-embedding", "robust triplet embedding (judge robust)"),
          ("lipschitz-embedding", "certified-Lipschitz embedding (judge lipschitz)"),
          ("abs", "class VAEs, analysis by synthesis (judge abs)"))


def summary_section(r: Report, page: Page) -> None:
    from calib.io import versions

    page.add('<section id="summary"><h2>Run summary</h2>')
    meta_ds = r.stats.meta["dataset"]
    split = r.stats.meta.get("split", {})
    vers = r.stats.meta.get("versions") or versions()
    rows = [["dataset", meta_ds["name"]], ["fingerprint (sha256)", meta_ds["fingerprint"]],
            ["samples", meta_ds["num_samples"]], ["image shape", " × ".join(map(str, meta_ds["image_shape"]))],
            ["classes", ", ".join(r.names)], ["seed", split.get("seed")],
            ["split fractions (train, calibration, test)", ", ".join(map(str, split.get("fractions", [])))],
            ["budget policy", json.dumps({k: v for k, v in r.table.policy.items() if k != "semantic"}, sort_keys=True)],
            *[[f"version: {k}", v] for k, v in sorted(vers.items())]]
    page.add(html_table(["", "value"], rows, sortable=False, left=2))
    mrows = []
    for stem, what in MODELS:
        m = r.manifests.get(stem)
        if not m:
            continue
        info = m.get("info", {})
        met = info.get("metrics", {})
        if stem == "classifier" and info.get("external"):
            what = f"classifier f: yours, {info['external']} (not trained by calib)"
        score = (f"accuracy {met['test_accuracy']:.4f}" if "test_accuracy" in met else
                 f"P@1 {met.get('test_precision_at_1', float('nan')):.4f}, "
                 f"MAP@R {met.get('test_map_at_r', float('nan')):.4f}")
        if "test_bits_per_pixel" in met:
            score += f", own-class ELBO {met['test_bits_per_pixel']:.4f} bits per pixel"
        if "lipschitz_l2" in met:
            score += f", L2 Lipschitz constant {met['lipschitz_l2']:.6f}"
        mrows.append([what, score, info.get("weights_sha256", "")[:16], m.get("seconds")])
    page.add("<h3>Models (held-out test part)</h3>" + html_table(["model", "metric", "weights sha256", "seconds"],
                                                                 mrows, sortable=False, left=3))
    stages = {k: m for k, m in r.manifests.items() if k != "report"}
    trows = [[k, m.get("seconds"), m.get("finished", "")] for k, m in stages.items()]
    total = sum(float(m.get("seconds") or 0) for m in stages.values())
    page.add(f"<h3>Time taken (compute seconds per stage; total {total:.1f} s)</h3>"
             + html_table(["stage", "seconds", "finished"], trows, left=1))
    page.add("</section>")


# ---- headline --------------------------------------------------------------------------------------
def headline_section(r: Report, page: Page) -> None:
    judge_desc = r.judge
    judge_name = judge_desc.get("name", "?")
    page.add('<section id="headline"><h2>Headline: how many of these adversarial examples are fair?</h2>')
    page.add(f'<p class="note">Judge of "the class changed": <b>{esc(judge_name)}</b> '
             f'({esc(judge_desc.get("rule", ""))}). A <b>valid</b> adversarial example is successful (f(x′) ≠ y), '
             'not perceptible (SSIM ≥ threshold), not class-changed (the judge still sees y) and not interpolated '
             '(x′ is not closer to another training image of its class than to x). Global ε is the customary '
             'budget; per-class ε comes from the ε table; embedding PGD projects onto the per-class embedding ball '
             '(with the global ε as input cap). Per attack and class: the success rate, then, among the successful '
             'examples, the shares the judge calls class-preserving, that are perceptible, interpolated, and '
             'valid. A point f already gets wrong on the clean image is a clean error, counted apart: it is not a '
             'success. Rates without "| success" are over all attacked examples.</p>')
    if not r.audits:
        page.add('<p class="note">No attacks were run (attack stage turned off).</p></section>')
        return
    first = next(iter(r.audits.values()))
    cfg = first.meta.get("config", {})
    page.add(f'<p class="note">Audit settings: SSIM threshold {esc(ssim_thresholds(first, r.names, cfg))}, '
             f'pixel tolerance {esc(round(float(cfg.get("tol", 0)), 5))}, background detector in verdict: '
             f'{esc(cfg.get("detector_in_verdict"))}; reference set {esc(first.meta.get("reference_size"))} '
             f'training images ({esc(first.meta.get("reference_misclassified"))} misclassified by f).</p>')
    page.figure(F.headline_breakdown(r.audits, r.names, judge_name), "headline")
    hrows = []
    for name, a in r.audits.items():
        x = a.rates()
        hrows.append([name, a.meta.get("budget"), eps_description(a), (a.meta.get("judge") or {}).get("name"), x["n"],
                      x["clean_error_rate"], x["success_rate"], x["class_preserving_among_successes"], x["perceptible_among_successes"],
                      x["interpolated_among_successes"], x["valid_among_successes"], x["valid_rate"],
                      x["ball_has_wrong_rate"], x["mean_ssim"]])
    page.add("<ul class=\"note\">" + "".join(_reading(k, a.rates()) for k, a in r.audits.items()) + "</ul>")
    page.add(html_table(["attack", "budget", "ε", "judge", "n", "clean error", "success", "class-preserving | success",
                         "perceptible | success", "interpolated | success", "VALID | success", "VALID (all)",
                         "ball has misclassified same-class", "mean SSIM"], hrows, left=4))
    page.add("</section>")


def ssim_thresholds(a: Any, names: list[str], cfg: dict[str, Any]) -> str:
    """The audit's SSIM threshold per class and its source, in words: one value when every class has the
    same one from the same source, else each class's ("0: 0.962 (people, 28 pairs); ...")."""
    t = a.meta.get("ssim_thresholds")
    if not t:  # an audit saved before thresholds were recorded
        return f"{cfg.get('ssim_min')} (uncalibrated)"
    pairs = list(zip(t["values"], t["sources"]))
    if len(set(pairs)) == 1:
        return f"{pairs[0][0]:.4g} ({pairs[0][1]})"
    return "per class: " + "; ".join(f"{n}: {v:.4g} ({src})" for n, (v, src) in zip(names, pairs))


def _reading(name: str, r: dict[str, Any]) -> str:
    """One sentence per attack saying what its audit numbers mean."""
    n, succ = r["n"], r["success_rate"]
    if not succ:
        return f"<li><b>{esc(name)}</b>: no successful example among {n}.</li>"
    return (f"<li><b>{esc(name)}</b>: {succ:.1%} of {n} successful; of all examples {r['perceptible_rate']:.1%} are "
            f"perceptible (mean SSIM {r['mean_ssim']:.2f}), {r['class_changed_rate']:.1%} change class by the "
            f"judge's verdict, {r['interpolated_rate']:.1%} interpolate toward another same-class image; "
            f"<b>{r['valid_rate']:.1%} are valid</b> ({r['valid_among_successes']:.1%} of the successes).</li>")


def eps_description(a: Any) -> str:
    """The budget an audited attack ran under, in words."""
    spec = a.meta.get("spec", {})
    norm = NORM_LABEL.get(f"input/{spec.get('norm')}", spec.get("norm"))
    if a.meta.get("budget") == "global":
        return f"{norm} {spec.get('eps')}"
    if a.meta.get("budget") == "embedding":
        return f"embedding ball per class, cap {norm} {spec.get('cap')}"
    if a.meta.get("budget") == "imported":
        return f"imported ({norm})"
    if a.meta.get("budget") == "per-class invariance":
        return f"{norm} per class (table), toward the least-ink image of another class"
    return f"{norm} per class (table)"


# ---- distances ---------------------------------------------------------------------------------------
def heatmaps_section(r: Report, page: Page) -> None:
    page.add('<section id="heatmaps"><h2>Class × class mean distance</h2><p class="note">Mean distance between '
             'samples of the row class and the column class (diagonal without self-pairs); sampled mode uses '
             f'{esc(r.stats.meta.get("config", {}).get("n_per_class"))} points per class (seeded), exact mode all '
             'points. Switch the space/norm with the buttons.</p>')
    page.figure(F.class_pair_heatmaps(r.stats.matrices, r.names), "class-pair-heatmaps")
    page.add("</section>")


def distributions_section(r: Report, page: Page) -> None:
    page.add(f'<section id="distributions"><h2>Distances to the nearest same-class and other-class image</h2>'
             f'<p class="note">Pair {esc(r.table.pair)}: each calibration point against the training set. A ball of '
             'radius ε is safe when ε &lt; d_same (no other same-class image inside) and ε &lt; d_diff/2 (does not '
             'reach halfway to another class). Diamonds: the table ε; dashes: the geometric ε before the semantic '
             'cap.</p>')
    page.figure(F.distance_distributions(r.pairs, r.table, r.names), "distance-distributions")
    page.add("</section>")


def coverage_section(r: Report, page: Page) -> None:
    page.add('<section id="coverage"><h2>Coverage vs ε (the calibration picture)</h2><p class="note">Share of '
             'class points whose ball of radius ε is safe. Dashed lines: the customary global ε; diamonds: '
             'the per-class table ε.</p>')
    page.figure(F.coverage_curves(r.pairs, r.table, r.names), "coverage-curves")
    page.add(_baselines_html(r.table, r.names))
    page.add("</section>")


def _baselines_html(table: Any, names: list[str]) -> str:
    parts = []
    for key, per_eps in table.baselines.items():
        for e, v in per_eps.items():
            either = v.get("either")
            if either is None:
                continue
            parts.append([f"{NORM_LABEL.get(key, key)} = {float(e):g}", *[float(x) for x in either]])
    if not parts:
        return ""
    return ("<h3>How unsafe the customary global budgets are</h3><p class=\"note\">Share of calibration points "
            "whose global ball contains a same-class image or reaches halfway to another class.</p>"
            + html_table(["global ε"] + names, parts))


# ---- the epsilon table ---------------------------------------------------------------------------------
def eps_table_section(r: Report, page: Page) -> None:
    table = r.table
    href = "data:application/json;base64," + base64.b64encode(r.run.file(A.EPS_TABLE).read_bytes()).decode()
    page.add('<section id="eps-table"><h2>ε table</h2>'
             f'<p class="note">Policy {esc(table.method)}, q = {esc(table.q)}, s = {esc(table.s)}, rule '
             f'{esc(table.policy.get("rule"))}. <a download="{A.EPS_TABLE}" href="{href}">Download {A.EPS_TABLE}</a> '
             f'(also beside this report; per-sample budgets in {A.PER_SAMPLE}). Final input budget = min(geometric, '
             f'semantic). The semantic budget is the robustness radius of the judge '
             f'<b>{esc(table.semantic_judge or "–")}</b>, per class the q-quantile over calibration points, bracketed '
             'by an attack (empirical: an <i>upper</i>, optimistic estimate) and, for a certified judge, a '
             'certificate (a guaranteed <i>lower</i> bound); the final budget uses the '
             f'<b>{esc(table.semantic_bound or "–")}</b> bound. The embedding budget is the 1-NN margin '
             's·Q_q{(d_diff_g − d_same_g)/2}. Input panels use log axes so that budgets of one grey level and of '
             'half the range are both visible; a budget of 0 has no bar there (see the table below).</p>')
    page.figure(F.eps_table_chart(table), "eps-table-chart")
    columns = [table.budget(k) for k in table.keys]
    rows = [[n, *[v for b in columns for v in (float(b.eps[c]), float(b.coverage[c]))]] for c, n in enumerate(r.names)]
    header = ["class"] + [h for b in columns for h in (f"ε {NORM_LABEL.get(b.key, b.key)}",
                                                        f"coverage {NORM_LABEL.get(b.key, b.key)}")]
    page.add(html_table(header, rows))
    page.add("</section>")


# ---- judges ------------------------------------------------------------------------------------------
def _targets_note(curves: dict) -> str:
    """How the invariance targets were chosen, from a relabel-curve document."""
    t = next(iter(curves.values())).get("targets") or {}
    if not t.get("aligned"):
        return "the nearest training image of each other class, unaligned"
    g = t.get("grid") or {}
    rot, sh = g.get("rotations") or [0], g.get("shifts") or [0]
    return (f"the nearest training image of each other class to any of {t.get('transforms')} rotations "
            f"({min(rot):g}° to {max(rot):g}°) and shifts ({min(sh):g} to {max(sh):g} px) of the point, moved "
            f"into the point's pose ({100 * float(t.get('aligned_share', 0)):.0f} % of targets moved)")


def semantic_section(r: Report, page: Page) -> None:
    """Per measured judge and norm: per-class budgets from the invariance radius and the bracket
    [certified, adversarial], the relabel curves against people's published rates, the radii's
    distributions, and how each was measured."""
    from calib.budgets.semantic import class_quantile, load_radii
    from calib.io import read_json

    judges = r.run.names(A.SEMANTIC)
    if not judges:
        page.add('<section id="semantic"><h2>Judges and semantic radii</h2><p class="note">No semantic budgets were '
                 "computed in this run.</p></section>")
        return
    q, s = r.table.q, r.table.s
    page.add('<section id="semantic"><h2>Judges and semantic radii</h2><p class="note">Two radii per calibration '
             'point, both upper bounds witnessed by an image the judge was asked about again. <b>Invariance</b> '
             '(the default semantic budget): how far x moves toward the nearest training image of another class '
             '(projected onto the ε ball and the box) before the judge sees that class. <b>Adversarial</b>: the '
             'smallest change of any kind that changes the judge (PGD with bisection), a property of the judge '
             '(a plain triplet net is moved by imperceptible noise); an invariance witness closer than the '
             'attack\'s best replaces it. Certified: margin / Lipschitz constant, a guaranteed lower bound of '
             f'both. Per class, s · Q_q with q = {q:g}, s = {s:g}, over the points the judge gets right; '
             '"none found" = no change found for more than q of them.</p>')
    boxes: dict[str, dict[str, Any]] = {}
    cols: list[str] = []
    per_class: list[list[Any]] = [[n] for n in r.names]
    runs: list[list[Any]] = []
    curves: dict[str, dict[str, Any]] = {}
    for name in judges:
        radii, doc, _, labels = load_radii(r.run.file(A.SEMANTIC), name)
        judge = doc.get("judge", {})
        boxes[name] = {}
        for norm, rad in radii.items():
            right = ~rad.clean_wrong
            emp = class_quantile(rad.empirical, labels, len(r.names), q, s, mask=right)
            cert = None if rad.certified is None else class_quantile(rad.certified, labels, len(r.names), q, s,
                                                                     mask=right)
            inv = None if rad.invariance is None else class_quantile(rad.invariance, labels, len(r.names), q, s,
                                                                     mask=right)
            boxes[name][norm] = {"labels": labels, "empirical": rad.empirical, "certified": rad.certified,
                                 "invariance": rad.invariance, "clean_wrong": rad.clean_wrong}
            label = NORM_LABEL.get("input/" + norm, norm)
            cols += [f"{name} {label} invariance", f"{name} {label} [certified, adversarial]"]
            for c in range(len(r.names)):
                lo = "–" if cert is None else f"{cert[c]:.4g}"
                hi = f"{emp[c]:.4g}" if np.isfinite(emp[c]) else "none found"
                iv = "–" if inv is None else (f"{inv[c]:.4g}" if np.isfinite(inv[c]) else "none found")
                per_class[c] += [iv, f"[{lo}, {hi}]"]
            info = rad.info
            runs.append([name, judge.get("kind", ""), label, "yes" if rad.certified is not None else "no",
                         int(info.get("found", 0)), int(info.get("not_found", 0)), int(info.get("clean_wrong", 0)),
                         int(info.get("invariance_tightened", 0)), int(rad.checked), float(info.get("seconds", 0.0)),
                         float((info.get("invariance") or {}).get("seconds", 0.0))])
            if name == r.table.semantic_judge and r.run.exists(A.relabel(name, norm)):
                curves[norm] = read_json(r.run.file(A.relabel(name, norm)), ValueError, "relabel curve")
    page.add(html_table(["class", *cols], per_class, sortable=False))
    if curves:
        page.add(f"<h3>Relabel curves of judge {esc(r.table.semantic_judge)}</h3>"
                 '<p class="note">The share of judge-correct calibration points whose invariance example at ε the '
                 'judge relabels, with one target per point chosen without asking the judge (the other-class target '
                 'whose path removes the least ink, Σ max(x − x_ε, 0), as Tramèr et al. 2020 chose among their '
                 'hand-made target classes): calib\'s prediction of how often people would relabel such images. '
                 'Stars: the share people relabelled on Tramèr et al.\'s automated L∞ MNIST examples (21 % at 0.3, '
                 '37 % at 0.4; their targets came from 60,000 training images and a per-class map, so this is a '
                 'comparison of kind, not a replication). Dotted: any target, what the budget uses. '
                 f'Targets: {esc(_targets_note(curves))}.</p>')
        page.figure(F.relabel_curves(curves, r.names), "relabel-curves")
    page.add("<h3>How each radius was measured</h3>" + html_table(
        ["judge", "kind", "norm", "certified", "adversarial witnesses", "no change found", "judge wrong on clean",
         "invariance witness tighter than the attack", "witnesses checked against the certificate",
         "adversarial seconds", "invariance seconds"], runs, left=3))
    page.figure(F.radii_boxes(boxes, r.names), "semantic-radii")
    page.add("</section>")


def validation_section(r: Report, page: Page, per_judge: int = 12) -> None:
    """Every judge against people (``calib validate`` / ``calib run --human``): agreement tables, ROC
    curves, and for the run's judge a gallery of the images where it and people disagree."""
    from calib.human.validate import load_validation

    loaded = load_validation(r.run)
    page.add('<section id="validation"><h2>Judges vs people</h2>')
    if loaded is None:
        page.add('<p class="note">No human-labelled sets were given (<code>calib run --human PATH</code> or '
                 '<code>calib validate RUN --human PATH</code>).</p></section>')
        return
    doc, arrays = loaded
    page.add('<p class="note">People say "the class changed" when the label they gave differs from the source '
             'image\'s label; unclear answers are left out. Balanced accuracy of each judge\'s verdict and ROC AUC of '
             'its continuous score, with 95 % intervals (Wilson for proportions, seeded bootstrap for balanced '
             'accuracy and AUC).</p>')
    srows = [[s, i["n"], i["relabelled"], i["unclear"], i.get("norm"), i.get("eps"), i.get("layout")]
             for s, i in doc["sets"].items()]
    page.add(html_table(["set", "images", "relabelled by people", "unclear", "norm", "ε", "layout"], srows, left=1))
    rows = []
    for name, j in doc["judges"].items():
        for s, x in [*j["sets"].items(), ("all sets", j["all"])]:
            c = x["confusion"]
            rows.append([name, s, x["n"], x["balanced_accuracy"], _ci(x["balanced_accuracy_ci95"]), x["auc"],
                         _ci(x["auc_ci95"]), c["tp"], c["fp"], c["tn"], c["fn"], x["label_agreement"]["value"],
                         _ci(x["label_agreement"]["wilson95"])])
    page.add(html_table(["judge", "set", "n", "balanced accuracy", "95 %", "ROC AUC", "95 %", "TP", "FP", "TN", "FN",
                         "label agreement", "95 %"], rows, left=2))
    page.figure(F.roc_curves(doc), "validation-roc")
    judge = r.run.judge_config().name
    items = _disagreements(doc, arrays, judge, per_judge) if judge in doc["judges"] else []
    if items:
        page.add(f"<h3>Where judge {esc(judge)} and people disagree (first {len(items)})</h3>"
                 '<p class="note">Each pair: the perturbed image people labelled, then its clean source image.</p>')
        page.figure(F.disagreement_gallery(items, r.names), "validation-disagreements")
    page.add("</section>")


def _disagreements(doc: dict[str, Any], arrays: dict[str, np.ndarray], judge: str, most: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for s, info in doc["sets"].items():
        key = info["key"]
        y, h = arrays[f"{key}__source_label"], arrays[f"{key}__human_label"]
        ch, lab = arrays[f"{key}__{judge}__changed"], arrays[f"{key}__{judge}__label"]
        wrong = np.flatnonzero((h >= 0) & (ch != (h != y)))
        for i in wrong[:most - len(items)]:
            x = arrays[f"{key}__x"][i]
            x0 = arrays[f"{key}__x0"][i] if f"{key}__x0" in arrays else np.zeros_like(x)  # (older results)
            items.append({"set": s, "index": int(arrays[f"{key}__source_index"][i]), "x": x, "x0": x0,
                          "human": int(h[i]), "judge": int(lab[i]), "source": int(y[i])})
    return items


def _ci(ci: Any) -> str:
    return "–" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


# ---- pictures ----------------------------------------------------------------------------------------
def embedding_section(r: Report, page: Page) -> None:
    proj = load_npz(r.run.file(A.PROJECTION))
    page.add('<section id="embedding"><h2>The embedding g in 2-D</h2>')
    if proj is not None:
        page.add(f'<p class="note">{len(proj["labels"])} images (stratified sample), t-SNE and PCA of g; hover shows '
                 'the dataset index and the label.</p>')
        page.figure(F.embedding_scatter(proj, r.names), "embedding-2d")
    page.add("</section>")


def galleries_section(r: Report, page: Page) -> None:
    scale = ("its magnitude, the largest |change| over the RGB channels per pixel (white = unchanged)"
             if r.stats.meta["dataset"]["image_shape"][0] > 1 else "diverging scale: blue = brighter, red = darker")
    page.add('<section id="galleries"><h2>Galleries</h2><p class="note">Per attack: original, perturbation '
             f'({scale}) and adversarial image, successful examples first, with the prediction and the audit '
             'verdict.</p>')
    for name, a in r.audits.items():
        att = load_npz(r.run.file(A.attack(name)[0]))  # one attack's images in memory at a time
        if att is None or "x" not in att:
            continue
        picks = F.pick_gallery(a.arrays, r.gallery_per_class)
        page.add(f"<h3>{esc(name)}</h3>")
        page.figure(F.gallery(att["x"], att["x_adv"], a.arrays, r.names, picks), f"gallery-{name}")
    page.add("</section>")


def probe_section(r: Report, page: Page) -> None:
    probe = load_npz(r.run.file(A.PROBE))
    page.add('<section id="probe"><h2>Class-mixing probe</h2>')
    if probe is not None:
        eps = float(probe["eps"])
        fooled = probe["pred"] != probe["class0"]
        page.add(f'<p class="note">x0 + {eps:g}·sign(x1): inside the L∞ ball of radius {eps:g} around x0, yet a '
                 f'faint copy of x1 is stamped in. f predicts another class than x0\'s for {fooled.mean():.1%} '
                 f'of the {len(fooled)} probes; the judge {esc(str(probe.get("judge", "")))} sees another class '
                 f'for {(probe["judge_label"] != probe["class0"]).mean():.1%}.</p>')
        page.figure(F.probe_gallery(probe, r.names), "probe")
        rows = []
        for c, n in enumerate(r.names):
            m = probe["class0"] == c
            if m.any():
                rows.append([n, int(m.sum()), float(fooled[m].mean()), float((probe["judge_label"][m] != c).mean()),
                             float(probe["judge_changed"][m].mean())])
        page.add(html_table(["class of x0", "probes", "f changes", "judge label changes", "judge: class changed"],
                            rows))
    page.add("</section>")


# ---- audit tables and experiments ----------------------------------------------------------------------
def audit_section(r: Report, page: Page) -> None:
    page.add('<section id="audit"><h2>Audit tables per class</h2>')
    for name, a in r.audits.items():
        members = a.meta.get("judge_members", [])
        y = a.arrays["labels"]
        rows = [[n, *_audit_row(a.rates(y == c), members)] for c, n in enumerate(r.names) if (y == c).any()]
        rows.append(["all", *_audit_row(a.rates(), members)])
        jname = (a.meta.get("judge") or {}).get("name", "?")
        page.add(f"<details open><summary>{esc(name)} ({esc(eps_description(a))}; judge {esc(jname)})</summary>")
        page.add(html_table(["class", "n", "clean error", "success", "mean L∞", "mean L2", "mean L0", "bg share changed",
                             "bg detector", "mean SSIM", "perceptible", f"class changed ({jname})",
                             *[f"member {e}: label ≠ y" for e in members],
                             "interpolated", "ball has misclassified", "VALID"], rows))
        page.add("</details>")
    page.add("</section>")


def _audit_row(x: dict[str, Any], members: list[str]) -> list[Any]:
    return [x["n"], x["clean_error_rate"], x["success_rate"], x["mean_linf"], x["mean_l2"], x["mean_l0"], x["mean_background_share"],
            x["detected_rate"], x["mean_ssim"], x["perceptible_rate"], x["class_changed_rate"],
            *[x.get(f"class_changed_{e}_rate") for e in members], x["interpolated_rate"], x["ball_has_wrong_rate"],
            x["valid_rate"]]


def experiment_sections(r: Report, page: Page) -> None:
    from calib.report.experiments import SECTIONS as EXP_SECTIONS, TITLES as EXP_TITLES

    for name, (doc, arrays) in r.experiments.items():
        page.add(f'<section id="exp-{name}"><h2>{esc(EXP_TITLES[name])}</h2>')
        EXP_SECTIONS[name](doc, arrays, r.names, page, html_table)
        seconds = float(doc.get("seconds") or 0.0)
        page.add(f'<p class="note">Computed in {seconds:.1f} s by <code>calib experiment {esc(name)} --run RUN</code>.'
                 "</p></section>")


#: the report's sections in page order: (id, title, function)
SECTIONS: tuple[tuple[str, str, Callable[[Report, Page], None]], ...] = (
    ("summary", "Run summary", summary_section),
    ("headline", "Headline: valid adversarial examples", headline_section),
    ("heatmaps", "Class-pair distances", heatmaps_section),
    ("distributions", "d_same and d_diff per class", distributions_section),
    ("coverage", "Coverage vs ε", coverage_section),
    ("eps-table", "ε table", eps_table_section),
    ("semantic", "Judges and semantic radii", semantic_section),
    ("validation", "Judges vs people", validation_section),
    ("embedding", "Embedding (2-D)", embedding_section),
    ("galleries", "Galleries", galleries_section),
    ("probe", "Class-mixing probe", probe_section),
    ("audit", "Audit tables", audit_section),
)
