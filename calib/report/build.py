"""The run report: one self-contained HTML file (plotly.js embedded) built from a run folder.

Sections: summary, headline, class-pair heat-maps, distance distributions, coverage curves, the
epsilon table, the 2-D embedding, galleries per attack, the class-mixing probe, and the audit
tables. Every user-provided string is HTML-escaped; figure JSON is embedded with ``<``, ``>`` and
``&`` as unicode escapes, so no string can close the script element. ``report.html#only=<id>``
shows one section (used for per-section screenshots).
"""
from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from calib.errors import DataError
from calib.io import atomic_open, read_json
from calib.report import figures as F
from calib.report.figures import NORM_LABEL, esc

log = logging.getLogger(__name__)

SECTIONS = (("summary", "Run summary"), ("headline", "Headline: valid adversarial examples"),
            ("heatmaps", "Class-pair distances"), ("distributions", "d_same and d_diff per class"),
            ("coverage", "Coverage vs ε"), ("eps-table", "ε table"), ("semantic", "Judges and semantic radii"),
            ("validation", "Judges vs people"),
            ("embedding", "Embedding (2-D)"),
            ("galleries", "Galleries"), ("probe", "Class-mixing probe"), ("audit", "Audit tables"))

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:14px 24px}header h1{margin:0;font-size:22px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:6px 24px;z-index:10}
nav a{margin-right:14px;color:#1f5fa0;text-decoration:none;font-size:14px}
section{background:#fff;margin:16px 24px;padding:12px 20px;border:1px solid #e3e3e3;border-radius:6px}
h2{font-size:19px;margin:6px 0 8px}h3{font-size:16px;margin:14px 0 6px}
p.note,ul.note{color:#555;font-size:13px;max-width:1100px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f0f3f6;cursor:pointer;white-space:nowrap}td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#fafcff}.bad{color:#b00020;font-weight:600}.good{color:#1b7a1b;font-weight:600}
.scroll{overflow-x:auto;max-width:100%}details{margin:6px 0}summary{cursor:pointer;font-weight:600}.figure{width:100%}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows),asc=th.dataset.asc!=='1';
    rows.sort(function(a,b){var x=a.cells[i].dataset.v||a.cells[i].textContent,y=b.cells[i].dataset.v||b.cells[i].textContent;
      var nx=parseFloat(x),ny=parseFloat(y);var c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;return asc?c:-c;});
    rows.forEach(function(r){body.appendChild(r);});th.dataset.asc=asc?'1':'0';});});});
(function(){var m=location.hash.match(/only=([\\w-]+)/);if(!m)return;
  document.querySelectorAll('section').forEach(function(s){if(s.id!==m[1])s.style.display='none';});
  var n=document.querySelector('nav');if(n)n.style.display='none';})();
