"""The page a report is written into: styles, the sortable-table script, a :class:`Page` that collects
HTML and Plotly figures (their JSON embedded so no string can close the script element), and
:func:`html_table`, whose every cell is escaped."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from calib.report.figures import esc

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


class Page:
    """HTML parts in order, and the Plotly figures among them (numbered, so each div id is unique)."""

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


def fmt(v: Any, digits: int = 4) -> str:
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
            tds.append(f'<td class="l"{num}>{fmt(v)}</td>' if i < left else f"<td{num}>{fmt(v)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="scroll"><table{cls}><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table></div>")


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an ``.npz`` (never unpickled), or ``None`` when it does not exist."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
