"""The gateway's response policy: compression, added headers, CORS, the cache's fill.

Each is a ``ResponseFilter`` (mesh/http/route.py) built per request; ``Chain``
runs them in order (the cache first, so it stores what the service sent, then
the policy, so a hit is compressed and decorated like a miss). Sans-I/O.

- **gzip** (``compress``): when the caller accepts gzip (``Accept-Encoding``,
  q > 0), the answer is a 200 with no ``Content-Encoding`` of a compressible
  type (text/*, JSON, JavaScript, XML, SVG, ...) and at least ``MIN_GZIP``
  bytes (or of unknown length), and ``Cache-Control`` has no ``no-transform``.
  It streams (each chunk is flushed, so server-sent events still flow), drops
  ``Content-Length``, adds ``Vary: Accept-Encoding`` and weakens the ``ETag``.
- **headers**: ``security`` adds ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: SAMEORIGIN``, ``Referrer-Policy:
  strict-origin-when-cross-origin`` and, only over TLS,
  ``Strict-Transport-Security: max-age=31536000``; ``headers`` adds any
  others. A header the service set itself is left as it is.
- **CORS** (``cors``: allowed origins, ``*`` for any): a preflight (``OPTIONS``
  with ``Origin`` and ``Access-Control-Request-Method``) is answered here, 204
  for an allowed origin and 403 otherwise, without reaching the service; an
  answer to an allowed origin gets ``Access-Control-Allow-Origin`` and
  ``Vary: Origin``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .cache import Found, HttpCache
from .policy import Headers, header
from .route import Answer, ResponseFilter

MIN_GZIP = 256
SECURITY = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"SAMEORIGIN"),
            (b"referrer-policy", b"strict-origin-when-cross-origin"))
HSTS = (b"strict-transport-security", b"max-age=31536000")
COMPRESSIBLE = (b"text/", b"application/json", b"application/javascript",
                b"application/xml", b"application/xhtml+xml", b"image/svg+xml",
                b"application/x-javascript", b"application/ld+json",
                b"application/manifest+json", b"application/wasm")


@dataclass(frozen=True)
class EdgePolicy:
    compress: bool = False
    security: bool = False
    headers: tuple[tuple[bytes, bytes], ...] = ()
    cors: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.compress or self.security or bool(self.headers) or bool(self.cors)


def accepts_gzip(request: Headers) -> bool:
    for k, v in request:
        if k != b"accept-encoding":
            continue
        for part in v.decode("latin-1").lower().split(","):
            coding, _, params = part.strip().partition(";")
            if coding.strip() not in ("gzip", "*"):
                continue
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def _compressible(headers: Headers) -> bool:
    ctype = (header(headers, b"content-type") or b"").lower()
    if not ctype.startswith(COMPRESSIBLE) and not ctype.split(b";")[0].endswith(
            (b"+json", b"+xml")):
        return False
    if header(headers, b"content-encoding") not in (None, b"identity"):
        return False
    if b"no-transform" in (header(headers, b"cache-control") or b"").lower():
        return False
    length = header(headers, b"content-length")  # digits: h11 checked them
    return length is None or len(length) > 6 or int(length) >= MIN_GZIP


def _origin_allowed(cors: tuple[str, ...], origin: bytes | None) -> bool:
    return origin is not None and ("*" in cors or origin.decode("latin-1") in cors)


def preflight(policy: EdgePolicy, method: bytes, request: Headers) -> Answer | None:
    """The answer to a CORS preflight, or None if the request is not one (or CORS is off)."""
    if not policy.cors or method != b"OPTIONS":
        return None
    origin = header(request, b"origin")
    wanted = header(request, b"access-control-request-method")
    if origin is None or wanted is None:
        return None
    if not _origin_allowed(policy.cors, origin):
        return Answer(403, [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"vary", b"Origin")],
                      b"mesh gateway: this origin is not allowed (CORS)\n")
    out: Headers = [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                    (b"access-control-allow-methods", wanted),
                    (b"access-control-max-age", b"600")]
    asked = header(request, b"access-control-request-headers")
    if asked is not None:
        out.append((b"access-control-allow-headers", asked))
    return Answer(204, out)


@dataclass
class PolicyFilter:
    """Compression, added headers and CORS for one response."""

    policy: EdgePolicy
    request: Headers
    method: bytes
    tls: bool
    extra: Headers = field(default_factory=list)
    """Headers the gateway adds to this answer (the sticky cookie)."""
    _zip: zlib._Compress | None = None

    cache: str | None = None

    def head(self, status: int, headers: Headers) -> tuple[int, Headers]:
        p = self.policy
        out = list(headers)
        have = {k for k, _ in out}
        add = [*SECURITY, *((HSTS,) if self.tls else ())] if p.security else []
        for k, v in [*add, *p.headers]:
            if k not in have:
                out.append((k, v))
        origin = header(self.request, b"origin")
        if p.cors and _origin_allowed(p.cors, origin) and (
                b"access-control-allow-origin" not in have):
            assert origin is not None
            out += [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        out += self.extra
        if (p.compress and status == 200 and self.method != b"HEAD"
                and accepts_gzip(self.request) and _compressible(out)):
            self._zip = zlib.compressobj(6, zlib.DEFLATED, 31)
            out = [(k, _weak(v) if k == b"etag" else v) for k, v in out
                   if k != b"content-length"]
            out += [(b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")]
        return status, out

    def data(self, chunk: bytes) -> bytes:
        if self._zip is None:
            return chunk
        return self._zip.compress(chunk) + self._zip.flush(zlib.Z_SYNC_FLUSH)

    def end(self) -> bytes:
        return self._zip.flush() if self._zip is not None else b""


def _weak(etag: bytes) -> bytes:
    return etag if etag.startswith(b"W/") else b"W/" + etag


@dataclass
class CacheFill:
    """Stores the response as it streams by, or answers a revalidation's 304 with the
    stored response."""

    store: HttpCache
    key: str
    request: Headers
    found: Found | None
    clock: Callable[[], float]
    storing: bool = True
    """False for a HEAD: counted and marked, never stored (it has no body)."""
    cache: str | None = None
    _status: int = 0
    _headers: Headers = field(default_factory=list)
    _body: bytearray | None = None
    _tail: bytes = b""

    def head(self, status: int, headers: Headers) -> tuple[int, Headers]:
        now = self.clock()
        if status == 304 and self.found is not None:
            entry = self.found.entry
            self.store.refresh(entry, headers, now)
            self.store.revalidated += 1
            self.cache = "revalidated"
            self._tail = entry.body
            out = [(k, v) for k, v in entry.answer_headers(now, self.store.debug, "revalidated")
                   if k != b"content-length"]
            return entry.status, [*out, (b"content-length", str(len(entry.body)).encode())]
        self.store.misses += 1
        self.cache = "miss"
        if self.storing:
            self._status, self._headers, self._body = status, list(headers), bytearray()
        if self.store.debug:
            return status, [*headers, (b"x-cache", b"MISS")]
        return status, headers

    def data(self, chunk: bytes) -> bytes:
        if self._body is not None:
            self._body += chunk
            if len(self._body) > self.store.max_entry:
                self._body = None
        return chunk

    def end(self) -> bytes:
        if self._body is not None:
            self.store.store(self.key, self.request, self._status, self._headers,
                             bytes(self._body), self.clock())
            self._body = None
        return self._tail


@dataclass
class Chain:
    filters: list[ResponseFilter]

    @property
    def cache(self) -> str | None:
        for f in self.filters:
            if f.cache is not None:
                return f.cache
        return None

    def head(self, status: int, headers: Headers) -> tuple[int, Headers]:
        for f in self.filters:
            status, headers = f.head(status, headers)
        return status, headers

    def data(self, chunk: bytes) -> bytes:
        for f in self.filters:
            chunk = f.data(chunk)
        return chunk

    def end(self) -> bytes:
        tail = b""
        for f in self.filters:
            tail = f.data(tail) + f.end() if tail else f.end()
        return tail


def render(filt: ResponseFilter, status: int, headers: Headers, body: bytes,
           cache: str = "hit") -> Answer:
    """A whole stored response run through ``filt`` (a cache hit)."""
    status, out = filt.head(status, headers)
    data = filt.data(body) + filt.end()
    out = [(k, v) for k, v in out if k != b"content-length"]
    return Answer(status, out, data, cache)
