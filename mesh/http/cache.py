"""A shared HTTP cache (RFC 9111, the parts a gateway in front of dev services needs).

Sans-I/O: ``HttpCache`` keeps responses in memory, bounded by bytes with
least-recently-used eviction; the clock is an argument. ``lookup`` finds a
stored response for a request; ``CacheFill`` (a response filter, see
mesh/http/route.py) stores a response as it streams by, or turns the
service's ``304 Not Modified`` into the stored response.

What is stored (deliberately narrower than the RFC allows):

- GET responses (HEAD is answered from them) with status 200, 203, 204, 301,
  404 or 410 and an explicit lifetime: ``s-maxage``, else ``max-age``, else
  ``Expires`` minus ``Date``; never with ``no-store`` or ``private`` (either
  side), never for a request with ``Authorization`` or a response with
  ``Set-Cookie`` or ``Vary: *``, never a body over ``max_entry`` bytes;
- ``Vary``: each variant is stored under the request's values of the listed
  headers, so ``Vary: Accept-Encoding`` keeps gzip and identity apart;
- ``Age`` is sent on every hit (the response's age when stored plus its time
  here); ``no-cache`` (response) or ``no-cache``/``max-age=0`` (request), or
  an expired lifetime, revalidate with ``If-None-Match``/``If-Modified-Since``
  when the response had an ``ETag``/``Last-Modified``, and are misses otherwise;
- a successful unsafe request (POST, PUT, PATCH, DELETE) drops what is stored
  for its target (RFC 9111 section 4.4).
"""

from __future__ import annotations

import email.utils
from collections import OrderedDict
from dataclasses import dataclass, field

from .policy import HOP_BY_HOP, Headers, header

STORABLE = frozenset({200, 203, 204, 301, 404, 410})
UNSAFE = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
DROP = HOP_BY_HOP | {b"age", b"x-cache"}
"""Never stored: the hop's own headers, and what the cache sets itself on each answer."""


def directives(headers: Headers) -> dict[str, str]:
    """``Cache-Control`` as {directive: argument} (lower-case names; "" if none)."""
    out: dict[str, str] = {}
    for k, v in headers:
        if k != b"cache-control":
            continue
        for part in v.decode("latin-1").split(","):
            name, _, arg = part.strip().partition("=")
            if name:
                out.setdefault(name.lower(), arg.strip().strip('"'))
    return out


