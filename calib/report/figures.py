"""Plotly figures of the report, each a pure function of saved run artefacts.

Every user-provided string (class names, dataset name) that reaches a figure goes through
:func:`esc`: Plotly renders a subset of HTML in text, so names are HTML-escaped first.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np

from calib.budgets.geometric import CUSTOMARY
from calib.report.grid import ImageGrid

NORM_LABEL = {"input/l2": "input L2", "input/linf": "input L∞", "input/l1": "input L1", "embedding/l2": "embedding L2"}


def esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _go():
    import plotly.graph_objects as go

    return go


def palette(k: int) -> list[str]:
    from plotly.colors import qualitative

    base = qualitative.Plotly + qualitative.D3 + qualitative.Alphabet
    return [base[i % len(base)] for i in range(k)]


def _menu(labels: list[str], visibilities: list[list[bool]], extra: list[dict] | None = None,
          y: float = 1.18) -> dict:
    buttons = []
    for i, (label, vis) in enumerate(zip(labels, visibilities)):
        args: list[Any] = [{"visible": vis}]
        if extra is not None:
            args.append(extra[i])
        buttons.append({"label": label, "method": "update", "args": args})
    return {"type": "buttons", "direction": "right", "x": 0, "xanchor": "left", "y": y, "yanchor": "top",
            "buttons": buttons, "showactive": True, "pad": {"r": 4, "t": 4}}


def class_pair_heatmaps(matrices: dict[tuple[str, str, str], Any], class_names: Sequence[str]) -> Any:
    """Class x class mean distance, one heat-map per (space, norm, mode), switchable by buttons."""
    go = _go()
    names = [esc(c) for c in class_names]
    fig = go.Figure()
    norm_order = {"linf": 0, "l2": 1, "l1": 2}
    keys = sorted(matrices, key=lambda k: (k[0] != "input", norm_order.get(k[1], 9), k[2] != "exact"))
    for i, k in enumerate(keys):
        m = matrices[k].mean
        fig.add_trace(go.Heatmap(z=m, x=names, y=names, colorscale="Viridis", visible=i == 0,
                                 text=np.round(m, 3), texttemplate="%{text}" if len(names) <= 12 else None,
                                 hovertemplate="row %{y} / col %{x}: mean %{z:.4f}<extra></extra>",
                                 colorbar={"title": {"text": "mean dist."}}))
    labels = [f"{NORM_LABEL.get(k[0] + '/' + k[1], k[0] + '/' + k[1])} ({k[2]})" for k in keys]
    vis = [[j == i for j in range(len(keys))] for i in range(len(keys))]
    fig.update_layout(updatemenus=[_menu(labels, vis)], height=560, margin={"t": 90},
                      xaxis={"title": {"text": "class"}, "type": "category"},
                      yaxis={"title": {"text": "class"}, "autorange": "reversed", "type": "category"})
    return fig


def _budget_marks(table: Any, key: str) -> dict[str, np.ndarray]:
    if key not in table.keys:
        return {}
    b = table.budget(key)
    marks = {"ε (table)": b.eps}
    if "geometric" in b.components:
        marks["ε geometric"] = np.asarray(b.components["geometric"], float)
    return marks


def distance_distributions(pairs: dict[str, Any], table: Any, class_names: Sequence[str]) -> Any:
    """Per-class box plots of d_same and d_diff/2 (the two limits of a safe ball) with the budgets
    marked, one panel per space/norm (buttons)."""
    go = _go()
    names = [esc(c) for c in class_names]
    fig = go.Figure()
    groups = []
    for key, ps in pairs.items():
        idx = []
        xlab = np.asarray(names, dtype=object)[ps.query_labels]
        for what, vals, color in (("d_same", ps.nn.d_same, "#1f77b4"), ("d_diff / 2", ps.nn.d_diff / 2, "#ff7f0e")):
            idx.append(len(fig.data))
            fig.add_trace(go.Box(x=xlab, y=vals, name=what, marker_color=color, boxpoints=False,
                                 offsetgroup=what, legendgroup=what, visible=False))
        for j, (label, eps) in enumerate(_budget_marks(table, key).items()):
            idx.append(len(fig.data))
            fig.add_trace(go.Scatter(x=names, y=eps, mode="markers", name=label, visible=False,
                                     marker={"symbol": "line-ew-open" if j else "diamond", "size": 14,
                                             "color": "#d62728" if j == 0 else "#2ca02c", "line": {"width": 3}},
                                     hovertemplate="class %{x}: " + label + " %{y:.4f}<extra></extra>"))
        groups.append((key, idx))
    n = len(fig.data)
    vis = [[t in idx for t in range(n)] for _, idx in groups]
    for t in groups[0][1] if groups else []:
        fig.data[t].visible = True
    fig.update_layout(boxmode="group", height=520, margin={"t": 90},
                      updatemenus=[_menu([NORM_LABEL.get(k, k) for k, _ in groups], vis)],
                      xaxis={"title": {"text": "class"}, "type": "category", "categoryorder": "array",
                             "categoryarray": names},
                      yaxis={"title": {"text": "distance (calibration point → training set)"}})
    return fig


def coverage_curves(pairs: dict[str, Any], table: Any, class_names: Sequence[str], points: int = 200) -> Any:
    """Coverage vs eps per class: the share of class points whose ball is safe (eps < d_same and
    eps < d_diff/2). The table's per-class budget is a marker; the customary global eps a dashed line."""
    go = _go()
    names = [esc(c) for c in class_names]
    colors = palette(len(names))
    fig = go.Figure()
    groups, layouts = [], []
    for key, ps in pairs.items():
        limit = np.minimum(ps.nn.d_same, ps.nn.d_diff / 2)
        norm = key.split("/")[1]
        glob = CUSTOMARY.get(norm, ()) if key.startswith("input") else ()
        hi = max(float(np.quantile(limit, 0.99)) * 1.1, *(g * 1.1 for g in glob), 1e-6)
        grid = np.linspace(0, hi, points)
        idx = []
        eps_tab = _budget_marks(table, key).get("ε (table)")
        for c, name in enumerate(names):
            lc = np.sort(limit[ps.query_labels == c])
            if lc.size == 0:
                continue
            cov = 1.0 - np.searchsorted(lc, grid, side="right") / lc.size  # share with eps < limit
            idx.append(len(fig.data))
            fig.add_trace(go.Scatter(x=grid, y=cov, mode="lines", name=name, legendgroup=name, visible=False,
                                     line={"color": colors[c]},
                                     hovertemplate=f"class {name}: ε %{{x:.4f}} → coverage %{{y:.3f}}<extra></extra>"))
            if eps_tab is not None:
                e = float(eps_tab[c])
                idx.append(len(fig.data))
                fig.add_trace(go.Scatter(x=[e], y=[1.0 - np.searchsorted(lc, e, side="right") / lc.size],
                                         mode="markers", marker={"color": colors[c], "size": 10, "symbol": "diamond"},
                                         legendgroup=name, showlegend=False, visible=False,
                                         hovertemplate=f"class {name}: table ε %{{x:.4f}}, coverage %{{y:.3f}}<extra></extra>"))
        shapes = [{"type": "line", "x0": g, "x1": g, "y0": 0, "y1": 1, "yref": "paper",
                   "line": {"dash": "dash", "color": "black"}} for g in glob]
        notes = [{"x": g, "y": 1.02, "yref": "paper", "text": f"global ε {g:g}", "showarrow": False,
                  "font": {"size": 11}} for g in glob]
        groups.append((key, idx))
        layouts.append({"shapes": shapes, "annotations": notes,
                        "xaxis.title.text": f"ε ({NORM_LABEL.get(key, key)})"})
    n = len(fig.data)
    vis = [[t in idx for t in range(n)] for _, idx in groups]
    if groups:
        for t in groups[0][1]:
            fig.data[t].visible = True
        fig.update_layout(shapes=layouts[0]["shapes"], annotations=layouts[0]["annotations"],
                          xaxis_title_text=layouts[0]["xaxis.title.text"])
    fig.update_layout(updatemenus=[_menu([NORM_LABEL.get(k, k) for k, _ in groups], vis, layouts)], height=520,
                      margin={"t": 90}, yaxis={"title": {"text": "coverage (safe share of class)"}, "range": [0, 1.05]})
    return fig


