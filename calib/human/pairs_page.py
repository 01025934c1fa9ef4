"""The perceptibility page (``calib label RUN --task perceptibility``), on 127.0.0.1 only.

Two images side by side, large: a clean image and a perturbed copy (or the same image twice, a
control), in random order. The person presses ``s`` or ``f`` for *same*, ``d`` or ``j`` for
*different*, Backspace to go back. Each answer is posted to the server, which saves the session
atomically (:mod:`calib.human.pairs`) before replying. When the last pair is answered the page asks
the server to fit people's thresholds over every perceptibility session of the run
(:mod:`calib.human.perceptibility`, written to ``RUN/human/perceptibility.json``) and shows them; the
server fits again when it stops, so a session stopped half-way counts too. No external assets: the
page, its script and the images come from this process; every string is set as text, never as HTML.
"""
from __future__ import annotations

import base64
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable

from calib.human.pairs import PairSession, summary
from calib.human.server import PageHandler, bind, png_bytes, serve_until_stopped
from calib.human.session import NOT_ANSWERED

KEYS = {"s": 0, "f": 0, "d": 1, "j": 1}

PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>calib: same or different?</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#808080;color:#111;text-align:center}
header{background:#1f2d3d;color:#fff;padding:10px}#pair{display:flex;justify-content:center;gap:48px;margin:22px auto}
#pair img{width:336px;height:336px;image-rendering:pixelated;border:1px solid #555;background:#000}
#keys span{display:inline-block;margin:3px 6px;padding:3px 8px;border:1px solid #bbb;border-radius:4px;background:#fff}
#msg{min-height:1.4em;color:#222}table{margin:10px auto;border-collapse:collapse;background:#fff}
td,th{border:1px solid #ccc;padding:3px 10px}
</style></head><body><header><b>calib</b> · perceptibility session <span id="session"></span> ·
<span id="progress"></span></header>
<p>Are the two images <b>the same</b> or <b>different</b>? Look as long as you like; Backspace = back.</p>
<div id="pair" data-item=""><img id="left" alt="left image"><img id="right" alt="right image"></div>
<div id="keys"><span>s or f = same</span><span>d or j = different</span><span>Backspace = back</span></div>
<p id="msg"></p><div id="done"></div>
<script>
"use strict";
var KEYS={"s":0,"f":0,"d":1,"j":1}, state=null, cur=0, busy=false;
function el(tag,text){var e=document.createElement(tag);if(text!==undefined)e.textContent=String(text);return e;}
function get(url){return fetch(url,{cache:"no-store"}).then(function(r){if(!r.ok)throw new Error(url);return r.json();});}
function post(url,obj){return fetch(url,{method:"POST",headers:{"Content-Type":"application/json"},body:JSON.stringify(obj)})
  .then(function(r){if(!r.ok)throw new Error(url);return r.json();});}
function word(a){return a===1?"different":"same";}
function show(i){
  cur=i; document.getElementById("progress").textContent=Math.min(i+1,state.total)+" / "+state.total+
    " ("+state.answered+" answered)";
  if(i>=state.total){finish();return;}
  document.getElementById("done").textContent="";
  get("/api/pair?i="+i).then(function(p){
    document.getElementById("left").src="data:image/png;base64,"+p.left;
    document.getElementById("right").src="data:image/png;base64,"+p.right;
    document.getElementById("pair").dataset.item=String(i);
    document.getElementById("msg").textContent=p.answer===null?"":"your answer: "+word(p.answer);
  });
}
function fmt(v){return v===null||v===undefined?"open":Number(v).toFixed(4);}
function row(t,name,f){var tr=el("tr");
  [name,f.n,f.n_different,f.threshold===null?"–":fmt(f.threshold),
   f.ci95_ssim?fmt(f.ci95_ssim[0])+" – "+fmt(f.ci95_ssim[1]):"–",f.reason||""].forEach(function(x){tr.appendChild(el("td",x));});
  t.appendChild(tr);}
function finish(){
  document.getElementById("pair").dataset.item=String(state.total);
  document.getElementById("msg").textContent="All pairs answered; saved. Fitting…";
  post("/api/fit",{}).then(function(d){
    var box=document.getElementById("done"); box.textContent="";
    box.appendChild(el("h3","Done: your just-noticeable difference (SSIM where you say 'different' half the time)"));
    var t=el("table"), h=el("tr");
    ["class","pairs","different","JND (SSIM)","95% interval","no threshold because"].forEach(function(x){h.appendChild(el("th",x));});
    t.appendChild(h);
    Object.keys(d.per_class).forEach(function(k){row(t,k,d.per_class[k]);}); row(t,"pooled",d.pooled);
    box.appendChild(t);
    box.appendChild(el("p","Identical pairs called different: "+d.controls.false_alarms+" of "+d.controls.n+
      " (sessions: "+d.sessions.join(", ")+")"));
    document.getElementById("msg").textContent="All pairs answered; saved; fit written.";
  }).catch(function(){document.getElementById("msg").textContent="answers saved; the fit failed (see the console running calib)";});
}
function answer(v){
  if(busy||cur>=state.total)return; busy=true;
  post("/api/answer",{item:cur,different:v}).then(function(s){state=s; busy=false;
      var nxt=cur+1; while(nxt<state.total&&state.answers[nxt]!==null)nxt++;
      if(nxt>=state.total&&state.next<state.total)nxt=state.next; show(nxt);})
   .catch(function(){busy=false;document.getElementById("msg").textContent="could not save; is calib label running?";});
}
document.addEventListener("keydown",function(e){
  if(!state)return;
  if(e.key==="Backspace"){e.preventDefault();if(cur>0)show(cur-1);return;}
  var k=e.key.toLowerCase();
  if(Object.prototype.hasOwnProperty.call(KEYS,k))answer(KEYS[k]);
});
get("/api/state").then(function(s){state=s;document.getElementById("session").textContent=s.session;show(s.next);});
</script></body></html>
"""


def make_pair_handler(session: PairSession, on_fit: Callable[[], dict[str, Any] | None]) -> type[PageHandler]:
    """The request handler bound to one perceptibility session; ``on_fit`` fits and writes people's
    thresholds (the page asks for it when the last pair is answered)."""

    def state() -> dict[str, Any]:
        a = session.answers
        return {"session": session.name, "next": session.next_item(), **summary(session),
                "answers": [None if v == NOT_ANSWERED else int(v) for v in a]}

    class Handler(PageHandler):
        page = PAGE

        def state(self) -> dict[str, Any]:
            return state()

        def get_routes(self) -> dict[str, Callable[[dict[str, list[str]]], None]]:
            return {"/api/pair": self._pair}

        def post_routes(self) -> dict[str, Callable[[], None]]:
            return {"/api/fit": self._fit,
                    "/api/answer": lambda: self._answer(lambda b: session.answer(int(b["item"]), int(b["different"])))}

        def _pair(self, query: dict[str, list[str]]) -> None:
            i = self._index(query, len(session), "pair")
            if i is not None:
                a = int(session.answers[i])
                self._json({"i": i, "left": base64.b64encode(png_bytes(session.left[i])).decode(),
                            "right": base64.b64encode(png_bytes(session.right[i])).decode(),
                            "answer": None if a == NOT_ANSWERED else a})

        def _fit(self) -> None:
            doc = on_fit()
            self._json(doc if doc is not None else {"error": "no answers yet"},
                       HTTPStatus.OK if doc is not None else HTTPStatus.CONFLICT)

    return Handler


def label_perceptibility(run: Any, session: str, *, attack: str | None = None, n: int = 280,
                         controls: float = 0.12, port: int = 0, seed: int = 0,
                         say: Callable[[str], None] = print) -> Path:
    """``calib label --task perceptibility``: open (or resume) a perceptibility session of a run
    folder, serve it on 127.0.0.1 until Ctrl-C, then fit people's thresholds over every perceptibility
    session of the run into ``RUN/human/perceptibility.json``; returns the session's answers file.
    ``say`` prints the page's address (the caller's console)."""
    from calib.human.pairs import open_pair_session
    from calib.human.perceptibility import write_fit

    s = open_pair_session(run, session, attack=attack, n=n, controls=controls, seed=seed)
    server = bind(make_pair_handler(s, lambda: write_fit(run)), port)
    say(f"perceptibility session {s.name!r}: {summary(s)['answered']} of {len(s)} pairs answered")
    serve_until_stopped(server, say)
    doc = write_fit(run)
    if doc is not None:
        pooled = doc["pooled"]
        say(f"people's thresholds from {doc['n_pairs']} pairs written; pooled JND SSIM "
            f"{pooled['threshold'] if pooled['threshold'] is None else round(pooled['threshold'], 4)}"
            f"{'' if pooled['reason'] is None else ' (' + pooled['reason'] + ')'}; rerun `calib run` on the folder "
            "to re-audit with them")
    return s.path


__all__ = ["make_pair_handler", "label_perceptibility", "PAGE", "KEYS"]
