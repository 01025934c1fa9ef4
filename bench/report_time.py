"""Benchmark: the report's seconds per section, and its image grids against plotly's make_subplots.

    python bench/report_time.py RUN [--threads 1]

RUN is any run folder (``calib run ... --out RUN``). Prints the seconds of every report section, then, for
the galleries of RUN's attacks and the class-mixing probe, the seconds of :class:`calib.report.grid.ImageGrid`
against the reference measured in the same run: ``make_subplots`` with the same panels and titles, the
same traces added, then ``update_xaxes``/``update_yaxes``, square pixels per axis and the annotations' font
(what the report did before the grid), and the ratio.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _reference(rows, cols, titles, row_titles, hs, vs, size, placed, height):
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, row_titles=row_titles, horizontal_spacing=hs,
                        vertical_spacing=vs)
    for trace, r, c in placed:
        fig.add_trace(trace, row=r, col=c)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    for name in list(fig.layout):
        if name.startswith("yaxis"):
            fig.layout[name].scaleanchor = "x" + name[5:]
            fig.layout[name].constrain = "domain"
            fig.layout["xaxis" + name[5:]].constrain = "domain"
    fig.update_annotations(font_size=size)
    fig.update_layout(height=height)
    return fig


def _grid(rows, cols, titles, row_titles, hs, vs, size, placed, height):
    from calib.report.grid import ImageGrid

    g = ImageGrid(rows, cols, titles=titles, row_titles=row_titles, horizontal_spacing=hs, vertical_spacing=vs,
                  title_size=size)
    for trace, r, c in placed:
        g.add(trace, r, c)
    return g.figure(height=height)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import plotly.io as pio

    from calib.report import build
    from calib.report import sections as S
    from calib.report.figures import image_trace
    from calib.runfolder import RunFolder

    run = RunFolder.open(args.run)
    times: dict[str, float] = {}

    def timed(sid, fn):
        def wrapped(*a, **k):
            t = time.perf_counter()
            fn(*a, **k)
            times[sid] = time.perf_counter() - t
        return wrapped

    sections = list(S.SECTIONS)
    build._SECTIONS = [(sid, title, timed(sid, fn)) for sid, title, fn in sections]
    t = time.perf_counter()
    build.write_report(run, run.path / "bench-report.html")
    total = time.perf_counter() - t
    (run.path / "bench-report.html").unlink()
    build._SECTIONS = sections
    print(f"report: {total:.2f} s on {args.threads} thread(s); by section:")
    for sid, s in times.items():
        print(f"  {sid:<14} {s:7.2f} s")

    rng = np.random.default_rng(0)
    shape = run.split("test").images.shape[1:]
    cases = {"gallery (10 rows of 2 examples)": (10, 6, 0.015, 0.035, 10, None),
             "probe (10 x 10)": (10, 10, 0.01, 0.03, 9, [f"x0: {c}" for c in range(10)])}
    print("\nimage grids, same panels and traces (median of 3):")
    print(f"  {'figure':<34} {'make_subplots':>14} {'ImageGrid':>10} {'ratio':>7}")
    for name, (rows, cols, hs, vs, size, row_titles) in cases.items():
        titles = [f"panel {i}" for i in range(rows * cols)]
        placed = [(image_trace(rng.random(shape)), r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]
        out = {}
        for label, fn in (("reference", _reference), ("grid", _grid)):
            runs = []
            for _ in range(3):
                t = time.perf_counter()
                pio.to_json(fn(rows, cols, titles, row_titles, hs, vs, size, placed, 400), validate=False)
                runs.append(time.perf_counter() - t)
            out[label] = float(np.median(runs))
        print(f"  {name:<34} {out['reference']:12.3f} s {out['grid']:8.3f} s {out['reference'] / out['grid']:6.1f}x")


if __name__ == "__main__":
    main()