def eps_table_chart(table: Any) -> Any:
    """The epsilon table, one panel per space/norm with its own axis: bars are the table's (final)
    budget; black dashes the geometric budget; the semantic bracket is a vertical bar from the
    certified (lower) to the empirical (upper) estimate of the judge, a triangle where only the
    empirical one exists. Input panels use a log axis so that budgets of one grey level and of
    half the range are both visible; a value of 0 cannot be drawn there and is listed in the hover."""
    from plotly.subplots import make_subplots

    go = _go()
    order = ["input/linf", "input/l2", "input/l1", "embedding/l2"]
    keys = sorted(table.keys, key=lambda k: order.index(k) if k in order else len(order))
    names = [esc(c) for c in table.class_names]
    fig = make_subplots(rows=len(keys), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[NORM_LABEL.get(k, k) + (" (log axis)" if k.startswith("input") else "")
                                        for k in keys])
    shown: set[str] = set()

    def legend(name: str) -> bool:
        first = name not in shown
        shown.add(name)
        return first

    for r, key in enumerate(keys, 1):
        b = table.budget(key)
        eps = b.eps
        err = None
        if b.interval is not None:  # the 95 % interval; an unbounded upper end is drawn to the panel's top
            hi = np.where(np.isfinite(b.interval[:, 1]), b.interval[:, 1], np.nanmax(np.r_[eps, 1e-9]) * 4)
            err = {"type": "data", "symmetric": False, "array": hi - eps, "arrayminus": eps - b.interval[:, 0],
                   "color": "#1f2d3d", "thickness": 1.5, "width": 4}
        custom = np.stack([b.coverage, *(b.interval.T if b.interval is not None else (eps, eps))], 1)
        fig.add_trace(go.Bar(x=names, y=eps, name="final ε (table), 95 % interval", showlegend=legend("final"),
                             legendgroup="final", marker_color="#4c78a8", customdata=custom, error_y=err,
                             hovertemplate="class %{x}: ε %{y:.4g} [%{customdata[1]:.4g}, %{customdata[2]:.4g}], "
                                           "coverage %{customdata[0]:.3f}<extra></extra>"),
                      row=r, col=1)
        if "geometric" in b.components:
            fig.add_trace(go.Scatter(x=names, y=b.components["geometric"], mode="markers", name="geometric ε",
                                     marker={"symbol": "line-ew-open", "size": 18, "color": "black",
                                             "line": {"width": 3}},
                                     showlegend=legend("geo"), legendgroup="geo",
                                     hovertemplate="class %{x}: geometric ε %{y:.4g}<extra></extra>"), row=r, col=1)
        sem = b.semantic
        if sem is not None:
            emp = np.array([np.nan if v is None else v for v in sem.empirical], float)
            cert = None if sem.certified is None else np.asarray(sem.certified, float)
            judge = esc(sem.judge)
            if cert is not None:
                fig.add_trace(go.Scatter(x=names, y=cert, mode="markers", name=f"semantic bracket ({judge})",
                                         error_y={"type": "data", "symmetric": False,
                                                  "array": np.nan_to_num(emp - cert),
                                                  "arrayminus": np.zeros_like(cert), "color": "#e45756", "thickness": 3,
                                                  "width": 8},
                                         marker={"symbol": "triangle-up", "size": 10, "color": "#e45756"},
                                         customdata=np.stack([cert, emp], 1), showlegend=legend("bracket"),
                                         legendgroup="bracket",
                                         hovertemplate="class %{x}: semantic [certified %{customdata[0]:.4g}, "
                                                       "empirical "
                                                       "%{customdata[1]:.4g}]<extra></extra>"), row=r, col=1)
            fig.add_trace(go.Scatter(x=names, y=emp, mode="markers", name=f"semantic, empirical (upper; {judge})",
                                     marker={"symbol": "triangle-down", "size": 11, "color": "#f58518"},
                                     showlegend=legend("emp"), legendgroup="emp",
                                     hovertemplate="class %{x}: semantic empirical %{y:.4g}<extra></extra>"),
                          row=r, col=1)
        if key.startswith("input"):
            fig.update_yaxes(type="log", row=r, col=1)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=names)
    fig.update_layout(height=max(320, 260 * len(keys)), margin={"t": 50}, barmode="overlay",
                      legend={"orientation": "h", "y": -0.08})
    return fig


