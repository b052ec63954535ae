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
import html
import json
import re
from collections.abc import Awaitable, Callable
from importlib import metadata, resources
from typing import Any

from aiohttp import web

from mesh.errors import AddressInUse, ConfigError
from mesh.proto.names import parse_loopback

from .capture import Exchange, Store, har
from .policy import host_is_local

Replayer = Callable[[Exchange, dict[str, Any]], Awaitable[Exchange]]
PAGE = resources.files(__package__).joinpath("inspector.html").read_text("utf-8")
"""The web UI: one page, no external assets (a package data file)."""

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
        page = PAGE.replace("{{TARGET}}", html.escape(self.target))
        return web.Response(text=page,
                            content_type="text/html", headers={
                                "Content-Security-Policy": "default-src 'self'; "
                                "script-src 'unsafe-inline'; style-src 'unsafe-inline'"})


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""RFC 9110 token: what a method and a header name may be."""
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
"""RFC 9110 field value characters (obs-text included, as Latin-1)."""


def validate_edits(edits: Any) -> dict[str, Any]:
    """Check the JSON of an edit-and-replay; return the fields replay() takes."""
    if edits is None:
        return {}
    if not isinstance(edits, dict):
        raise ValueError("edits must be a JSON object")
    out: dict[str, Any] = {}
    method = edits.get("method")
    if method is not None:
        if not isinstance(method, str) or not _TOKEN.fullmatch(method) or len(method) > 20:
            raise ValueError("method must be a word such as GET or POST")
        out["method"] = method.upper()
    path = edits.get("path")
    if path is not None:
        if not isinstance(path, str) or not path.startswith("/") or len(path) > 8192 or not (
                path.isascii() and path.isprintable()) or " " in path:
            raise ValueError("path must start with / and be printable ASCII without spaces")
        out["target"] = path
    headers = edits.get("headers")
    if headers is not None:
        if not isinstance(headers, list) or len(headers) > 200 or not all(
                isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
                for h in headers):
            raise ValueError("headers must be a list of [name, value] pairs")
        for name, value in headers:
            if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
                raise ValueError(f"bad header {name[:100]!r}: a token name, and a value "
                                 "of visible Latin-1 characters")
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
