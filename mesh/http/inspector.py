"""The local request inspector of ``mesh share --http`` (default http://127.0.0.1:4040).

A small aiohttp app over the capture store (capture.py):

    GET    /                          the web UI (one page, no external assets)
    GET    /api/requests              {"requests": [summary, ...]} newest last
    GET    /api/requests/{id}         one exchange with headers and bodies
    POST   /api/requests/{id}/replay  send it to the service again; a JSON body
                                      {"method", "path", "headers": [[k, v]...],
                                      "body" | "body_base64"} edits it first
    DELETE /api/requests              forget everything recorded
    GET    /api/live                  server-sent events: {"type": "begin"|"end",
                                      "request": summary} as exchanges start and end
    GET    /api/har                   HAR 1.2 of what is recorded

It binds loopback only. Because it can replay requests into the service, it
also refuses what a hostile web page could send it: a Host that is not
localhost or an IP literal (421, DNS rebinding), and a state-changing request
whose Origin is another site or whose body is not JSON (403/415, CSRF).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import json
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

from aiohttp import web

from mesh.errors import AddressInUse, ConfigError
from mesh.proto.names import parse_loopback

from .capture import Exchange, Store, har
from .policy import host_is_local

Replayer = Callable[[Exchange, dict[str, Any]], Awaitable[Exchange]]

DEFAULT = "127.0.0.1:4040"


class Inspector:
    def __init__(self, store: Store, addr: str, replayer: Replayer, target: str, *,
                 explicit: bool = False) -> None:
        self.store = store
        self.host, self.port = parse_loopback(addr, "--inspect")
        self.default = not explicit
        self.replayer = replayer
        self.target = target
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._feeds: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._unsubscribe = store.subscribe(self._on_change)

    async def start(self) -> str:
        app = web.Application(middlewares=[self._guard], client_max_size=4 * 1024 * 1024)
        app.add_routes([
            web.get("/", self._page),
            web.get("/api/requests", self._list),
            web.delete("/api/requests", self._clear),
            web.get("/api/requests/{id}", self._one),
            web.post("/api/requests/{id}/replay", self._replay),
            web.get("/api/live", self._live),
            web.get("/api/har", self._har),
        ])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # like ngrok: the default port moves on when taken (a second share); an
        # address given explicitly must be free
        tries = range(self.port, self.port + 10) if self.default else [self.port]
        last: OSError | None = None
        for port in tries:
            site = web.TCPSite(self._runner, self.host, port)
            try:
                await site.start()
            except OSError as exc:
                last = exc
                continue
            if port == 0:
                port = int(self._runner.addresses[-1][1])
            self.port = port
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.url = f"http://{host}:{port}/"
            return self.url
        await self._runner.cleanup()
        where = f"{self.host}:{self.port}" + (f"-{tries[-1]}" if self.default else "")
        if last is not None and last.errno == errno.EADDRINUSE:
            raise AddressInUse(f"the inspector's address {where}/tcp is taken; use "
                               "--inspect ADDR or --no-inspect")
        raise ConfigError(f"the inspector cannot listen on {where}/tcp: "
                          f"{getattr(last, 'strerror', last)} (use --inspect ADDR or "
                          "--no-inspect)")

    async def close(self) -> None:
        self._unsubscribe()
        for feed in list(self._feeds):
            with contextlib.suppress(asyncio.QueueFull):
                feed.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- security ---------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        host = request.headers.get("Host", "").lower().encode("latin-1", "replace")
        if not host_is_local(host, self.port):
            return web.json_response({"error": "the inspector answers only localhost or an "
                                               "IP address (DNS rebinding guard)"}, status=421)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("Origin")
            if origin is not None and origin.lower() != f"http://{host.decode()}":
                return web.json_response({"error": "cross-origin request refused"},
                                         status=403)
            if request.method == "POST" and request.content_type != "application/json":
                return web.json_response({"error": "send JSON (Content-Type: "
                                                   "application/json)"}, status=415)
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    # -- API --------------------------------------------------------------------
    def _find(self, request: web.Request) -> Exchange:
        try:
            ex = self.store.get(int(request.match_info["id"]))
        except ValueError:
            ex = None
        if ex is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such request"}),
                                   content_type="application/json")
        return ex

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"target": self.target,
                                  "requests": [e.summary() for e in self.store.all()]})

    async def _one(self, request: web.Request) -> web.Response:
        return web.json_response(self._find(request).to_json())

    async def _clear(self, request: web.Request) -> web.Response:
        self.store.clear()
        return web.json_response({"cleared": True})

    async def _replay(self, request: web.Request) -> web.Response:
        original = self._find(request)
        try:
            edits = await request.json() if request.can_read_body else {}
            edits = validate_edits(edits)
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            ex = await self.replayer(original, edits)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response(ex.summary())

    async def _har(self, request: web.Request) -> web.Response:
        try:
            version = metadata.version("mesh-tunnel")
        except metadata.PackageNotFoundError:
            version = "0"
        return web.json_response(har(self.store.all(), version), headers={
            "Content-Disposition": 'attachment; filename="mesh.har"'})

    def _on_change(self, kind: str, ex: Exchange) -> None:
        item = {"type": kind, "request": ex.summary()}
        for feed in list(self._feeds):
            try:
                feed.put_nowait(item)
            except asyncio.QueueFull:  # a stalled tab: drop it, it reconnects
                self._feeds.discard(feed)

    async def _live(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store"})
        await response.prepare(request)
        feed: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(1000)
        self._feeds.add(feed)
        try:
            await response.write(b": live\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(feed.get(), 15)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if item is None or feed not in self._feeds:
                    break
                await response.write(f"data: {json.dumps(item)}\n\n".encode())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._feeds.discard(feed)
        return response

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.replace("{{TARGET}}", self.target),
                            content_type="text/html", headers={
                                "Content-Security-Policy": "default-src 'self'; "
                                "script-src 'unsafe-inline'; style-src 'unsafe-inline'"})


def validate_edits(edits: Any) -> dict[str, Any]:
    """Check the JSON of an edit-and-replay; return the fields replay() takes."""
    if edits is None:
        return {}
    if not isinstance(edits, dict):
        raise ValueError("edits must be a JSON object")
    out: dict[str, Any] = {}
    method = edits.get("method")
    if method is not None:
        if not isinstance(method, str) or not method.isalpha() or len(method) > 20:
            raise ValueError("method must be a word such as GET or POST")
        out["method"] = method.upper()
    path = edits.get("path")
    if path is not None:
        if not isinstance(path, str) or not path.startswith("/") or len(path) > 8192 or any(
                c in path for c in " \r\n\t"):
            raise ValueError("path must start with / and contain no spaces")
        out["target"] = path
    headers = edits.get("headers")
    if headers is not None:
        if not isinstance(headers, list) or len(headers) > 200 or not all(
                isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
                for h in headers):
            raise ValueError("headers must be a list of [name, value] pairs")
        for name, value in headers:
            if (not name or any(c in name for c in " :\r\n\t") or "\r" in value
                    or "\n" in value or not name.isascii()):
                raise ValueError(f"bad header {name!r}")
        out["headers"] = [(n, v) for n, v in headers]
    if "body_base64" in edits:
        try:
            out["body"] = base64.b64decode(str(edits["body_base64"]), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("body_base64 is not base64") from None
    elif "body" in edits:
        if not isinstance(edits["body"], str):
            raise ValueError("body must be a string")
        out["body"] = edits["body"].encode()
    return out


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>mesh inspector</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root { --bg:#0f1115; --panel:#171a21; --line:#262b36; --text:#d7dce5; --dim:#8a93a6;
        --ok:#3fb950; --warn:#d29922; --bad:#f85149; --acc:#58a6ff; }
* { box-sizing: border-box; }
body { margin:0; font:13px/1.45 system-ui, sans-serif; background:var(--bg); color:var(--text); }
header { display:flex; gap:12px; align-items:center; padding:10px 16px;
         border-bottom:1px solid var(--line); background:var(--panel); }
header h1 { font-size:15px; margin:0; } header .dim { color:var(--dim); }
header .sp { flex:1; }
button, a.btn { background:#21262d; color:var(--text); border:1px solid var(--line);
  border-radius:6px; padding:5px 10px; cursor:pointer; font:inherit; text-decoration:none; }
button:hover, a.btn:hover { border-color:var(--acc); }
button.primary { background:#1f6feb; border-color:#1f6feb; color:#fff; }
main { display:grid; grid-template-columns: minmax(320px, 42%) 1fr; height:calc(100vh - 49px); }
#list { overflow:auto; border-right:1px solid var(--line); }
table { width:100%; border-collapse:collapse; }
#list td, #list th { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left;
  white-space:nowrap; }
#list th { color:var(--dim); font-weight:500; position:sticky; top:0; background:var(--bg); }
#list tr.row { cursor:pointer; } #list tr.row:hover { background:#1c2130; }
#list tr.sel { background:#1f2a3d; }
td.path { max-width:260px; overflow:hidden; text-overflow:ellipsis; }
.s2 { color:var(--ok); } .s3 { color:var(--acc); } .s4 { color:var(--warn); }
.s5, .err { color:var(--bad); } .pending { color:var(--dim); }
#detail { overflow:auto; padding:14px 18px; }
#detail h2 { font-size:14px; margin:0 0 8px; word-break:break-all; }
#detail h3 { font-size:12px; text-transform:uppercase; letter-spacing:.06em; color:var(--dim);
  margin:18px 0 6px; }
pre { background:var(--panel); border:1px solid var(--line); border-radius:6px; padding:10px;
  white-space:pre-wrap; word-break:break-all; max-height:340px; overflow:auto; margin:0; }
.hdrs td { padding:2px 8px 2px 0; vertical-align:top; } .hdrs td:first-child { color:var(--dim); }
.actions { display:flex; gap:8px; margin:8px 0; }
#edit { display:none; background:var(--panel); border:1px solid var(--line); border-radius:6px;
  padding:10px; margin-top:8px; }
#edit input, #edit textarea { width:100%; background:var(--bg); color:var(--text);
  border:1px solid var(--line); border-radius:4px; padding:5px; font:12px monospace; }
#edit label { display:block; color:var(--dim); margin:6px 0 2px; }
.empty { color:var(--dim); padding:30px; text-align:center; }
#note { color:var(--dim); }
</style></head>
<body>
<header><h1>mesh inspector</h1><span class="dim">sharing {{TARGET}}</span>
<span id="conn" class="dim">connecting</span><span class="sp"></span>
<span id="note"></span>
<a class="btn" href="/api/har" download="mesh.har">Export HAR</a>
<button id="clear">Clear</button></header>
<main><div id="list"><table><thead><tr><th>#</th><th>Method</th><th>Path</th>
<th>Status</th><th>Time</th><th>Size</th></tr></thead><tbody id="rows"></tbody></table>
<div id="none" class="empty">No requests yet. They appear here as they arrive.</div></div>
<div id="detail"><div class="empty">Select a request.</div></div></main>
<script>
const rows = document.getElementById('rows'), detail = document.getElementById('detail');
const items = new Map(); let selected = null;
const esc = s => String(s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;',
  '"':'&quot;',"'":'&#39;'}[c]));
const size = n => n < 1024 ? n + ' B' : n < 1048576 ? (n/1024).toFixed(1) + ' KiB'
  : (n/1048576).toFixed(1) + ' MiB';
function statusCell(r) {
  if (r.state === 'pending') return '<span class="pending">…</span>';
  if (r.state === 'error') return '<span class="err">' + (r.status || 'error') + '</span>';
  return '<span class="s' + String(r.status)[0] + '">' + r.status + '</span>';
}
function render(r) {
  let tr = document.getElementById('r' + r.id);
  if (!tr) {
    tr = document.createElement('tr'); tr.id = 'r' + r.id; tr.className = 'row';
    tr.dataset.id = r.id; tr.onclick = () => show(r.id); rows.prepend(tr);
  }
  items.set(r.id, r);
  tr.innerHTML = '<td>' + r.id + (r.replay_of ? ' ↻' : '') + '</td><td>' + esc(r.method) +
    '</td><td class="path" title="' + esc(r.path) + '">' + esc(r.path) + '</td><td>' +
    statusCell(r) + '</td><td>' + (r.duration_ms == null ? '' : r.duration_ms.toFixed(1) +
    ' ms') + '</td><td>' + size(r.bytes_out) + '</td>';
  tr.classList.toggle('sel', selected === r.id);
  document.getElementById('none').style.display = 'none';
  if (selected === r.id && r.state !== 'pending') show(r.id);
}
function hdrs(list) {
  if (!list.length) return '<div class="dim">none</div>';
  return '<table class="hdrs">' + list.map(([k, v]) => '<tr><td>' + esc(k) + '</td><td>' +
    esc(v) + '</td></tr>').join('') + '</table>';
}
function body(b) {
  if (!b.size) return '<div class="dim">empty</div>';
  const cut = b.truncated ? ' (first ' + size(b.captured) + ' of ' + size(b.size) + ')' : '';
  if (b.binary) return '<div class="dim">binary, ' + size(b.size) + cut + '</div><pre>' +
    esc(atob(b.base64).slice(0, 4096).split('').map(c => c.charCodeAt(0).toString(16)
    .padStart(2, '0')).join(' ')) + '</pre>';
  let text = b.text;
  if (!b.truncated && /^\\s*[\\[{]/.test(text)) {
    try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (err) { /* as sent */ }
  }
  return (cut ? '<div class="dim">' + cut + '</div>' : '') + '<pre>' + esc(text) + '</pre>';
}
async function show(id) {
  selected = id;
  document.querySelectorAll('#rows tr').forEach(t => t.classList.toggle('sel',
    t.dataset.id == String(id)));
  const res = await fetch('/api/requests/' + id);
  if (!res.ok) { detail.innerHTML = '<div class="empty">gone</div>'; return; }
  const e = await res.json();
  detail.innerHTML = '<h2>' + esc(e.method) + ' ' + esc(e.path) + '</h2>' +
    '<div class="dim">#' + e.id + (e.replay_of ? ' · replay of #' + e.replay_of : '') +
    ' · ' + esc(e.started) + ' · from ' + esc(e.client) + ' · peer ' +
    esc(e.peer.slice(0, 12)) + ' · ' + statusCell(e) + ' ' + esc(e.reason || '') +
    (e.error ? ' · <span class="err">' + esc(e.error) + '</span>' : '') + '</div>' +
    '<div class="actions"><button id="replay" class="primary">Replay</button>' +
    '<button id="editbtn">Edit &amp; replay</button></div>' +
    '<div id="edit"><label>Method</label><input id="e-method">' +
    '<label>Path</label><input id="e-path"><label>Headers (Name: value per line)</label>' +
    '<textarea id="e-headers" rows="8"></textarea><label>Body</label>' +
    '<textarea id="e-body" rows="6"></textarea><div class="actions">' +
    '<button id="send" class="primary">Send</button></div></div>' +
    '<h3>Request headers</h3>' + hdrs(e.request_headers) +
    '<h3>Request body</h3>' + body(e.request_body) +
    '<h3>Response headers</h3>' + hdrs(e.response_headers) +
    '<h3>Response body</h3>' + body(e.response_body);
  document.getElementById('replay').onclick = () => replay(e.id, {});
  document.getElementById('editbtn').onclick = () => {
    const f = document.getElementById('edit'); f.style.display = 'block';
    document.getElementById('e-method').value = e.method;
    document.getElementById('e-path').value = e.path;
    document.getElementById('e-headers').value = e.request_headers.filter(([k]) =>
      !['content-length', 'transfer-encoding'].includes(k)).map(([k, v]) => k + ': ' + v)
      .join('\\n');
    document.getElementById('e-body').value = e.request_body.binary ? '' :
      (e.request_body.text || '');
  };
  document.getElementById('send').onclick = () => replay(e.id, {
    method: document.getElementById('e-method').value.trim(),
    path: document.getElementById('e-path').value.trim(),
    headers: document.getElementById('e-headers').value.split('\\n').filter(l => l.trim())
      .map(l => { const i = l.indexOf(':'); return [l.slice(0, i).trim(),
      l.slice(i + 1).trim()]; }),
    body: document.getElementById('e-body').value });
}
async function replay(id, edits) {
  const note = document.getElementById('note'); note.textContent = 'replaying #' + id + '…';
  const res = await fetch('/api/requests/' + id + '/replay', { method: 'POST',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify(edits) });
  const out = await res.json();
  note.textContent = res.ok ? 'replayed #' + id + ' as #' + out.id + ' → ' +
    (out.status || out.state) : 'replay failed: ' + out.error;
  if (res.ok) { render(out); show(out.id); }
}
document.getElementById('clear').onclick = async () => {
  await fetch('/api/requests', { method: 'DELETE' });
  rows.innerHTML = ''; items.clear(); selected = null;
  detail.innerHTML = '<div class="empty">Select a request.</div>';
  document.getElementById('none').style.display = '';
};
async function load() {
  const res = await fetch('/api/requests'); const data = await res.json();
  data.requests.forEach(render);
}
function live() {
  const es = new EventSource('/api/live'), conn = document.getElementById('conn');
  es.onopen = () => { conn.textContent = '● live'; conn.style.color = 'var(--ok)'; };
  es.onmessage = m => render(JSON.parse(m.data).request);
  es.onerror = () => { conn.textContent = 'reconnecting'; conn.style.color = 'var(--warn)'; };
}
load().then(live);
</script></body></html>
"""
