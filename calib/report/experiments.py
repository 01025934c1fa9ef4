"""Report sections of the background experiments (one per ``<run>/experiments/<name>.json``)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from calib.errors import DataError
from calib.runfolder import artefacts as A
from calib.report.figures import _go, image_trace, esc, palette
from calib.report.grid import ImageGrid

if TYPE_CHECKING:
    from calib.runfolder import RunFolder

TITLES = {"transfer": "Experiment: transferability", "adversarial-training": "Experiment: adversarial training",
          "robust-embedding": "Experiment: robust triplet embedding",
          "linearity": "Experiment: linearity and dimension", "units": "Experiment: units vs random directions"}


def _bars(series: dict[str, dict[str, float | None]], names: list[str], ytitle: str, height: int = 380) -> Any:
    go = _go()
    fig = go.Figure()
    for label, per_class in series.items():
        fig.add_trace(go.Bar(x=[esc(n) for n in names], y=[per_class.get(n) for n in names], name=esc(label),
                             hovertemplate=esc(label) + ", class %{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(barmode="group", height=height, margin={"t": 30},
                      xaxis={"title": {"text": "class"}, "type": "category"},
                      yaxis={"title": {"text": ytitle}, "range": [0, 1.02]})
    return fig


def transfer_section(doc: dict, arrays: dict, names: list[str], page, table) -> None:
    m = doc["models"]
    page.add(f'<p class="note">f1 (the run\'s CNN) and f2 (an MLP, other learning rate, dropout and seed) were '
             f'trained on disjoint halves of the training part ({m["f1"]["train_size"]} and {m["f2"]["train_size"]} '
             f'images, {m["epochs"]} epochs). Adversarial examples are crafted on f1; the transfer rate is the share '
             'of f1\'s successes (on test points both models classify correctly) that also fool f2.</p>')
    page.add(table(["model", "architecture", "held-out accuracy"],
                   [["f1", m["f1"]["arch"], m["f1"]["test_accuracy"]], ["f2", m["f2"]["arch"], m["f2"]["test_accuracy"]]],
                   sortable=False, left=2))
    page.figure(_bars({k: v["per_class_transfer_rate"] for k, v in doc["attacks"].items()}, names,
                      "transfer rate to f2"), "transfer")
    rows = [[k, v["budget"], v["n_both_correct"], v["f1_success"], v["transfer_rate"], v["f2_fooled_overall"]]
            for k, v in doc["attacks"].items()]
    page.add(table(["attack on f1", "budget", "points both correct", "f1 success", "transfer rate (f2 | f1 fooled)",
                    "f2 fooled"], rows, left=2))


def adversarial_training_section(doc: dict, arrays: dict, names: list[str], page, table) -> None:
    from plotly.subplots import make_subplots

    go = _go()
    page.add(f'<p class="note">Goodfellow et al.\'s mixture α·J(x) + (1−α)·J(x + ε·sign∇J) with α = {doc["alpha"]}, '
             f'{esc(doc["attack"])}, {doc["epochs"]} epochs: no adversarial term (standard), the global ε = '
             f'{doc["global_eps"]} and the per-class ε of the table. Robust accuracy: PGD ({doc["eval"]["steps"]} '
             f'steps) under the global and under the per-class ε, on {doc["n"]} test points.</p>')
    keys = [("per_class_clean", "clean accuracy"), ("per_class_robust_global", "robust, global ε"),
            ("per_class_robust_per-class", "robust, per-class ε")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in keys], shared_yaxes=True)
    colors = palette(len(doc["variants"]))
    for j, (vname, row) in enumerate(doc["variants"].items()):
        for c, (key, _) in enumerate(keys, 1):
            fig.add_trace(go.Bar(x=[esc(n) for n in names], y=[row[key].get(n) for n in names], name=esc(vname),
                                 marker_color=colors[j], showlegend=c == 1, legendgroup=vname,
                                 hovertemplate=esc(vname) + ", class %{x}: %{y:.3f}<extra></extra>"), row=1, col=c)
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(barmode="group", height=400, margin={"t": 40})
    page.figure(fig, "adversarial-training")
    rows = [[k, v["clean_accuracy"], v["robust_accuracy_global"], v["robust_accuracy_per-class"],
             v["training_seconds"]] for k, v in doc["variants"].items()]
    page.add(table(["training", "clean accuracy", "robust acc. (global ε)", "robust acc. (per-class ε)",
                    "training seconds"], rows))
    per = [[n, *[doc["variants"][v][k].get(n) for v in doc["variants"] for k, _ in keys]] for n in names]
    page.add("<details><summary>per class</summary>" + table(
        ["class", *[f"{v}: {t}" for v in doc["variants"] for _, t in keys]], per) + "</details>")


def robust_embedding_section(doc: dict, arrays: dict, names: list[str], page, table) -> None:
    e = doc["embeddings"]
    mix = doc["mix"]
    page.add(f'<p class="note">The robust embedding is trained with the triplet mixture (α = {mix["alpha"]}, '
             f'anchors maximising the embedding shift in an {esc(mix["norm"])} ball of {mix["eps"]}, '
             f'{esc(mix["attack"])} with {mix["steps"]} steps). Both embeddings are measured as nearest-class judges, the '
             'same way the run measures its judge: the semantic ε is the q-quantile of the robustness radius '
             '(empirical, an upper estimate). Larger is better: the judge is harder to move.</p>')
    for sn in doc["semantic_norms"]:
        series = {f"{k} g": dict(zip(names, v[f"semantic_{sn}"])) for k, v in e.items()}
        go = _go()
        fig = go.Figure()
        for label, per_class in series.items():
            fig.add_trace(go.Bar(x=[esc(n) for n in names], y=[per_class[n] for n in names], name=esc(label)))
        geo = e["plain"][f"geometric_{sn}"]
        fig.add_trace(go.Scatter(x=[esc(n) for n in names], y=geo, mode="markers", name="geometric ε (cap)",
                                 marker={"symbol": "line-ew-open", "size": 16, "color": "black", "line": {"width": 2}}))
        fig.update_layout(barmode="group", height=380, margin={"t": 30},
                          xaxis={"title": {"text": "class"}, "type": "category"},
                          yaxis={"title": {"text": f"semantic ε ({sn})"}})
        page.figure(fig, f"robust-embedding-{sn}")
        rows = [[n, e["plain"][f"semantic_{sn}"][c], e["robust"][f"semantic_{sn}"][c],
                 e["plain"]["embedding_eps"][c], e["robust"]["embedding_eps"][c]] for c, n in enumerate(names)]
        page.add(table(["class", f"plain semantic ε {sn}", f"robust semantic ε {sn}", "plain embedding ε",
                        "robust embedding ε"], rows))
    rows = [[k, v["metrics"].get("test_precision_at_1"), v["metrics"].get("test_map_at_r"),
             v["probe"]["share_within_budget"], v["probe"]["median_shift_over_budget"]] for k, v in e.items()]
    p = e["plain"]["probe"]
    page.add(table(["embedding", "P@1", "MAP@R", f"share within budget at {p['norm']} ε = {p['eps']}",
                    "median worst shift / budget"], rows))


def linearity_section(doc: dict, arrays: dict, names: list[str], page, table) -> None:
    go = _go()
    rows = doc["rows"]
    n = [r["n"] for r in rows]
    page.add(f'<p class="note">Softmax regression on the images at several resolutions (n input dimensions). '
             f'At η = ε·sign(w) with ε = {doc["eps"]}, a class score moves by wᵀη = ε·m·n (m = mean |wᵢ|): the '
             'prediction. The unclipped measurement must equal it; clipping to [0,1] removes part of it. FGSM '
             'success (right axis) at the same ε.</p>')
    fig = go.Figure()
    for key, label, dash in (("predicted", "predicted ε·m·n", "solid"), ("measured_unclipped", "measured, unclipped",
                                                                          "dot"),
                             ("measured_clipped", "measured, clipped to [0,1]", "dash")):
        fig.add_trace(go.Scatter(x=n, y=[r[key] for r in rows], name=label, mode="lines+markers",
                                 line={"dash": dash}))
    fig.add_trace(go.Scatter(x=n, y=[r["fgsm_success"] for r in rows], name="FGSM success", yaxis="y2",
                             mode="lines+markers", line={"color": "black"}))
    fig.update_layout(height=420, margin={"t": 30}, xaxis={"title": {"text": "input dimensions n"}, "type": "log"},
                      yaxis={"title": {"text": "score change wᵀη"}},
                      yaxis2={"title": {"text": "FGSM success"}, "overlaying": "y", "side": "right", "range": [0, 1.02]},
                      legend={"x": 1.08})
    page.figure(fig, "linearity")
    page.add(table(["resolution", "n", "clean accuracy", "mean |w|", "predicted ε·m·n", "measured (unclipped)",
                    "max rel. error", "measured (clipped)", "FGSM success"],
                   [[f'{r["size"]}×{r["size"]}', r["n"], r["clean_accuracy"], r["mean_abs_w"], r["predicted"],
                     r["measured_unclipped"], r["max_rel_error_unclipped"], r["measured_clipped"], r["fgsm_success"]]
                    for r in rows]))


def units_section(doc: dict, arrays: dict, names: list[str], page, table) -> None:
    top = doc["top"]
    page.add(f'<p class="note">Top-{top} test images along single embedding coordinates (the {len(doc["units"])} '
             'most variable) and along random unit directions. Mean label purity of the top images: units '
             f'{doc["mean_unit_purity"]:.3f}, random directions {doc["mean_random_purity"]:.3f} (random sets of '
             f'{top} images: {doc["null_purity_mean"]:.3f}). Judge the gallery yourself.</p>')
    rows_imgs = [("unit", i, arrays["unit_images"][j], arrays["unit_labels"][j], doc["unit_purity"][j])
                 for j, i in enumerate(doc["units"])]
    rows_imgs += [("random", j, arrays["random_images"][j], arrays["random_labels"][j], doc["random_purity"][j])
                  for j in range(len(arrays["random_images"]))]
    titles = [f"{esc(names[int(lab)])}" for _, _, _, labs, _ in rows_imgs for lab in labs]
    grid = ImageGrid(len(rows_imgs), top, titles=titles, horizontal_spacing=0.01, vertical_spacing=0.012,
                     row_titles=[f"{kind} {i} ({p:.2f})" for kind, i, _, _, p in rows_imgs], title_size=9)
    for r, (_, _, imgs, _, _) in enumerate(rows_imgs, 1):
        for c in range(top):
            grid.add(image_trace(imgs[c], hovertemplate=None), r, c + 1)
    page.figure(grid.figure(height=80 * len(rows_imgs) + 60, margin={"t": 30, "l": 10, "r": 110, "b": 10}),
                "units")
    page.add(table(["direction", "top-k purity", "top labels"],
                   [[f"{kind} {i}", p, " ".join(names[int(v)] for v in labs)] for kind, i, _, labs, p in rows_imgs],
                   left=1))


SECTIONS: dict[str, Callable[..., None]] = {
    "transfer": transfer_section, "adversarial-training": adversarial_training_section,
    "robust-embedding": robust_embedding_section, "linearity": linearity_section, "units": units_section}


def load_experiments(run: RunFolder) -> dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Every saved experiment of a run: name -> (summary, arrays)."""
    out = {}
    for name in run.names(A.EXPERIMENTS):
        doc_path, npz_path = (run.file(f) for f in A.experiment(name))
        try:
            doc = json.loads(doc_path.read_text(encoding="utf-8"))
            with np.load(npz_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{doc_path}: unreadable experiment result ({exc})") from exc
        out[name] = (doc, arrays)
    return out
