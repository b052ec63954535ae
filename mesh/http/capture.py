"""Recorded HTTP exchanges for the inspector: a bounded store and HAR export.

No I/O. The proxy (httpproxy.py) calls ``begin`` when a request head has
passed the checks, feeds body bytes as they stream, and ``finish``es the
exchange; subscribers (the inspector's live feed) get ``("begin"|"end", entry)``.

Bounds: the newest ``limit`` exchanges are kept (default 200) and each body is
captured up to ``body_cap`` bytes (default 128 KiB; the real size is still
counted), so the store stays under ~50 MB however large the traffic.
Recorded headers are the ones the *service* received (after hop-by-hop
removal, Host policy and X-Forwarded-*): replaying an entry sends exactly that
again. Bodies are shown as text when they decode as UTF-8 without NULs, else
as base64 with ``binary: true``.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Headers = list[tuple[bytes, bytes]]


@dataclass
class Body:
    cap: int
    data: bytearray = field(default_factory=bytearray)
    size: int = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)

    def to_json(self) -> dict[str, Any]:
        raw = bytes(self.data)
        out: dict[str, Any] = {"size": self.size, "captured": len(raw),
                               "truncated": self.truncated}
        text = as_text(raw)
        if text is None:
            out.update(binary=True, base64=base64.b64encode(raw).decode())
        else:
            out.update(binary=False, text=text)
        return out


def as_text(raw: bytes) -> str | None:
    if b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a capture cut inside a multi-byte character is still text
        if exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data":
            return raw[:exc.start].decode("utf-8")
        return None


@dataclass
class Exchange:
    id: int
    method: str
    target: str
    http_version: str
    request_headers: Headers
    request_body: Body
    response_body: Body
    peer: str
    client: str
    started: float
    started_mono: float
    replay_of: int | None = None
    status: int | None = None
    reason: str = ""
    response_headers: Headers = field(default_factory=list)
    duration_ms: float | None = None
    state: str = "pending"
    """pending, complete, upgraded (a protocol switch, e.g. WebSocket) or error."""
    error: str | None = None
    refused: str | None = None
    """Why mesh answered this request itself instead of forwarding it (401, 431, ...)."""
    member: str | None = None
    """At a gateway: the pool member (node id) that served it."""
    cache: str | None = None
    """At a gateway with a cache: hit, miss, revalidated or None (not cacheable)."""
    retries: int = 0
    """Times the request went to a second upstream after the first failed."""

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "method": self.method, "path": self.target,
            "status": self.status, "state": self.state, "duration_ms": self.duration_ms,
            "bytes_in": self.request_body.size, "bytes_out": self.response_body.size,
            "peer": self.peer, "client": self.client, "replay_of": self.replay_of,
            "started": iso(self.started), "error": self.error, "refused": self.refused,
            "member": self.member, "cache": self.cache, "retries": self.retries,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(), "http_version": self.http_version, "reason": self.reason,
            "request_headers": decode_headers(self.request_headers),
            "response_headers": decode_headers(self.response_headers),
            "request_body": self.request_body.to_json(),
            "response_body": self.response_body.to_json(),
        }


def decode_headers(headers: Headers) -> list[list[str]]:
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


Listener = Callable[[str, Exchange], None]


class Store:
    def __init__(self, limit: int = 200, body_cap: int = 128 * 1024) -> None:
        self.limit = limit
        self.body_cap = body_cap
        self._items: OrderedDict[int, Exchange] = OrderedDict()
        self._ids = itertools.count(1)
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, kind: str, ex: Exchange) -> None:
        for listener in list(self._listeners):
            listener(kind, ex)

    def begin(self, method: bytes, target: bytes, http_version: bytes, headers: Headers, *,
              peer: str, client: str, replay_of: int | None = None,
              now: float | None = None, mono: float | None = None) -> Exchange:
        ex = Exchange(
            id=next(self._ids), method=method.decode("latin-1"),
            target=target.decode("latin-1"), http_version=http_version.decode("latin-1"),
            request_headers=list(headers), request_body=Body(self.body_cap),
            response_body=Body(self.body_cap), peer=peer, client=client,
            started=time.time() if now is None else now,
            started_mono=time.monotonic() if mono is None else mono, replay_of=replay_of,
        )
        self._items[ex.id] = ex
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
        self._notify("begin", ex)
        return ex

    def respond(self, ex: Exchange, status: int, reason: bytes, headers: Headers) -> None:
        ex.status, ex.reason, ex.response_headers = status, reason.decode("latin-1"), headers

    def finish(self, ex: Exchange, state: str = "complete", error: str | None = None,
               mono: float | None = None) -> None:
        if ex.state != "pending":
            return
        end = time.monotonic() if mono is None else mono
        ex.duration_ms = round((end - ex.started_mono) * 1000, 2)
        ex.state, ex.error = state, error
        self._notify("end", ex)

    def get(self, ident: int) -> Exchange | None:
        return self._items.get(ident)

    def all(self) -> list[Exchange]:
        return list(self._items.values())

    def clear(self) -> None:
        self._items.clear()


def har(exchanges: list[Exchange], creator_version: str) -> dict[str, Any]:
    """HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/) of the exchanges."""
    entries = []
    for ex in exchanges:
        req_headers = decode_headers(ex.request_headers)
        host = next((v for k, v in req_headers if k.lower() == "host"), "localhost")
        request: dict[str, Any] = {
            "method": ex.method, "url": f"http://{host}{ex.target}",
            "httpVersion": f"HTTP/{ex.http_version}", "cookies": [],
            "headers": [{"name": k, "value": v} for k, v in req_headers],
            "queryString": _query(ex.target), "headersSize": -1,
            "bodySize": ex.request_body.size,
        }
        if ex.request_body.size:
            request["postData"] = _content(ex.request_body, req_headers)
            request["postData"].pop("size", None)
        resp_headers = decode_headers(ex.response_headers)
        total = ex.duration_ms or 0.0
        entries.append({
            "startedDateTime": iso(ex.started), "time": total, "request": request,
            "response": {
                "status": ex.status or 0, "statusText": ex.reason,
                "httpVersion": f"HTTP/{ex.http_version}", "cookies": [],
                "headers": [{"name": k, "value": v} for k, v in resp_headers],
                "content": _content(ex.response_body, resp_headers), "redirectURL": "",
                "headersSize": -1, "bodySize": ex.response_body.size,
            },
            "cache": {}, "timings": {"send": 0, "wait": total, "receive": 0},
            "comment": f"mesh #{ex.id} from {ex.client}"
                       + (f", replay of #{ex.replay_of}" if ex.replay_of else "")
                       + (" (body truncated)" if ex.request_body.truncated
                          or ex.response_body.truncated else ""),
        })
    return {"log": {"version": "1.2", "creator": {"name": "mesh", "version": creator_version},
                    "entries": entries}}


def _content(body: Body, headers: list[list[str]]) -> dict[str, Any]:
    mime = next((v for k, v in headers if k.lower() == "content-type"), "")
    raw = bytes(body.data)
    text = as_text(raw)
    out: dict[str, Any] = {"size": body.size, "mimeType": mime}
    if text is None:
        out.update(text=base64.b64encode(raw).decode(), encoding="base64")
    else:
        out["text"] = text
    return out


def _query(target: str) -> list[dict[str, str]]:
    from urllib.parse import parse_qsl, urlsplit

    return [{"name": k, "value": v}
            for k, v in parse_qsl(urlsplit(target).query, keep_blank_values=True)]
