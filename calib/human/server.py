"""The labelling page (``calib label RUN``): a standard-library HTTP server on 127.0.0.1 only.

The page shows one image at a time, large; the researcher presses the class's key (shown on
screen), ``u`` for unclear, Backspace to go back. Each answer is posted to the server, which saves
the session atomically (:mod:`calib.human.session`) before replying. When every item is answered
the page shows the per-class share of adversarial examples relabelled so far. No external assets,
no network access: the page, its script and the images are served by this process.
"""
from __future__ import annotations

import base64
import json
import logging
import struct
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import numpy as np

from calib.errors import CalibError
from calib.human.session import NOT_ANSWERED, Session, class_keys

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit PNG (grey for C = 1, RGB for C = 3) of a (C, H, W) image in [0,1]."""
    c, h, w = image.shape
    if c not in (1, 3):
        image, c = image.mean(0, keepdims=True), 1
    px = np.clip(np.round(image * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0).reshape(h, w * c)
    raw = b"".join(b"\x00" + row.tobytes() for row in px)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>calib: label</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222;text-align:center}
header{background:#1f2d3d;color:#fff;padding:10px}#img{width:420px;height:420px;image-rendering:pixelated;
border:1px solid #999;background:#000;margin:18px auto;display:block}#keys span{display:inline-block;margin:3px 6px;
padding:3px 8px;border:1px solid #bbb;border-radius:4px;background:#fff}#msg{min-height:1.4em;color:#555}
table{margin:10px auto;border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 10px}
</style></head><body><header><b>calib</b> · labelling session <span id="session"></span> ·
<span id="progress"></span></header>
<p>Which class do you see? Press its key; <b>u</b> = unclear; <b>Backspace</b> = back.</p>
<img id="img" alt="image to label"><div id="keys"></div><p id="msg"></p><div id="done"></div>
<script>
"use strict";
var state=null, cur=0, busy=false;
function el(tag,text){var e=document.createElement(tag);if(text!==undefined)e.textContent=text;return e;}
function get(url){return fetch(url,{cache:"no-store"}).then(function(r){if(!r.ok)throw new Error(url);return r.json();});}
function show(i){
  cur=i; document.getElementById("progress").textContent=Math.min(i+1,state.total)+" / "+state.total+
    " ("+state.answered+" answered)";
  if(i>=state.total){finish();return;}
  document.getElementById("done").textContent="";
  get("/api/item?i="+i).then(function(it){
    document.getElementById("img").src="data:image/png;base64,"+it.png;
    document.getElementById("img").dataset.item=String(i);
    document.getElementById("msg").textContent=it.answer===null?"":"your answer: "+label(it.answer);
  });
}
function label(a){return a===-1?"unclear":state.class_names[a];}
function finish(){
  get("/api/rates").then(function(r){
    var box=document.getElementById("done"); box.textContent="";
    box.appendChild(el("h3","Done: per-class share of adversarial examples you relabelled"));
    var t=el("table"), h=el("tr");["class","labelled","relabelled","share","95% interval"].forEach(function(x){h.appendChild(el("th",x));});
    t.appendChild(h);
    Object.keys(r.per_class).forEach(function(k){var v=r.per_class[k], tr=el("tr");
      [k,v.n,v.relabelled,v.rate===null?"–":v.rate.toFixed(3),v.wilson95?v.wilson95.map(function(z){return z.toFixed(3);}).join("–"):"–"]
      .forEach(function(x){tr.appendChild(el("td",String(x)));}); t.appendChild(tr);});
    box.appendChild(t); box.appendChild(el("p","Controls answered with their own class: "+r.controls.correct+" of "+r.controls.n));
    document.getElementById("msg").textContent="All items answered; saved.";
  });
}
function answer(v){
  if(busy||cur>=state.total)return; busy=true;
  fetch("/api/answer",{method:"POST",headers:{"Content-Type":"application/json"},body:JSON.stringify({item:cur,label:v})})
   .then(function(r){return r.json();}).then(function(s){state=s; busy=false;
      var nxt=cur+1; while(nxt<state.total&&state.answers[nxt]!==null)nxt++;
      if(nxt>=state.total&&state.next<state.total)nxt=state.next; show(nxt);})
   .catch(function(){busy=false;document.getElementById("msg").textContent="could not save; is calib label running?";});
}
document.addEventListener("keydown",function(e){
  if(!state)return;
  if(e.key==="Backspace"){e.preventDefault();if(cur>0)show(cur-1);return;}
  var k=e.key.toLowerCase();
  if(k==="u"){answer(-1);return;}
  if(Object.prototype.hasOwnProperty.call(state.keys,k))answer(state.keys[k]);
});
get("/api/state").then(function(s){state=s;document.getElementById("session").textContent=s.session;
  var box=document.getElementById("keys");
  Object.keys(s.keys).forEach(function(k){box.appendChild(el("span",k+" = "+s.class_names[s.keys[k]]));});
  box.appendChild(el("span","u = unclear")); show(s.next);});
</script></body></html>
"""