"""


def _script_json(obj: Any) -> str:
    """JSON safe to place inside a <script> element."""
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class _Page:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_fig = 0

    def add(self, s: str) -> None:
        self.parts.append(s)

    def figure(self, fig: Any, name: str) -> None:
        import plotly.io as pio

        self.n_fig += 1
        div = f"fig-{self.n_fig}-{name}"
        spec = _script_json(pio.to_json(fig, validate=False))
        self.add(f'<div id="{div}" class="figure" data-figure="{esc(name)}"></div>'
                 f'<script>(function(){{var f={spec};Plotly.newPlot("{div}",f.data,f.layout,'
                 f'{{responsive:true,displaylogo:false}});}})();</script>')


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}g}" if abs(float(v)) < 1e-3 and v != 0 else f"{float(v):.{digits}f}"
    return esc(v)


def html_table(header: list[str], rows: list[list[Any]], sortable: bool = True, left: int = 1) -> str:
    """An HTML table; every cell is escaped/formatted, the first ``left`` columns left-aligned."""
    cls = ' class="sortable"' if sortable else ""
    th = "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
    body = []
    for r in rows:
        tds = []
        for i, v in enumerate(r):
            num = f' data-v="{float(v)!r}"' if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) \
                and np.isfinite(float(v)) else ""
            tds.append(f'<td class="l"{num}>{_fmt(v)}</td>' if i < left else f"<td{num}>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="scroll"><table{cls}><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table></div>")


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _manifests(run_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted((run_dir / "cache").glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def write_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                 title: str | None = None, context: dict[str, Any] | None = None,
                 gallery_per_class: int = 2) -> Path:
    """Build ``report.html`` from the artefacts of ``run_dir`` (written atomically); returns its path.

    ``context`` may carry the run configuration and dataset description (else ``summary.json``
    is read if present).
    """
    from plotly.offline import get_plotlyjs

    from calib.audit import AuditResult
    from calib.budgets import load_table
    from calib.stats import Stats

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report.html"
    if not (run_dir / "eps_table.json").exists() or not (run_dir / "stats.json").exists():
        raise DataError(f"{run_dir} has no statistics and epsilon table to report on; run `calib run` first")
    stats = Stats.load(run_dir)
    table = load_table(run_dir / "eps_table.json")
    if context is None and (run_dir / "summary.json").exists():
        context = read_json(run_dir / "summary.json", DataError, "run summary")
    context = context or {}
    names = list(stats.class_names)
    manifests = _manifests(run_dir)
    pair = table.policy.get("pair", "calibration-train")
    pairs = {f"{s}/{n}": ps for (s, n, p), ps in sorted(stats.pairs.items(), key=lambda kv: _space_order(kv[0][:2]))
             if p == pair}
    audits = {p.stem: AuditResult.load(run_dir / "audit", p.stem) for p in sorted((run_dir / "audit").glob("*.json"))}
    order = {"global": 0, "per-class": 1, "embedding": 2}
    audits = dict(sorted(audits.items(), key=lambda kv: (kv[1].meta.get("norm", ""),
                                                        order.get(kv[1].meta.get("budget"), 9))))
    from calib.report.experiments import SECTIONS as EXP_SECTIONS, TITLES as EXP_TITLES, load_experiments

    experiments = {k: v for k, v in load_experiments(run_dir).items() if k in EXP_SECTIONS}
    sections = list(SECTIONS) + [(f"exp-{k}", EXP_TITLES[k]) for k in experiments]
    page = _Page()
    ds_name = stats.meta["dataset"]["name"]
    title = title or f"calib report — {ds_name}"
    page.add(f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
             f"<style>{CSS}</style><script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>")
    page.add(f"<header><h1>{esc(title)}</h1></header><nav>" +
             "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t in sections) + "</nav>")

    # ---- summary ---------------------------------------------------------------------------------
    page.add('<section id="summary"><h2>Run summary</h2>')
    meta_ds = stats.meta["dataset"]
    split = stats.meta.get("split", {})
    vers = (context.get("versions") or stats.meta.get("versions") or {})
    rows = [["dataset", ds_name], ["fingerprint (sha256)", meta_ds["fingerprint"]],
            ["samples", meta_ds["num_samples"]], ["image shape", " × ".join(map(str, meta_ds["image_shape"]))],
            ["classes", ", ".join(names)], ["seed", split.get("seed")],
            ["split fractions (train, calibration, test)", ", ".join(map(str, split.get("fractions", [])))],
            ["budget policy", json.dumps({k: v for k, v in table.policy.items() if k != "semantic"})],
            *[[f"version: {k}", v] for k, v in sorted(vers.items())]]
    page.add(html_table(["", "value"], rows, sortable=False, left=2))
    mrows = []
    for stem, what in (("classifier", "classifier f"), ("embedding", "embedding g"),
                       ("embedding2", "independent embedding g2 (judge knn2)"),
                       ("robust-embedding", "robust triplet embedding (judge robust)"),
                       ("lipschitz-embedding", "certified-Lipschitz embedding (judge lipschitz)")):
        m = manifests.get(stem)
        if not m:
            continue
        info = m.get("info", {})
        met = info.get("metrics", {})
        if stem == "classifier" and info.get("external"):
            what = f"classifier f: yours, {info['external']} (not trained by calib)"
        score = (f"accuracy {met['test_accuracy']:.4f}" if "test_accuracy" in met else
                 f"P@1 {met.get('test_precision_at_1', float('nan')):.4f}, MAP@R {met.get('test_map_at_r', float('nan')):.4f}")
        if "lipschitz_l2" in met:
            score += f", L2 Lipschitz constant {met['lipschitz_l2']:.6f}"
        mrows.append([what, score, info.get("weights_sha256", "")[:16], m.get("seconds")])
    page.add("<h3>Models (held-out test part)</h3>" + html_table(["model", "metric", "weights sha256", "seconds"],
                                                                 mrows, sortable=False, left=3))
    trows = [[k, m.get("seconds"), m.get("finished", "")] for k, m in manifests.items() if k != "report"]
    total = sum(float(m.get("seconds") or 0) for k, m in manifests.items() if k != "report")
    page.add(f"<h3>Time taken (compute seconds per stage; total {total:.1f} s)</h3>"
             + html_table(["stage", "seconds", "finished"], trows, left=1))
    page.add("</section>")

    # ---- headline --------------------------------------------------------------------------------
    judge_desc = next((a.meta.get("judge") for a in audits.values() if a.meta.get("judge")), None) or {}
    judge_name = judge_desc.get("name", "?")
    page.add('<section id="headline"><h2>Headline: how many of these adversarial examples are fair?</h2>')
    page.add(f'<p class="note">Judge of "the class changed": <b>{esc(judge_name)}</b> '
             f'({esc(judge_desc.get("rule", ""))}). A <b>valid</b> adversarial example is successful (f(x′) ≠ y), '
             'not perceptible (SSIM ≥ threshold), not class-changed (the judge still sees y) and not interpolated '
             '(x′ is not closer to another training image of its class than to x). Global ε is the customary '
             'budget; '
             'per-class ε comes from the ε table; embedding PGD projects onto the per-class embedding ball (with the '
             'global ε as input cap). Per attack and class: the success rate, then, among the successful examples, '
             'the shares the judge calls class-preserving, that are perceptible, interpolated, and valid.</p>')
    if audits:
        first = next(iter(audits.values()))
        cfg = first.meta.get("config", {})
        page.add(f'<p class="note">Audit settings: SSIM threshold {esc(cfg.get("ssim_min"))}, '
                 f'pixel tolerance {esc(round(float(cfg.get("tol", 0)), 5))}, background detector in verdict: '
                 f'{esc(cfg.get("detector_in_verdict"))}; reference set {esc(first.meta.get("reference_size"))} '
                 f'training images ({esc(first.meta.get("reference_misclassified"))} misclassified by f).</p>')
        page.figure(F.headline_breakdown(audits, names, judge_name), "headline")
        hrows = []
        for name, a in audits.items():
            r = a.rates()
            hrows.append([name, a.meta.get("budget"), _eps_desc(a), (a.meta.get("judge") or {}).get("name"), r["n"],
                          r["success_rate"], r["class_preserving_among_successes"], r["perceptible_among_successes"],
                          r["interpolated_among_successes"], r["valid_among_successes"], r["valid_rate"],
                          r["ball_has_wrong_rate"], r["mean_ssim"]])
        page.add("<ul class=\"note\">" + "".join(_reading(k, a.rates()) for k, a in audits.items()) + "</ul>")
        page.add(html_table(["attack", "budget", "ε", "judge", "n", "success", "class-preserving | success",
                             "perceptible | success", "interpolated | success", "VALID | success", "VALID (all)",
                             "ball has misclassified same-class", "mean SSIM"], hrows, left=4))
    else:
        page.add('<p class="note">No attacks were run (attack stage turned off).</p>')
    page.add("</section>")

    # ---- heatmaps, distributions, coverage -----------------------------------------------------------
    page.add('<section id="heatmaps"><h2>Class × class mean distance</h2><p class="note">Mean distance between '
             'samples of the row class and the column class (diagonal without self-pairs); sampled mode uses '
             f'{esc(stats.meta.get("config", {}).get("n_per_class"))} points per class (seeded), exact mode all points.'
             ' Switch the space/norm with the buttons.</p>')
    page.figure(F.class_pair_heatmaps(stats.matrices, names), "class-pair-heatmaps")
    page.add("</section>")
    page.add(f'<section id="distributions"><h2>Distances to the nearest same-class and other-class image</h2>'
             f'<p class="note">Pair {esc(pair)}: each calibration point against the training set. A ball of radius '
             'ε is safe when ε &lt; d_same (no other same-class image inside) and ε &lt; d_diff/2 (does not reach '
             'halfway to another class). Diamonds: the table ε; dashes: the geometric ε before the semantic cap.</p>')
    page.figure(F.distance_distributions(pairs, table, names), "distance-distributions")
    page.add("</section>")
    page.add('<section id="coverage"><h2>Coverage vs ε (the calibration picture)</h2><p class="note">Share of '
             'class points whose ball of radius ε is safe. Dashed lines: the customary global ε; diamonds: '
             'the per-class table ε.</p>')
    page.figure(F.coverage_curves(pairs, table, names), "coverage-curves")
    page.add(_baselines_html(table, names))
    page.add("</section>")

    # ---- eps table ---------------------------------------------------------------------------------
    doc = (run_dir / "eps_table.json").read_bytes()
    href = "data:application/json;base64," + base64.b64encode(doc).decode()
    sem_pol = table.policy.get("semantic") or {}
    sem_judge = sem_pol.get("judge") if isinstance(sem_pol.get("judge"), dict) else {"name": sem_pol.get("judge")}
    page.add('<section id="eps-table"><h2>ε table</h2>'
             f'<p class="note">Policy {esc(table.policy.get("method"))}, q = {esc(table.policy.get("q"))}, '
             f's = {esc(table.policy.get("s"))}, rule {esc(table.policy.get("rule"))}. '
             f'<a download="eps_table.json" href="{href}">Download eps_table.json</a> (also beside this report; '
             'per-sample budgets in per_sample_eps.npz). Final input budget = min(geometric, semantic). The semantic '
             f'budget is the robustness radius of the judge <b>{esc(sem_judge.get("name"))}</b>, per class the '
             f'q-quantile over calibration points, bracketed by an attack (empirical: an <i>upper</i>, optimistic '
             'estimate) and, for a certified judge, a certificate (a guaranteed <i>lower</i> bound); the final budget '
             f'uses the <b>{esc(sem_pol.get("bound", "–"))}</b> bound. The embedding budget is the 1-NN margin '
             's·Q_q{(d_diff_g − d_same_g)/2}. Input panels use log axes so that budgets of one grey level and of '
             'half the range are both visible; a budget of 0 has no bar there (see the table below).</p>')
    page.figure(F.eps_table_chart(table), "eps-table-chart")
    keys = list(table.budgets)
    erows = []
    for c, n in enumerate(names):
        row: list[Any] = [n]
        for k in keys:
            b = table.budgets[k]
            row += [float(b["eps"][c]), float(b["coverage"][c])]
        erows.append(row)
    header = ["class"] + [h for k in keys for h in (f"ε {NORM_LABEL.get(k, k)}", f"coverage {NORM_LABEL.get(k, k)}")]
    page.add(html_table(header, erows))
    page.add("</section>")

    # ---- judges and semantic radii ---------------------------------------------------------------
    _semantic_section(run_dir, names, page)
    _validation_section(run_dir, names, page)

    # ---- embedding ---------------------------------------------------------------------------------
    proj = _load_npz(run_dir / "projection.npz")
    page.add('<section id="embedding"><h2>The embedding g in 2-D</h2>')
    if proj is not None:
        page.add(f'<p class="note">{len(proj["labels"])} images (stratified sample), t-SNE and PCA of g; hover shows '
                 'the dataset index and the label.</p>')
        page.figure(F.embedding_scatter(proj, names), "embedding-2d")
    page.add("</section>")

    # ---- galleries ---------------------------------------------------------------------------------
    scale = ("its magnitude, the largest |change| over the RGB channels per pixel (white = unchanged)"
             if meta_ds["image_shape"][0] > 1 else "diverging scale: blue = brighter, red = darker")
    page.add('<section id="galleries"><h2>Galleries</h2><p class="note">Per attack: original, perturbation '
             f'({scale}) and adversarial image, successful examples first, with the prediction and the audit '
             'verdict.</p>')
    for name, a in audits.items():
        att = _load_npz(run_dir / "attacks" / f"{name}.npz")  # one attack's images in memory at a time
        if att is None or "x" not in att:
            continue
        picks = F.pick_gallery(a.arrays, gallery_per_class)
        page.add(f"<h3>{esc(name)}</h3>")
        page.figure(F.gallery(att["x"], att["x_adv"], a.arrays, names, picks), f"gallery-{name}")
    page.add("</section>")

    # ---- probe -------------------------------------------------------------------------------------
    probe = _load_npz(run_dir / "probe.npz")
    page.add('<section id="probe"><h2>Class-mixing probe</h2>')
    if probe is not None:
        eps = float(probe["eps"])
        fooled = probe["pred"] != probe["class0"]
        page.add(f'<p class="note">x0 + {eps:g}·sign(x1): inside the L∞ ball of radius {eps:g} around x0, yet a '
                 f'faint copy of x1 is stamped in. f predicts another class than x0\'s for {fooled.mean():.1%} '
                 f'of the {len(fooled)} probes; the judge {esc(str(probe.get("judge", "")))} sees another class '
                 f'for {(probe["judge_label"] != probe["class0"]).mean():.1%}.</p>')
        page.figure(F.probe_gallery(probe, names), "probe")
        prow = []
        for c, n in enumerate(names):
            m = probe["class0"] == c
            if m.any():
                prow.append([n, int(m.sum()), float(fooled[m].mean()), float((probe["judge_label"][m] != c).mean()),
                             float(probe["judge_changed"][m].mean())])
        page.add(html_table(["class of x0", "probes", "f changes", "judge label changes", "judge: class changed"],
                            prow))
    page.add("</section>")

    # ---- audit tables ------------------------------------------------------------------------------
    page.add('<section id="audit"><h2>Audit tables per class</h2>')
    for name, a in audits.items():
        rows = []
        members = a.meta.get("judge_members", [])
        y = a.arrays["labels"]
        for c, n in enumerate(names):
            m = y == c
            if not m.any():
                continue
            r = a.rates(m)
            rows.append([n, r["n"], r["success_rate"], r["mean_linf"], r["mean_l2"], r["mean_l0"],
                         r["mean_background_share"], r["detected_rate"], r["mean_ssim"], r["perceptible_rate"],
                         r["class_changed_rate"], *[r.get(f"class_changed_{e}_rate") for e in members],
                         r["interpolated_rate"], r["ball_has_wrong_rate"], r["valid_rate"]])
        r = a.rates()
        rows.append(["all", r["n"], r["success_rate"], r["mean_linf"], r["mean_l2"], r["mean_l0"],
                     r["mean_background_share"], r["detected_rate"], r["mean_ssim"], r["perceptible_rate"],
                     r["class_changed_rate"], *[r.get(f"class_changed_{e}_rate") for e in members],
                     r["interpolated_rate"], r["ball_has_wrong_rate"], r["valid_rate"]])
        jname = (a.meta.get("judge") or {}).get("name", "?")
        page.add(f"<details open><summary>{esc(name)} ({esc(_eps_desc(a))}; judge {esc(jname)})</summary>")
        page.add(html_table(["class", "n", "success", "mean L∞", "mean L2", "mean L0", "bg share changed",
                             "bg detector", "mean SSIM", "perceptible", f"class changed ({jname})",
                             *[f"member {e}: label ≠ y" for e in members],
                             "interpolated", "ball has misclassified", "VALID"], rows))
        page.add("</details>")
    page.add("</section>")
    # ---- experiments ---------------------------------------------------------------------------
    for name, (doc, arrays) in experiments.items():
        page.add(f'<section id="exp-{name}"><h2>{esc(EXP_TITLES[name])}</h2>')
        EXP_SECTIONS[name](doc, arrays, names, page, html_table)
        seconds = float(doc.get("seconds") or 0.0)
        page.add(f'<p class="note">Computed in {seconds:.1f} s by <code>calib experiment {esc(name)} --run RUN</code>.'
                 "</p></section>")
    page.add(f"<script>{SORT_JS}</script></body></html>")
    with atomic_open(out, "w") as fh:
        fh.write("".join(page.parts))
    log.info("report written to %s (%d figures)", out, page.n_fig)
    return out


def _space_order(key: tuple[str, str]) -> int:
    """Input L-inf first (the customary threat model), then L2, L1, then the embedding."""
    order = [("input", "linf"), ("input", "l2"), ("input", "l1"), ("embedding", "l2")]
    return order.index(tuple(key)) if tuple(key) in order else len(order)


def _reading(name: str, r: dict[str, Any]) -> str:
    """One sentence per attack saying what its audit numbers mean."""
    n, succ = r["n"], r["success_rate"]
    if not succ:
        return f"<li><b>{esc(name)}</b>: no successful example among {n}.</li>"
    return (f"<li><b>{esc(name)}</b>: {succ:.1%} of {n} successful; of all examples {r['perceptible_rate']:.1%} are "
            f"perceptible (mean SSIM {r['mean_ssim']:.2f}), {r['class_changed_rate']:.1%} change class by the "
            f"judge's verdict, {r['interpolated_rate']:.1%} interpolate toward another same-class image; "
            f"<b>{r['valid_rate']:.1%} are valid</b> ({r['valid_among_successes']:.1%} of the successes).</li>")


def _eps_desc(a: Any) -> str:
    spec = a.meta.get("spec", {})
    norm = NORM_LABEL.get(f"input/{spec.get('norm')}", spec.get("norm"))
    if a.meta.get("budget") == "global":
        return f"{norm} {spec.get('eps')}"
    if a.meta.get("budget") == "embedding":
        return f"embedding ball per class, cap {norm} {spec.get('cap')}"
    if a.meta.get("budget") == "imported":
        return f"imported ({norm})"
    return f"{norm} per class (table)"


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


def _semantic_section(run_dir: Path, names: list[str], page: "_Page") -> None:
    """Per measured judge: per-class semantic budgets [certified, empirical] per norm, the radii's
    distributions, and the certificate checks."""
    from calib.budgets.semantic import class_quantile, load_radii

    files = sorted((run_dir / "semantic").glob("*.json"))
    if not files:
        page.add('<section id="semantic"><h2>Judges and semantic radii</h2><p class="note">No semantic budgets were '
                 "computed in this run.</p></section>")
        return
    table = read_json(run_dir / "eps_table.json", DataError, "eps table")
    q, s = float(table["policy"].get("q", 0.05)), float(table["policy"].get("s", 1.0))
    page.add('<section id="semantic"><h2>Judges and semantic radii</h2><p class="note">The robustness radius '
             'r(x) of a judge is the smallest input change that changes its class. Empirical: per-point bisection of '
             'PGD on the judge\'s margin, each value witnessed by an example the judge re-checked (an upper bound: '
             'a stronger attack can only lower it). Certified: margin / Lipschitz constant (a guaranteed lower '
             f'bound). Per class, s · Q_q with q = {q:g}, s = {s:g}; "none found" = no change found inside the '
             'whole box for more than q of the class. A point the judge already gets wrong has r = 0.</p>')
    boxes: dict[str, dict[str, Any]] = {}
    cols: list[str] = []
    per_class: list[list[Any]] = [[n] for n in names]
    runs: list[list[Any]] = []
    for f in files:
        radii, doc, _, labels = load_radii(run_dir / "semantic", f.stem)
        judge = doc.get("judge", {})
        boxes[f.stem] = {}
        for norm, r in radii.items():
            emp = class_quantile(r.empirical, labels, len(names), q, s)
            cert = None if r.certified is None else class_quantile(r.certified, labels, len(names), q, s)
            boxes[f.stem][norm] = {"labels": labels, "empirical": r.empirical, "certified": r.certified}
            cols.append(f"{f.stem} {NORM_LABEL.get('input/' + norm, norm)} [certified, empirical]")
            for c in range(len(names)):
                lo = "–" if cert is None else f"{cert[c]:.4g}"
                hi = f"{emp[c]:.4g}" if np.isfinite(emp[c]) else "none found"
                per_class[c].append(f"[{lo}, {hi}]")
            info = r.info
            runs.append([f.stem, judge.get("kind", ""), NORM_LABEL.get("input/" + norm, norm),
                         "yes" if r.certified is not None else "no", int(info.get("found", 0)),
                         int(info.get("not_found", 0)), int(info.get("clean_wrong", 0)), int(r.checked),
                         float(info.get("seconds", 0.0))])
    page.add(html_table(["class", *cols], per_class, sortable=False))
    page.add("<h3>How each radius was measured</h3>" + html_table(
        ["judge", "kind", "norm", "certified", "witnesses", "no change found", "judge wrong on clean",
         "witnesses checked against the certificate", "seconds"], runs, left=3))
    page.figure(F.radii_boxes(boxes, names), "semantic-radii")
    page.add("</section>")


def _validation_section(run_dir: Path, names: list[str], page: "_Page", per_judge: int = 12) -> None:
    """Every judge against people (``calib validate`` / ``calib run --human``): agreement tables, ROC
    curves, and for the run's judge a gallery of the images where it and people disagree."""
    from calib.human.validate import load_validation

    loaded = load_validation(run_dir)
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
        for s, r in [*j["sets"].items(), ("all sets", j["all"])]:
            c = r["confusion"]
            rows.append([name, s, r["n"], r["balanced_accuracy"], _ci(r["balanced_accuracy_ci95"]), r["auc"],
                         _ci(r["auc_ci95"]), c["tp"], c["fp"], c["tn"], c["fn"], r["label_agreement"]["value"],
                         _ci(r["label_agreement"]["wilson95"])])
    page.add(html_table(["judge", "set", "n", "balanced accuracy", "95 %", "ROC AUC", "95 %", "TP", "FP", "TN", "FN",
                         "label agreement", "95 %"], rows, left=2))
    page.figure(F.roc_curves(doc), "validation-roc")
    summary = read_json(run_dir / "summary.json", DataError, "run summary") if (run_dir / "summary.json").exists() \
        else {}
    judge = summary.get("judge") or next(iter(doc["judges"]))
    if judge in doc["judges"]:
        items = []
        for s, info in doc["sets"].items():
            key = info["key"]
            y, h = arrays[f"{key}__source_label"], arrays[f"{key}__human_label"]
            ch, lab = arrays[f"{key}__{judge}__changed"], arrays[f"{key}__{judge}__label"]
            wrong = np.flatnonzero((h >= 0) & (ch != (h != y)))
            for i in wrong[:per_judge - len(items)]:
                x = arrays[f"{key}__x"][i]
                x0 = arrays[f"{key}__x0"][i] if f"{key}__x0" in arrays else np.zeros_like(x)  # (older results)
                items.append({"set": s, "index": int(arrays[f"{key}__source_index"][i]), "x": x, "x0": x0,
                              "human": int(h[i]), "judge": int(lab[i]), "source": int(y[i])})
        if items:
            page.add(f"<h3>Where judge {esc(judge)} and people disagree (first {len(items)})</h3>"
                     '<p class="note">Each pair: the perturbed image people labelled, then its clean source image.</p>')
            page.figure(F.disagreement_gallery(items, names), "validation-disagreements")
    page.add("</section>")


def _ci(ci: Any) -> str:
    return "–" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