def headline_breakdown(audits: dict[str, Any], class_names: Sequence[str], judge: str) -> Any:
    """Per attack (one panel each) and class: success rate, and among successful examples the share
    the judge calls class-preserving, the share that is perceptible, interpolated, and valid."""
    from plotly.subplots import make_subplots

    go = _go()
    names = [esc(c) for c in class_names]
    attacks = list(audits)
    metrics = (("success_rate", "successful", "#4c78a8"),
               ("class_preserving_among_successes", f"class-preserving | success (judge {esc(judge)})", "#54a24b"),
               ("perceptible_among_successes", "perceptible | success", "#e45756"),
               ("interpolated_among_successes", "interpolated | success", "#b279a2"),
               ("valid_among_successes", "VALID | success", "#f58518"))
    fig = make_subplots(rows=max(len(attacks), 1), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[esc(a) for a in attacks])
    for r, name in enumerate(attacks, 1):
        a = audits[name]
        y = a.arrays["labels"]
        per = {c: a.rates(y == c) for c in range(len(class_names)) if (y == c).any()}
        for key, label, color in metrics:
            vals = [per[c][key] if c in per else np.nan for c in range(len(class_names))]
            fig.add_trace(go.Bar(x=names, y=vals, name=label, marker_color=color, legendgroup=key, showlegend=r == 1,
                                 hovertemplate=f"{esc(name)}, class %{{x}}: {label} %{{y:.3f}}<extra></extra>"),
                          row=r, col=1)
        fig.update_yaxes(range=[0, 1.02], row=r, col=1)
    fig.update_xaxes(type="category")
    fig.update_layout(barmode="group", height=230 * max(len(attacks), 1) + 120, margin={"t": 40},
                      legend={"orientation": "h", "y": 1.02 + 0.25 / max(len(attacks), 1), "yanchor": "bottom"})
    return fig