class PageHandler(BaseHTTPRequestHandler):
    """What every page of ``calib label`` shares: quiet logs (through :mod:`logging`), no caching, a
    content security policy that allows nothing from elsewhere, JSON replies, and the routes: ``/`` (the
    page), ``/api/state`` (:meth:`state`), the GET routes of :meth:`get_routes` (each given the query)
    and the POST routes of :meth:`post_routes`; anything else is 404."""

    server_version = "calib-label"
    page = ""

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def get_routes(self) -> dict[str, Callable[[dict[str, list[str]]], None]]:
        return {}

    def post_routes(self) -> dict[str, Callable[[], None]]:
        return {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        routes = self.get_routes()
        if url.path == "/":
            self._send(HTTPStatus.OK, self.page.encode(), "text/html; charset=utf-8")
        elif url.path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        elif url.path == "/api/state":
            self._json(self.state())
        elif url.path in routes:
            routes[url.path](parse_qs(url.query))
        else:
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:  # noqa: N802
        route = self.post_routes().get(urlparse(self.path).path)
        if route is None:
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        else:
            route()

    def _index(self, query: dict[str, list[str]], n: int, what: str) -> int | None:
        """The ``i`` of the query if it names one of ``n`` items; else ``None``, having answered 404."""
        try:
            i = int(query.get("i", ["-1"])[0])
        except ValueError:
            i = -1
        if not 0 <= i < n:
            self._json({"error": f"no such {what}"}, HTTPStatus.NOT_FOUND)
            return None
        return i

    def _answer(self, record: Callable[[dict[str, Any]], None]) -> None:
        """``record`` the posted answer and reply with the new state; a malformed or refused answer gets
        400 and its reason."""
        try:
            record(self._body())
        except (ValueError, KeyError, TypeError, CalibError) as exc:
            self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
            return
        self._json(self.state())

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: through logging, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                                                    "script-src 'unsafe-inline'; style-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _body(self) -> dict[str, Any]:
        """The posted JSON object (at most 10 kB read).

        Raises:
            ValueError: not a JSON object.
        """
        n = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(min(n, 10_000)) or b"{}")
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return body


def make_handler(session: Session) -> type[BaseHTTPRequestHandler]:
    """The request handler bound to one session."""
    keys = class_keys(session.class_names)

    def state() -> dict[str, Any]:
        a = session.answers
        return {"session": session.name, "total": len(a), "next": session.next_item(),
                "answered": int((a != NOT_ANSWERED).sum()), "class_names": session.class_names, "keys": keys,
                "answers": [None if v == NOT_ANSWERED else int(v) for v in a]}

    class Handler(PageHandler):
        page = PAGE

        def state(self) -> dict[str, Any]:
            return state()

        def get_routes(self) -> dict[str, Callable[[dict[str, list[str]]], None]]:
            return {"/api/rates": lambda q: self._json(session.relabel_rates()), "/api/item": self._item}

        def post_routes(self) -> dict[str, Callable[[], None]]:
            return {"/api/answer": lambda: self._answer(lambda b: session.answer(int(b["item"]), int(b["label"])))}

        def _item(self, query: dict[str, list[str]]) -> None:
            i = self._index(query, len(session.answers), "item")
            if i is not None:
                a = int(session.answers[i])
                self._json({"i": i, "png": base64.b64encode(png_bytes(session.x[i])).decode(),
                            "answer": None if a == NOT_ANSWERED else a})

    return Handler


def serve(session: Session, port: int = 0) -> ThreadingHTTPServer:
    """A server for ``session`` bound to 127.0.0.1 (``port`` 0: any free port); call ``serve_forever``.

    Raises:
        CalibError: the port is taken (or not allowed).
    """
    return bind(make_handler(session), port)


def bind(handler: type[BaseHTTPRequestHandler], port: int = 0) -> ThreadingHTTPServer:
    """A threading HTTP server of ``handler`` on 127.0.0.1 only (``port`` 0: any free port).

    Raises:
        CalibError: the port is taken (or not allowed).
    """
    import errno

    try:
        return ThreadingHTTPServer((HOST, port), handler)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise CalibError(f"port {port} on {HOST} is {'in use' if exc.errno == errno.EADDRINUSE else 'not allowed'};"
                             " pass another --port, or --port 0 for any free one") from exc
        raise


def label(run: Any, session: str, *, attack: str | None = None, n: int = 100, controls: float = 0.1, port: int = 0,
          seed: int = 0, say: Callable[[str], None] = print) -> Path:
    """``calib label``: open (or resume) a labelling session of a run folder, serve it on 127.0.0.1 until
    Ctrl-C, then record people's relabelling in the run's epsilon table; returns the session file.
    ``say`` prints the page's address (the caller's console)."""
    from calib.human.session import open_session
    from calib.human.table import annotate_table

    s = open_session(run, session, attack=attack, n=n, controls=controls, seed=seed)
    server = serve(s, port)
    say(f"labelling session {s.name!r}: {int((s.answers >= -1).sum())} of {len(s.answers)} answered")
    serve_until_stopped(server, say)
    annotate_table(run)
    return s.path


def serve_until_stopped(server: ThreadingHTTPServer, say: Callable[[str], None]) -> None:
    """Print the page's address and serve until Ctrl-C; the server is closed either way."""
    import sys

    say(f"serving http://{HOST}:{server.server_address[1]}/ (Ctrl-C to stop; every answer is saved when given)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


__all__ = ["serve", "bind", "make_handler", "PageHandler", "png_bytes", "label", "serve_until_stopped", "PAGE",
           "HOST"]
