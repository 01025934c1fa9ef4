"""Check a report in headless Chromium: it loads offline with no console errors and every figure
renders (Plotly drew its SVG); optionally take a screenshot of each section.

Uses the system ``chromium`` (Debian: ``apt-get install -y chromium``). The check loads a copy of
the report with a small probe script injected first in ``<head>`` that records uncaught errors and
``console.error`` calls, then, after load, writes what it saw into the DOM, which ``--dump-dom``
returns. Network access is disabled for the browser, so anything the page would fetch fails.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from calib.errors import CalibError

PROBE = """<script>
window.__calibErrors=[];
window.addEventListener('error',function(e){window.__calibErrors.push('uncaught: '+(e.message||e.type)+
  (e.target&&e.target.src?' '+e.target.src:''));},true);
(function(){var oe=console.error;console.error=function(){window.__calibErrors.push('console.error: '+
  Array.prototype.map.call(arguments,String).join(' '));return oe.apply(console,arguments);};})();
window.addEventListener('load',function(){setTimeout(function(){
  var figs=Array.prototype.map.call(document.querySelectorAll('.figure'),function(f){
    return {name:f.dataset.figure,rendered:!!f.querySelector('svg.main-svg'),
            traces:(f.data||[]).length,width:f.offsetWidth,height:f.offsetHeight};});
  var ext=Array.prototype.filter.call(document.querySelectorAll('script[src],link[href],img[src],iframe[src]'),
    function(e){return /^https?:/.test(e.getAttribute('src')||e.getAttribute('href')||'');}).map(function(e){
    return e.getAttribute('src')||e.getAttribute('href');});
  var d=document.createElement('pre');d.id='calib-check';
  d.textContent=JSON.stringify({errors:window.__calibErrors,figures:figs,external:ext,
    sections:Array.prototype.map.call(document.querySelectorAll('section'),function(s){return s.id;})});
  document.body.appendChild(d);},300);});
</script>"""

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions",
         "--disable-background-networking", "--no-first-run", "--no-default-browser-check", "--mute-audio",
         "--hide-scrollbars", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>")


class BrowserError(CalibError):
    """Chromium is missing or the page could not be checked."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``$CALIB_CHROMIUM`` first), or ``None``."""
    env = os.environ.get("CALIB_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@dataclass
class PageCheck:
    """What the browser saw: errors, figures (name, rendered, traces, size), external resources."""

    errors: list[str]
    figures: list[dict]
    external: list[str]
    sections: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.external and bool(self.figures) and all(
            f["rendered"] and f["traces"] > 0 for f in self.figures)

    def problems(self) -> list[str]:
        out = list(self.errors) + [f"external resource {u}" for u in self.external]
        out += [f"figure {f['name']} did not render" for f in self.figures if not (f["rendered"] and f["traces"])]
        if not self.figures:
            out.append("no figures on the page")
        return out


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BrowserError(f"chromium did not finish within {timeout:.0f} s") from exc


def check_page(path: str | os.PathLike[str], chromium: str | None = None, timeout: float = 180.0,
               budget_ms: int = 30000) -> PageCheck:
    """Load ``path`` in headless Chromium and report errors and figure rendering."""
    exe = chromium or find_chromium()
    if exe is None:
        raise BrowserError("no chromium found (Debian: apt-get install -y chromium, or set $CALIB_CHROMIUM)")
    text = Path(path).read_text(encoding="utf-8")
    head = text.find("<head>")
    if head < 0:
        raise BrowserError(f"{path}: no <head> element")
    with tempfile.TemporaryDirectory(prefix="calib-check-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(text[:head + 6] + PROBE + text[head + 6:], encoding="utf-8")
        res = _run([exe, *FLAGS, f"--user-data-dir={tmp}/profile", f"--virtual-time-budget={budget_ms}",
                    "--dump-dom", page.as_uri()], timeout)
    m = re.search(r'<pre id="calib-check">(.*?)</pre>', res.stdout, re.S)
    if not m:
        tail = (res.stderr or "").strip().splitlines()[-3:]
        raise BrowserError(f"the page did not finish loading in chromium (exit {res.returncode}): {' | '.join(tail)}")
    doc = json.loads(html.unescape(m.group(1)))
    return PageCheck(doc["errors"], doc["figures"], doc["external"], doc.get("sections", []))


def screenshot_sections(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], sections: list[str],
                        chromium: str | None = None, width: int = 1400, height: int = 2600,
                        timeout: float = 180.0, show_progress: bool = False) -> list[Path]:
    """One PNG per section (``report.html#only=<id>``), trimmed of the empty space below it; a progress
    bar per section (each takes a Chromium start, several seconds)."""
    from calib.progress import progress

    exe = chromium or find_chromium()
    if exe is None:
        raise BrowserError("no chromium found (Debian: apt-get install -y chromium, or set $CALIB_CHROMIUM)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uri = Path(path).resolve().as_uri()
    shots = []
    with progress(show_progress) as bar:
        task = bar.add_task("screenshots", total=len(sections), status="")
        for sid in sections:
            bar.update(task, status=sid)
            shots.append(_screenshot(exe, uri, out_dir, sid, width, height * 3 if sid == "galleries" else height,
                                     timeout))
            bar.advance(task)
    return shots


def _screenshot(exe: str, uri: str, out_dir: Path, sid: str, width: int, h: int, timeout: float) -> Path:
    png = out_dir / f"{sid}.png"
    with tempfile.TemporaryDirectory(prefix="calib-shot-") as tmp:
        res = _run([exe, *FLAGS, f"--user-data-dir={tmp}", "--virtual-time-budget=30000",
                    f"--window-size={width},{h}", f"--screenshot={png}", f"{uri}#only={sid}"], timeout)
    if not png.exists():
        raise BrowserError(f"no screenshot of section {sid} (exit {res.returncode})")
    _trim(png)
    return png


def _trim(png: Path) -> None:
    """Cut the uniform background below the content (Pillow, if installed)."""
    try:
        import numpy as np
        from PIL import Image
    except ImportError:  # pragma: no cover
        return
    img = Image.open(png).convert("RGB")
    a = np.asarray(img)
    rows = np.flatnonzero((np.abs(a.astype(int) - a[-1:, :, :].astype(int)).sum(2) > 0).any(1))
    if rows.size:
        img.crop((0, 0, a.shape[1], min(a.shape[0], int(rows[-1]) + 20))).save(png)