def radii_boxes(radii: dict[str, dict[str, Any]], class_names: Sequence[str]) -> Any:
    """Per judge and norm (buttons), per class: the distribution of the judges' radii at the points they
    get right, invariance and adversarial (upper) and, where certified, certified (lower); log axis."""
    go = _go()
    names = np.asarray([esc(c) for c in class_names], dtype=object)
    fig = go.Figure()
    groups = []
    for judge, per_norm in radii.items():
        for norm, d in per_norm.items():
            idx = []
            lab = names[d["labels"]]
            for what, vals, color in (("invariance (upper)", d.get("invariance"), "#54a24b"),
                                      ("adversarial (upper)", d["empirical"], "#f58518"),
                                      ("certified (lower)", d.get("certified"), "#e45756")):
                if vals is None:
                    continue
                v = np.asarray(vals, float)
                ok = np.isfinite(v) & (v > 0) & ~np.asarray(d.get("clean_wrong", np.zeros(len(v), bool)), bool)
                idx.append(len(fig.data))
                fig.add_trace(go.Box(x=lab[ok], y=v[ok], name=what, marker_color=color, boxpoints=False,
                                     offsetgroup=what, legendgroup=what, visible=False))
            groups.append((f"{esc(judge)} {NORM_LABEL.get('input/' + norm, norm)}", idx))
    n = len(fig.data)
    vis = [[t in idx for t in range(n)] for _, idx in groups]
    for t in groups[0][1] if groups else []:
        fig.data[t].visible = True
    fig.update_layout(boxmode="group", height=480, margin={"t": 90},
                      updatemenus=[_menu([g for g, _ in groups], vis)] if groups else [],
                      xaxis={"title": {"text": "class"}, "type": "category", "categoryorder": "array",
                             "categoryarray": list(names)},
                      yaxis={"title": {"text": "radius (log)"}, "type": "log"})
    return fig


