"""Where a request goes: the ``Route`` a role decides, and the HTTP client toward it.

A ``Role`` (the share proxy, the connect guard, the gateway) answers each
request head with a ``Route`` (an upstream to dial and the headers to send), an
``Answer`` (a response the role gives itself and the connection stays open: a
cache hit, a CORS preflight) or a ``Refusal`` (an error, and the connection
closes). A route may carry a ``ResponseFilter`` that rewrites the response's
head and body as they stream back, and a ``retry`` for a second upstream.
``Upstream`` is an h11 client connection over a ``Duplex``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import h11

from mesh.transport.duplex import Duplex

from .policy import Headers, Refusal

READ = 64 * 1024
Opener = Callable[[], Awaitable[Duplex]]


@dataclass(frozen=True)
class Route:
    """Where one request goes, and how."""

    key: str
    """Requests with the same key may reuse one upstream connection."""
    opener: Opener
    target: bytes
    headers: Headers
    """The headers to send upstream (already transformed, framing included)."""
    peer: str = ""
    """Who the exchange is logged under (the peer's node id, the share's name)."""
    release: Callable[[], None] = field(default=lambda: None)
    """Called once the exchange is over (stream counters)."""
    report: Callable[[int | None], None] = field(default=lambda status: None)
    """The upstream's answer: its status, or None if it could not be reached or broke
    before answering (the gateway's passive health checks)."""
    retry: Callable[[], Awaitable[Route | Refusal]] | None = None
    """Where to send the request once more when this upstream fails before answering
    (a pool's other member); only requests safe to repeat are retried."""
    respond: ResponseFilter | None = None
    """Rewrites the response on its way back (compression, headers, the cache)."""
    member: str | None = None
    """The pool member serving the request (logged)."""


class Role(Protocol):
    """What one kind of proxy decides about each request."""

    async def route(self, request: h11.Request, headers: Headers) -> Route | Answer | Refusal:
        ...

    def upstream_failed(self, text: str) -> None:
        """The upstream could not be reached (``text`` says how)."""
        ...


class UpstreamError(Exception):
    """The upstream could not be reached or broke the response."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not start its response in time."""


class BodyTooLarge(Exception):
    """The request body went over ``max_body`` while streaming."""


class BodySilent(Exception):
    """The request body went silent for ``body_timeout`` seconds."""


class Upstream:
    """An HTTP/1.1 client connection over a ``Duplex``."""

    def __init__(self, io: Duplex) -> None:
        self.io = io
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.io.write(data)

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.io.read(READ))

    def close(self) -> None:
        self.io.close()


@dataclass(frozen=True)
class Answer:
    """A complete response the role gives itself; the client connection stays open."""

    status: int
    headers: Headers
    body: bytes = b""
    cache: str | None = None
    """``hit`` when the cache answered (logged)."""


class ResponseFilter(Protocol):
    """Rewrites one response as it streams: the head once, then each body chunk."""

    def head(self, status: int, headers: Headers) -> tuple[int, Headers]: ...

    def data(self, chunk: bytes) -> bytes: ...

    def end(self) -> bytes:
        """The last bytes of the body (a compressor's tail), at the end of the response."""
        ...

    @property
    def cache(self) -> str | None:
        """The cache's verdict to log (``miss``, ``revalidated``, None)."""
        ...