def _seconds(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit():
        return None
    return min(int(text[:12]), 2**31) if len(text) <= 12 else 2**31


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _date(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed.timestamp() if parsed is not None else None


def lifetime(headers: Headers) -> int | None:
    """The response's freshness lifetime in seconds, or None if it gives none."""
    cc = directives(headers)
    for name in ("s-maxage", "max-age"):
        seconds = _seconds(cc.get(name))
        if seconds is not None:
            return seconds
    expires, date = _date(header(headers, b"expires")), _date(header(headers, b"date"))
    if expires is not None and date is not None:
        return max(0, int(expires - date))
    return None


def _freshness(headers: Headers) -> tuple[int, bool]:
    """(lifetime in seconds, whether every use must revalidate) of a stored answer."""
    life = lifetime(headers) or 0
    return life, "no-cache" in directives(headers) or life == 0


def _vary_names(headers: Headers) -> tuple[bytes, ...] | None:
    """The request headers a response varies on (sorted), or None for ``Vary: *``."""
    names: set[bytes] = set()
    for k, v in headers:
        if k == b"vary":
            for part in v.split(b","):
                name = part.strip().lower()
                if name == b"*":
                    return None
                if name:
                    names.add(name)
    return tuple(sorted(names))


def _request_values(request: Headers, names: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(b",".join(v.strip() for k, v in request if k == name) for name in names)


@dataclass
class Entry:
    status: int
    headers: Headers
    body: bytes
    stored: float
    age: float
    """The response's ``Age`` when it was stored."""
    life: int
    must_revalidate: bool
    """``no-cache``, or no lifetime: every use asks the service first."""
    vary: tuple[bytes, ...]
    values: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 128

    def current_age(self, now: float) -> float:
        return self.age + max(0.0, now - self.stored)

    def validators(self) -> Headers:
        out: Headers = []
        etag, modified = header(self.headers, b"etag"), header(self.headers, b"last-modified")
        if etag is not None:
            out.append((b"if-none-match", etag))
        if modified is not None:
            out.append((b"if-modified-since", modified))
        return out

    def answer_headers(self, now: float, debug: bool, verdict: str) -> Headers:
        out = [*self.headers, (b"age", str(int(self.current_age(now))).encode())]
        if debug:
            out.append((b"x-cache", verdict.upper().encode()))
        return out


@dataclass
class Found:
    entry: Entry
    fresh: bool


@dataclass
class HttpCache:
    max_bytes: int
    max_entry: int = 0
    """Largest body stored (0: an eighth of ``max_bytes``)."""
    debug: bool = False
    """Send ``X-Cache: HIT|MISS|REVALIDATED``."""
    used: int = 0
    hits: int = 0
    misses: int = 0
    revalidated: int = 0
    evictions: int = 0
    _entries: OrderedDict[str, list[Entry]] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if not self.max_entry:
            self.max_entry = max(1, self.max_bytes // 8)

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def lookup(self, key: str, method: bytes, request: Headers, now: float) -> Found | None:
        if method not in (b"GET", b"HEAD"):
            return None
        variants = self._entries.get(key)
        if not variants:
            return None
        req = directives(request)
        for entry in variants:
            if _request_values(request, entry.vary) == entry.values:
                self._entries.move_to_end(key)
                limit = _seconds(req.get("max-age"))
                fresh = (not entry.must_revalidate and "no-cache" not in req
                         and entry.current_age(now) < min(entry.life, limit if limit is not None
                                                          else entry.life))
                return Found(entry, fresh)
        return None

    def store(self, key: str, request: Headers, status: int, headers: Headers, body: bytes,
              now: float) -> bool:
        if not storable(request, status, headers) or len(body) > self.max_entry:
            return False
        vary = _vary_names(headers) or ()
        age = _text(header(headers, b"age"))
        entry = Entry(status, [(k, v) for k, v in headers if k not in DROP], body, now,
                      float(_seconds(age) or 0), *_freshness(headers), vary,
                      _request_values(request, vary))
        old = self._entries.pop(key, [])
        variants = [e for e in old if e.values != entry.values]
        self.used -= sum(e.size for e in old) - sum(e.size for e in variants)
        variants.append(entry)
        self._entries[key] = variants
        self.used += entry.size
        while self.used > self.max_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self.used -= sum(e.size for e in evicted)
            self.evictions += len(evicted)
        return True

    def refresh(self, entry: Entry, headers: Headers, now: float) -> None:
        """A 304 confirmed ``entry``: take the new caching headers, restart its clock."""
        update = {b"cache-control", b"expires", b"date", b"etag", b"last-modified"}
        new = [(k, v) for k, v in headers if k in update]
        if new:
            names = {k for k, _ in new}
            before = entry.size
            entry.headers = [(k, v) for k, v in entry.headers if k not in names] + new
            self.used += entry.size - before
        entry.life, entry.must_revalidate = _freshness(entry.headers)
        entry.stored, entry.age = now, 0.0

    def invalidate(self, key: str) -> None:
        for gone in self._entries.pop(key, []):
            self.used -= gone.size


def storable(request: Headers, status: int, headers: Headers) -> bool:
    if status not in STORABLE:
        return False
    if header(request, b"authorization") is not None or header(headers, b"set-cookie"):
        return False
    req, cc = directives(request), directives(headers)
    if {"no-store", "private"} & (set(req) | set(cc)) or _vary_names(headers) is None:
        return False
    return lifetime(headers) is not None or "no-cache" in cc
