"""The report's image grid against plotly's make_subplots (the reference): the same panel domains, anchors
and title annotations; every figure dict it builds is valid Plotly (validated by go.Figure)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from calib.report.figures import disagreement_gallery, gallery, image_trace, probe_gallery
from calib.report.grid import ImageGrid


def _reference(rows, cols, titles, row_titles, hs, vs, size):
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, row_titles=row_titles, horizontal_spacing=hs,
                        vertical_spacing=vs)
    fig.update_annotations(font_size=size)
    return fig.to_plotly_json()["layout"]


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 6), titled=st.booleans(), row_titled=st.booleans(),
       hs=st.sampled_from([0.01, 0.015, 0.02]), vs=st.sampled_from([0.0, 0.03, 0.05]), data=st.data())
def test_grid_lays_out_panels_and_titles_as_make_subplots(rows, cols, titled, row_titled, hs, vs, data):
    titles = [data.draw(st.sampled_from(["", "a", "<b>t</b>"])) for _ in range(rows * cols)] if titled else None
    row_titles = [f"r{r}" for r in range(rows)] if row_titled else None
    ref = _reference(rows, cols, titles, row_titles, hs, vs, 9)
    grid = ImageGrid(rows, cols, titles=titles, row_titles=row_titles, horizontal_spacing=hs, vertical_spacing=vs,
                     title_size=9)
    got = grid.figure()["layout"]
    for name, axis in ref.items():
        if name.startswith(("xaxis", "yaxis")):
            assert got[name]["anchor"] == axis["anchor"], name
            np.testing.assert_allclose(got[name]["domain"], axis["domain"], rtol=0, atol=1e-12, err_msg=name)
    assert {k for k in got if k.startswith(("xaxis", "yaxis"))} == {k for k in ref if k.startswith(("xaxis", "yaxis"))}
    ref_ann = ref.get("annotations", [])
    assert len(got["annotations"]) == len(ref_ann)
    for a, b in zip(got["annotations"], ref_ann):
        assert {k: a[k] for k in b if k not in ("x", "y")} == {k: b[k] for k in b if k not in ("x", "y")}
        assert a["x"] == pytest.approx(b["x"], abs=1e-12) and a["y"] == pytest.approx(b["y"], abs=1e-12)


def test_grid_places_traces_and_hides_axes():
    grid = ImageGrid(2, 3)
    grid.add(image_trace(np.zeros((1, 4, 4))), 1, 1)
    grid.add({"type": "heatmap", "z": [[0, 1]]}, 2, 3)
    fig = grid.figure(height=300)
    assert [(t["xaxis"], t["yaxis"]) for t in fig["data"]] == [("x", "y"), ("x6", "y6")]
    assert fig["layout"]["height"] == 300
    y6 = fig["layout"]["yaxis6"]
    assert y6["autorange"] == "reversed" and y6["scaleanchor"] == "x6" and not y6["showticklabels"]
    with pytest.raises(IndexError):
        grid.add({"type": "heatmap"}, 3, 1)
    with pytest.raises(ValueError):
        ImageGrid(0, 2)


def test_gallery_figures_are_valid_plotly():
    import plotly.graph_objects as go

    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 8, 8))
    x_adv = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1)
    x3 = rng.random((4, 3, 8, 8))  # colour images: RGB traces and the perturbation's magnitude
    audit = {"indices": np.arange(4), "labels": np.array([0, 0, 1, 1]), "linf": np.full(4, 0.1),
             "ssim": np.full(4, 0.9), "pred_adv": np.array([1, 0, 0, 1]), "valid": np.array([1, 0, 0, 0], bool),
             "success": np.array([1, 0, 1, 0], bool), "perceptible": np.array([0, 0, 1, 0], bool),
             "class_changed": np.zeros(4, bool), "interpolated": np.zeros(4, bool)}
    names = ["<zero>", "one"]
    probe = {"class0": np.array([0, 1]), "class1": np.array([1, 0]), "pred": np.array([0, 1]),
             "judge_label": np.array([0, 1]), "images": x[:2], "index0": np.array([3, 4]), "index1": np.array([5, 6])}
    items = [{"set": "s", "index": 1, "human": -1, "judge": 0, "source": 1, "x": x[0], "x0": x[1]}]
    for fig in (gallery(x, x_adv, audit, names, [0, 1, 2, 3]), probe_gallery(probe, names),
                disagreement_gallery(items, names), gallery(x3, x3[::-1], audit, names, [1, 2])):
        go.Figure(fig)  # raises on any property Plotly does not know
        text = str(fig)
        assert "<zero>" not in text and "&lt;zero&gt;" in text  # names are escaped before Plotly renders them