def embedding_scatter(proj: dict[str, np.ndarray], class_names: Sequence[str]) -> Any:
    """PCA and t-SNE of the embedding, coloured by class; hover shows dataset index and label."""
    go = _go()
    names = [esc(c) for c in class_names]
    colors = palette(len(names))
    fig = go.Figure()
    views = [v for v in ("tsne", "pca") if v in proj]
    groups = []
    for v in views:
        idx = []
        xy = proj[v]
        for c, name in enumerate(names):
            m = proj["labels"] == c
            if not m.any():
                continue
            idx.append(len(fig.data))
            fig.add_trace(go.Scatter(x=xy[m, 0], y=xy[m, 1], mode="markers", name=name, legendgroup=name,
                                     visible=v == views[0], showlegend=True,
                                     marker={"color": colors[c], "size": 5, "opacity": 0.8},
                                     customdata=proj["indices"][m],
                                     hovertemplate=f"index %{{customdata}}<br>label {name}<extra></extra>"))
        groups.append((v, idx))
    n = len(fig.data)
    vis = [[t in idx for t in range(n)] for _, idx in groups]
    fig.update_layout(updatemenus=[_menu([{"tsne": "t-SNE", "pca": "PCA"}[v] for v, _ in groups], vis)],
                      height=600, margin={"t": 80}, xaxis={"showticklabels": False},
                      yaxis={"showticklabels": False, "scaleanchor": "x"})
    return fig


def _verdict(a: dict[str, np.ndarray], i: int) -> str:
    if a["valid"][i]:
        return "VALID"
    if not a["success"][i]:
        return "not successful"
    why = [w for w, f in (("perceptible", "perceptible"), ("class changed", "class_changed"),
                          ("interpolated", "interpolated")) if a[f][i]]
    return "invalid: " + ", ".join(why)


def pick_gallery(audit_arrays: dict[str, np.ndarray], per_class: int, seed: int = 0) -> list[int]:
    """Up to ``per_class`` examples per class: successful ones first (seeded order), then others."""
    rng = np.random.default_rng(seed)
    y = audit_arrays["labels"]
    out = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        idx = np.concatenate([idx[audit_arrays["success"][idx]], idx[~audit_arrays["success"][idx]]])
        out += idx[:per_class].tolist()
    return out


def _img(x: np.ndarray) -> np.ndarray:
    """A grey image (H, W) for one (C, H, W) image: the image itself, or the channels' mean."""
    return x.mean(0) if x.shape[0] > 1 else x[0]


def image_trace(x: np.ndarray, hovertemplate: str | None = "(%{x}, %{y}) %{z:.3f}<extra></extra>",
                **kwargs: Any) -> Any:
    """One (C, H, W) image in [0,1] as a trace: grey (1 channel) as a heat map on a grey scale, colour
    (3 channels) as an RGB image."""
    go = _go()
    if x.shape[0] == 3:
        rgb = np.clip(np.round(np.transpose(x, (1, 2, 0)) * 255), 0, 255).astype(np.uint8)
        return go.Image(z=rgb, hovertemplate="(%{x}, %{y}) rgb %{z}<extra></extra>" if hovertemplate else None,
                        hoverinfo=None if hovertemplate else "skip")
    kw = {"hovertemplate": hovertemplate} if hovertemplate else {"hoverinfo": "skip"}
    return go.Heatmap(z=_img(x), colorscale="gray", zmin=0, zmax=1, showscale=False, **kw, **kwargs)


def perturbation_plane(x: np.ndarray, x_adv: np.ndarray) -> tuple[np.ndarray, bool]:
    """The perturbation of one image as a plane: signed (grey), or its magnitude per pixel, the largest
    change over the channels (colour); and whether it is signed."""
    d = x_adv.astype(np.float64) - x.astype(np.float64)
    if d.shape[0] == 1:
        return d[0], True
    return np.abs(d).max(0), False


