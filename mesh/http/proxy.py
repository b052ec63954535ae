"""The HTTP/1.1 proxy engine: one client connection, requests forwarded one by one.

One engine, three roles. The engine parses each request head with h11, applies
the parser defences below, asks its ``Role`` where the request goes (a
``Route``) or why not (a ``Refusal``), and forwards it over a keep-alive
upstream connection; the response streams back unbuffered (chunked bodies,
server-sent events), and a ``101 Switching Protocols`` answer to a request that
asked for it turns the connection into a byte splice. The roles
(mesh/http/roles.py and the gateway) only decide: the share proxy (auth, the
header policy, the service), the connect guard (Host check, the tunnel) and the
gateway (routing, limits, the share's tunnel).

Defences at the parser, before any byte reaches the upstream: smuggling
(``Content-Length`` with ``Transfer-Encoding``, duplicate ``Content-Length``:
400), heads over ``max_head`` (431), transfer codings other than chunked
(501), and a head that is not complete ``header_timeout`` s after the
connection opened or after its first byte (408, then close). The upstream is
dialled lazily, on the first request that passed, so a refused request never
opens a connection. Every exchange, refused ones included, is recorded in the
capture store and reported to ``on_request``.

Both ends are ``Duplex`` streams (mesh/transport/stream.py): a TCP connection
or a tunnelled stream, so no socket pair is needed between the tunnel and the
proxy. Everything on the wire is h11's: no hand-written HTTP parsing or framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import h11

from mesh.transport.duplex import Duplex, Tapped, splice

from .capture import Exchange, Store
from .config import HttpConfig
from .policy import (
    Headers,
    Refusal,
    framing,
    head_problem,
    is_upgrade,
    reason,
    request_line,
    strip_hop_by_hop,
)

log = logging.getLogger("mesh.http")

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


class Role(Protocol):
    """What one kind of proxy decides about each request."""

    async def route(self, request: h11.Request, headers: Headers) -> Route | Refusal: ...

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


class HttpProxy:
    """Serves one client connection until it closes."""

    def __init__(self, client: Duplex, role: Role, *, config: HttpConfig,
                 store: Store | None = None,
                 on_request: Callable[[Exchange], None] | None = None,
                 peer: str = "", client_addr: str = "") -> None:
        self.client = client
        self.role = role
        self.config = config
        self.store = store
        self.on_request = on_request
        self.peer, self.client_addr = peer, client_addr
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_head)
        self.up: Upstream | None = None
        self.up_key = ""

    async def run(self) -> None:
        try:
            await self._serve()
        except (ConnectionError, OSError, h11.ProtocolError, asyncio.IncompleteReadError,
                TimeoutError) as exc:
            log.debug("http session ended: %s", exc)
        finally:
            if self.up is not None:
                self.up.close()
            self.client.close()

    # -- the request loop -------------------------------------------------------
    async def _serve(self) -> None:
        first = True
        while True:
            request = await self._next_head(first)
            if request is None:
                return
            first = False
            headers: Headers = list(request.headers)
            refusal: Refusal | None = None
            length = dict(headers).get(b"content-length")
            if (self.config.max_body is not None and length is not None
                    and int(length) > self.config.max_body):
                refusal = Refusal(413, f"request body over {self.config.max_body} bytes")
            routed = refusal or await self.role.route(request, headers)
            if isinstance(routed, Refusal):
                await self._refuse(routed, (request.method, request.target), headers)
                return
            try:
                keep = await self._exchange(request, headers, routed)
            finally:
                routed.release()
            if (not keep or self.conn.our_state is h11.MUST_CLOSE
                    or self.conn.their_state is h11.MUST_CLOSE):
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _next_head(self, first: bool) -> h11.Request | None:
        conn = self.conn
        loop = asyncio.get_running_loop()
        started = loop.time()
        head_deadline = started + self.config.header_timeout if first else None
        while True:
            if conn.their_state is h11.IDLE:
                problem = head_problem(conn.trailing_data[0], self.config.max_head)
                if problem is not None:
                    await self._refuse(problem, request_line(conn.trailing_data[0]))
                    return None
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raw = conn.trailing_data[0]
                if raw or not conn.trailing_data[1]:
                    await self._refuse(Refusal(exc.error_status_hint, str(exc)),
                                       request_line(raw))
                return None
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed
            if head_deadline is None and conn.trailing_data[0]:
                head_deadline = loop.time() + self.config.header_timeout
            deadline = head_deadline or started + self.config.keepalive_timeout
            try:
                data = await asyncio.wait_for(self.client.read(READ), deadline - loop.time())
            except TimeoutError:
                raw = conn.trailing_data[0]
                if raw:
                    await self._refuse(Refusal(408, "request head not complete within "
                                                    f"{self.config.header_timeout:g} s"),
                                       request_line(raw))
                return None
            conn.receive_data(data)

    async def _refuse(self, refusal: Refusal, line: tuple[bytes, bytes] | None = None,
                      request_headers: Headers | None = None) -> None:
        """Answer with ``refusal`` and close; record it if ``line`` names the request."""
        if line is not None and self.store is not None:
            ex = self.store.begin(line[0], line[1], b"1.1", request_headers or [],
                                  peer=self.peer,
                                  client=self.client_addr)
            ex.refused = refusal.message
            self._end(ex, refusal.status, "complete")
        body = (refusal.message + "\n").encode()
        headers: list[tuple[str, str]] = [("content-type", "text/plain; charset=utf-8"),
                   ("content-length", str(len(body))), ("connection", "close"),
                   *refusal.headers]
        try:
            data = self.conn.send(h11.Response(status_code=refusal.status, headers=headers,
                                               reason=reason(refusal.status)))
            data = (data or b"") + (self.conn.send(h11.Data(data=body)) or b"")
            data += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return
        with contextlib.suppress(ConnectionError, OSError):
            await self.client.write(data)

    def _end(self, ex: Exchange | None, status: int | None, state: str,
             error: str | None = None) -> None:
        if ex is None or self.store is None:
            return
        if status is not None and ex.status is None:
            self.store.respond(ex, status, reason(status).encode(), [])
        self.store.finish(ex, state, error)
        if self.on_request is not None:
            self.on_request(ex)

    # -- one exchange -----------------------------------------------------------
    async def _upstream(self, route: Route) -> Upstream:
        up = self.up
        if up is not None and up.conn.our_state is h11.IDLE and self.up_key == route.key:
            return up
        if up is not None:
            up.close()
            self.up = None
        try:
            io = await asyncio.wait_for(route.opener(), self.config.upstream_timeout)
        except (OSError, TimeoutError) as exc:
            text = ("refused the connection" if isinstance(exc, ConnectionRefusedError)
                    else f"unreachable: {getattr(exc, 'strerror', None) or exc or 'timeout'}")
            raise UpstreamError(text) from exc
        self.up, self.up_key = Upstream(io), route.key
        return self.up

    async def _exchange(self, request: h11.Request, headers: Headers, route: Route) -> bool:
        """Forward one request; return whether the client connection stays open."""
        upgrade = is_upgrade(headers)
        ex = None
        if self.store is not None:
            ex = self.store.begin(request.method, request.target, request.http_version,
                                  route.headers, peer=route.peer or self.peer,
                                  client=self.client_addr)
        try:
            up = await self._upstream(route)
            await up.send(h11.Request(method=request.method, target=route.target,
                                      headers=route.headers))
        except (UpstreamError, ConnectionError, OSError, h11.ProtocolError) as exc:
            text = f"service {exc}" if isinstance(exc, UpstreamError) else "service closed"
            self.role.upstream_failed(text)
            await self._refuse(Refusal(502, f"mesh: the shared {text}"))
            self._end(ex, 502, "error", text)
            return False
        body = asyncio.create_task(self._pump_body(up, ex))
        result = "broken"
        try:
            result = await self._relay_response(up, ex, upgrade, body)
        except UpstreamTimeout:
            await self._refuse(Refusal(504, "mesh: the share did not answer within "
                                            f"{self.config.response_timeout:g} s"))
            self._end(ex, 504, "error", "timed out")
        except BodyTooLarge:
            await self._refuse(Refusal(413, f"request body over {self.config.max_body} bytes"))
            self._end(ex, 413, "error", "body too large")
        except BodySilent:
            await self._refuse(Refusal(408, "mesh: the request body stopped for "
                                            f"{self.config.body_timeout:g} s"))
            self._end(ex, 408, "error", "request body went silent")
        except (ConnectionError, OSError, h11.ProtocolError, UpstreamError) as exc:
            if self.conn.our_state is h11.SEND_RESPONSE:  # nothing sent to the client yet
                await self._refuse(Refusal(502, "mesh: the service closed the connection "
                                                "without a response"))
                self._end(ex, 502, "error", "no response from the service")
            else:
                self.client.abort("upstream broke the response")
                self._end(ex, None, "error", f"response broken: {exc}")
        finally:
            if not body.done():
                await asyncio.wait({body}, timeout=0.1)
            if not body.done():  # the service answered before the upload ended
                body.cancel()
                result = "broken" if result != "upgraded" else result
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await body
        if result != "done":
            return False
        if up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
            up.conn.start_next_cycle()
        else:
            up.close()
            self.up = None
        return True

    async def _pump_body(self, up: Upstream, ex: Exchange | None) -> None:
        conn = self.conn
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(self.client.read(READ),
                                                         self.config.body_timeout))
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if self.config.max_body is not None and size > self.config.max_body:
                    up.io.abort("request body too large")  # never a whole request upstream
                    raise BodyTooLarge()
                if ex is not None:
                    ex.request_body.feed(event.data)
                await up.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await up.send(h11.EndOfMessage())
                return
            else:
                raise h11.RemoteProtocolError("client closed mid-body")

    async def _relay_response(self, up: Upstream, ex: Exchange | None, upgrade: bool,
                              body: asyncio.Task[None]) -> str:
        first = True
        while True:
            event = await self._next_upstream_event(up, body, first)
            first = False
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101 and upgrade:
                    await body
                    return await self._switch(up, ex, event)
                if event.status_code != 101:
                    await self.client.write(self.conn.send(h11.InformationalResponse(
                        status_code=event.status_code, reason=event.reason,
                        headers=strip_hop_by_hop(list(event.headers)))) or b"")
                continue
            if isinstance(event, h11.Response):
                headers = list(event.headers)
                out = strip_hop_by_hop(headers) + framing(headers)
                if ex is not None and self.store is not None:
                    self.store.respond(ex, event.status_code, event.reason, out)
                await self.client.write(self.conn.send(h11.Response(
                    status_code=event.status_code, reason=event.reason, headers=out)) or b"")
            elif isinstance(event, h11.Data):
                if ex is not None:
                    ex.response_body.feed(event.data)
                await self.client.write(self.conn.send(h11.Data(data=event.data)) or b"")
            elif isinstance(event, h11.EndOfMessage):
                await self.client.write(self.conn.send(h11.EndOfMessage()) or b"")
                self._end(ex, None, "complete")
                return "done"
            else:
                raise UpstreamError("service closed the connection mid-response")

    async def _next_upstream_event(self, up: Upstream, body: asyncio.Task[None],
                                   first: bool) -> Any:
        """The next upstream event; the response head within ``response_timeout``, and a
        request body that fails (too large) ends the wait."""
        nxt = asyncio.ensure_future(up.next_event())
        waits: set[asyncio.Future[Any]] = {nxt}
        if not body.done():
            waits.add(body)
        timeout = self.config.response_timeout if first else None
        try:
            while True:
                done, _ = await asyncio.wait(waits, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if nxt in done:
                    return nxt.result()
                if not done:
                    raise UpstreamTimeout()
                waits.discard(body)
                exc = body.exception()
                if isinstance(exc, BodyTooLarge):
                    raise exc
                if isinstance(exc, TimeoutError):
                    up.io.abort("the request body went silent")
                    raise BodySilent()
        finally:
            if not nxt.done():
                nxt.cancel()

    async def _switch(self, up: Upstream, ex: Exchange | None,
                      event: h11.InformationalResponse) -> str:
        headers = strip_hop_by_hop(list(event.headers), keep_upgrade=True)
        await self.client.write(self.conn.send(h11.InformationalResponse(
            status_code=101, reason=event.reason, headers=headers)) or b"")
        if ex is not None and self.store is not None:
            self.store.respond(ex, 101, event.reason, headers)
        started = time.monotonic()
        self.up = None  # the upstream now belongs to the splice
        client = Tapped(self.client, self.conn.trailing_data[0],
                           ex.request_body.feed if ex is not None else None)
        service = Tapped(up.io, up.conn.trailing_data[0],
                            ex.response_body.feed if ex is not None else None)
        try:
            await splice(client, service)
        finally:
            log.debug("upgraded connection ended after %.1f s", time.monotonic() - started)
            self._end(ex, None, "upgraded")
        return "upgraded"
