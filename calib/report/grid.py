"""A grid of images as one Plotly figure, built as a plain figure dict.

``plotly.subplots.make_subplots`` and ``update_xaxes``/``update_yaxes`` validate every axis property on
every call: the report's galleries (up to 10 × 10 image panels) spent 4.8 of the report's 5.8 s there on
digits; ``bench/report_time.py`` measures a grid about 100× faster this way. :class:`ImageGrid` lays the panels out with the same
domains and title annotations ``make_subplots`` computes (``tests/test_report_grid.py`` checks them
against it) and writes the dict once, which ``plotly.io.to_json(..., validate=False)`` serialises as is.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence


@lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    """The default Plotly template, as ``go.Figure`` would carry it (so a grid looks like every other figure)."""
    import plotly.io as pio

    return pio.templates[pio.templates.default].to_plotly_json()


def _trace_dict(trace: Any) -> dict[str, Any]:
    return dict(trace) if isinstance(trace, dict) else trace.to_plotly_json()


class ImageGrid:
    """``rows`` × ``cols`` image panels: row 1 at the top, pixel row 0 at the top of each panel, square
    pixels, no ticks or grid; optional titles above the panels (row-major, an empty title is none) and
    beside the rows (right edge), as ``make_subplots(subplot_titles=..., row_titles=...)`` places them."""

    def __init__(self, rows: int, cols: int, *, titles: Sequence[str] | None = None,
                 row_titles: Sequence[str] | None = None, horizontal_spacing: float = 0.02,
                 vertical_spacing: float = 0.03, title_size: int = 16) -> None:
        if rows < 1 or cols < 1:
            raise ValueError(f"an image grid needs at least one row and one column, not {rows} × {cols}")
        max_width = 0.98 if row_titles else 1.0
        width = (max_width - horizontal_spacing * (cols - 1)) / cols
        height = (1.0 - vertical_spacing * (rows - 1)) / rows
        self.rows, self.cols = rows, cols
        self.x_domains = [(c * (width + horizontal_spacing), c * (width + horizontal_spacing) + width)
                          for c in range(cols)]
        self.y_domains = [((rows - 1 - r) * (height + vertical_spacing), (rows - 1 - r) * (height + vertical_spacing)
                           + height) for r in range(rows)]
        self.data: list[dict[str, Any]] = []
        self.layout: dict[str, Any] = {"template": _template(), "annotations": []}
        font = {"size": title_size}
        for n in range(rows * cols):
            r, c = divmod(n, cols)
            sx = "" if n == 0 else str(n + 1)
            common = {"showticklabels": False, "showgrid": False, "zeroline": False, "constrain": "domain"}
            self.layout["xaxis" + sx] = {"anchor": "y" + sx, "domain": list(self.x_domains[c]), **common}
            self.layout["yaxis" + sx] = {"anchor": "x" + sx, "domain": list(self.y_domains[r]), **common,
                                         "autorange": "reversed", "scaleanchor": "x" + sx}
        for n, text in enumerate(titles or []):
            if text and n < rows * cols:
                r, c = divmod(n, cols)
                self.layout["annotations"].append(
                    {"y": self.y_domains[r][1], "xref": "paper", "x": sum(self.x_domains[c]) / 2.0, "yref": "paper",
                     "text": text, "showarrow": False, "font": font, "xanchor": "center", "yanchor": "bottom"})
        for r, text in enumerate(row_titles or []):
            if text and r < rows:
                self.layout["annotations"].append(
                    {"y": sum(self.y_domains[r]) / 2.0, "xref": "paper", "x": self.x_domains[-1][1], "yref": "paper",
                     "text": text, "showarrow": False, "font": font, "xanchor": "left", "yanchor": "middle",
                     "textangle": 90})

    def add(self, trace: Any, row: int, col: int) -> None:
        """Place a trace (a ``go`` trace or its dict) in panel (``row``, ``col``), both from 1."""
        if not (1 <= row <= self.rows and 1 <= col <= self.cols):
            raise IndexError(f"panel ({row}, {col}) is outside a {self.rows} × {self.cols} grid")
        n = (row - 1) * self.cols + col
        sx = "" if n == 1 else str(n)
        self.data.append({**_trace_dict(trace), "xaxis": "x" + sx, "yaxis": "y" + sx})

    def figure(self, **layout: Any) -> dict[str, Any]:
        """The figure dict (``data``, ``layout``), with ``layout`` keys (height, margin, ...) set on top."""
        return {"data": self.data, "layout": {**self.layout, **layout}}