def gallery(x: np.ndarray, x_adv: np.ndarray, audit_arrays: dict[str, np.ndarray], class_names: Sequence[str],
            picks: list[int]) -> dict[str, Any]:
    """Rows of (original, perturbation (signed on a diverging scale, or its magnitude in colour), adversarial),
    two examples per row, each titled with the prediction and the audit verdict."""
    go = _go()
    names = [esc(c) for c in class_names]
    per_row = 2
    rows = (len(picks) + per_row - 1) // per_row
    titles = []
    for i in picks:
        a = audit_arrays
        titles += [f"#{int(a['indices'][i])} class {names[a['labels'][i]]}",
                   f"δ (L∞ {a['linf'][i]:.3f}, SSIM {a['ssim'][i]:.2f})",
                   f"f → {names[a['pred_adv'][i]]}: {_verdict(a, i)}"]
    grid = ImageGrid(max(rows, 1), 3 * per_row, titles=titles, horizontal_spacing=0.015,
                     vertical_spacing=0.35 / max(rows, 1), title_size=10)
    dmax = max(float(np.abs(x_adv[picks] - x[picks]).max()) if picks else 0.0, 1e-6)
    for j, i in enumerate(picks):
        r, c0 = j // per_row + 1, (j % per_row) * 3 + 1
        d, signed = perturbation_plane(x[i], x_adv[i])
        grid.add(image_trace(x[i]), r, c0)
        grid.add(go.Heatmap(z=d, colorscale="RdBu" if signed else "Reds", zmin=-dmax if signed else 0,
                            zmax=dmax, showscale=j == 0,
                            colorbar={"title": {"text": "δ" if signed else "|δ| max over RGB"}, "len": 0.3,
                                      "y": 1, "yanchor": "top"},
                            hovertemplate="(%{x}, %{y}) %{z:.3f}<extra></extra>"), r, c0 + 1)
        grid.add(image_trace(x_adv[i]), r, c0 + 2)
    return grid.figure(height=190 * max(rows, 1) + 60, margin={"t": 40, "l": 10, "r": 10, "b": 10})


def probe_gallery(probe: dict[str, np.ndarray], class_names: Sequence[str]) -> dict[str, Any]:
    """The class-mixing probe x0 + eps sign(x1): one image per ordered class pair (row = class of
    x0, column = class of the stamped x1), titled with f's prediction and the run judge's label."""
    names = [esc(c) for c in class_names]
    k = len(names)
    grid_of = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(probe["class0"], probe["class1"]))}
    titles = []
    for a in range(k):
        for b in range(k):
            i = grid_of.get((a, b))
            titles.append("" if i is None else
                          f"+{names[b]}: f {names[probe['pred'][i]]} · judge {names[probe['judge_label'][i]]}")
    grid = ImageGrid(k, k, titles=titles, row_titles=[f"x0: {n}" for n in names], horizontal_spacing=0.01,
                     vertical_spacing=0.03, title_size=9)
    for (a, b), i in grid_of.items():
        grid.add(image_trace(probe["images"][i],
                             hovertemplate=f"x0 #{int(probe['index0'][i])} ({names[a]}) + ε·sign(x1 #"
                                           f"{int(probe['index1'][i])} ({names[b]}))<extra></extra>"), a + 1, b + 1)
    return grid.figure(height=95 * k + 80, margin={"t": 50, "l": 10, "r": 40, "b": 10})


def roc_curves(validation: dict[str, Any]) -> Any:
    """ROC curves of every judge's "class changed" score against people's relabelling (all sets)."""
    go = _go()
    fig = go.Figure()
    for name, j in validation["judges"].items():
        roc = j["all"].get("roc") or {}
        auc = j["all"].get("auc")
        label = f"{esc(name)} (AUC {auc:.3f})" if auc is not None else esc(name)
        fig.add_trace(go.Scatter(x=roc.get("fpr", []), y=roc.get("tpr", []), mode="lines", name=label,
                                 hovertemplate=f"{esc(name)}: FPR %{{x:.3f}}, TPR %{{y:.3f}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "grey"}))
    fig.update_layout(height=460, width=640, margin={"t": 30},
                      xaxis={"title": {"text": "false positive rate"}, "range": [0, 1.0]},
                      yaxis={"title": {"text": "true positive rate (people relabelled)"}, "range": [0, 1.02]})
    return fig


def disagreement_gallery(items: list[dict[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """Pairs (perturbed image, source image) where the judge and people disagree, titled with the
    person's label and the judge's."""
    names = [esc(c) for c in class_names]
    per_row = 3
    rows = max(1, (len(items) + per_row - 1) // per_row)
    titles = []
    for it in items:
        h = "unclear" if it["human"] < 0 else names[it["human"]]
        titles += [f"{esc(it['set'])} #{it['index']}: person {h}",
                   f"judge {names[it['judge']]} · source {names[it['source']]}"]
    grid = ImageGrid(rows, 2 * per_row, titles=titles, horizontal_spacing=0.02, vertical_spacing=0.3 / rows,
                     title_size=10)
    for j, it in enumerate(items):
        r, c0 = j // per_row + 1, (j % per_row) * 2 + 1
        for k, img in enumerate((it["x"], it["x0"])):
            grid.add(image_trace(img), r, c0 + k)
    return grid.figure(height=200 * rows + 60, margin={"t": 40, "l": 10, "r": 10, "b": 10})


def relabel_curves(curves: dict[str, dict[str, Any]], class_names: Sequence[str]) -> Any:
    """Per norm (one panel each): the judge's relabel rate of one-target invariance examples against eps,
    overall and per class, the union over all targets (what the budget uses), and people's published
    rates where there are any (Tramèr et al.'s automated L-inf attack on MNIST)."""
    from plotly.subplots import make_subplots

    go = _go()
    norms = list(curves)
    fig = make_subplots(rows=1, cols=len(norms), subplot_titles=[NORM_LABEL.get("input/" + n, n) for n in norms])
    colors = palette(len(class_names))
    for col, norm in enumerate(norms, 1):
        doc = curves[norm]
        eps = doc["eps"]
        for c, name in enumerate(class_names):
            fig.add_trace(go.Scatter(x=eps, y=doc["relabel_rate"].get(name), mode="lines", name=esc(name),
                                     line={"color": colors[c], "width": 1}, opacity=0.6, legendgroup=f"c{c}",
                                     showlegend=col == 1,
                                     hovertemplate=f"class {esc(name)}: ε %{{x}}, judge relabels %{{y:.3f}}"
                                                   "<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Scatter(x=eps, y=doc["relabel_rate"]["all"], mode="lines+markers", name="judge, one target",
                                 line={"color": "black", "width": 3}, legendgroup="all", showlegend=col == 1,
                                 hovertemplate="all classes: ε %{x}, judge relabels %{y:.3f}<extra></extra>"),
                      row=1, col=col)
        if doc.get("union_all_targets"):
            fig.add_trace(go.Scatter(x=eps, y=doc["union_all_targets"], mode="lines", name="judge, any target (budget)",
                                     line={"color": "black", "dash": "dot"}, legendgroup="union",
                                     showlegend=col == 1), row=1, col=col)
        people = doc.get("people")
        if people:
            fig.add_trace(go.Scatter(x=people["eps"], y=people["relabel_rate"], mode="markers", name="people (published)",
                                     marker={"symbol": "star", "size": 16, "color": "#e45756"}, legendgroup="people",
                                     showlegend=True,
                                     hovertemplate="people relabelled %{y:.0%} at ε %{x}<extra></extra>"),
                          row=1, col=col)
        fig.update_xaxes(title_text="ε", row=1, col=col)
        fig.update_yaxes(title_text="share relabelled", range=[0, 1], row=1, col=col)
    fig.update_layout(height=420, margin={"t": 50})
    return fig
