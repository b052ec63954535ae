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

Reading request heads and answering by itself are downstream.py's. A route may
name a second upstream (a pool's other member): a request safe to repeat
(GET, HEAD, OPTIONS, or carrying ``Idempotency-Key``) whose upstream fails
before any answer goes there once, its body (up to ``REPLAY_CAP``) replayed;
any request goes there when its upstream could not even be opened. A route's
``ResponseFilter`` rewrites the answer as it streams back.

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
from collections.abc import Callable
from typing import Any

import h11

from mesh.transport.duplex import Duplex, Tapped, splice

from .capture import Exchange, Store
from .config import HttpConfig
from .downstream import Downstream
from .policy import (
    Headers,
    Refusal,
    framing,
    header,
    is_upgrade,
    reason,
    strip_hop_by_hop,
)
from .route import (
    READ,
    Answer,
    BodySilent,
    BodyTooLarge,
    Opener,
    Role,
    Route,
    Upstream,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = ["READ", "Answer", "HttpProxy", "Opener", "Role", "Route", "Upstream",
           "UpstreamError"]
SAFE = (b"GET", b"HEAD", b"OPTIONS")
REPLAY_CAP = 1024 * 1024
"""Request bodies up to this size are kept so the request can go to a second upstream."""


class _Again(Exception):
    """The upstream failed before answering and the request may go to another."""


log = logging.getLogger("mesh.http")


class HttpProxy(Downstream):
    """Serves one client connection until it closes."""

    def __init__(self, client: Duplex, role: Role, *, config: HttpConfig,
                 store: Store | None = None,
                 on_request: Callable[[Exchange], None] | None = None,
                 peer: str = "", client_addr: str = "") -> None:
        super().__init__(client, config=config, store=store, on_request=on_request,
                         peer=peer, client_addr=client_addr)
        self.role = role
        self.up: Upstream | None = None
        self.up_key = ""
        self._saved: bytearray | None = None
        """The request body so far, while the request may still go to a second upstream."""
        self._body = "unread"
        """The request body: unread, partial (being pumped) or read."""

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
            if isinstance(routed, Answer):
                keep = await self._answer(request, headers, routed)
            else:
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
        """Forward one request (to a second upstream if the first fails before answering
        and the request is safe to repeat); return whether the client connection stays
        open."""
        ex = None
        if self.store is not None:
            ex = self.store.begin(request.method, request.target, request.http_version,
                                  route.headers, peer=route.peer or self.peer,
                                  client=self.client_addr)
        safe = request.method in SAFE or header(headers, b"idempotency-key") is not None
        self._saved = (
            bytearray() if route.retry is not None and safe and not is_upgrade(headers)
            else None)
        self._body = "unread"
        second: Route | None = None
        try:
            while True:
                if ex is not None:
                    ex.member = route.member
                try:
                    return await self._attempt(request, headers, route, ex)
                except _Again as again:
                    route.report(None)
                    nxt = await route.retry() if route.retry is not None else None
                    if not isinstance(nxt, Route):
                        text = str(again)
                        self.role.upstream_failed(text)
                        await self._refuse(Refusal(502, f"mesh: the shared {text}"))
                        self._end(ex, 502, "error", text)
                        return False
                    second = route = nxt
                    if ex is not None:
                        ex.retries += 1
        finally:
            if second is not None:
                second.release()

    def _may_retry(self, route: Route, sent: bool) -> bool:
        """Whether a failure before any answer may go to another upstream: nothing sent
        yet and the body still unread (any request), or a request safe to repeat whose
        body is unread or was kept whole."""
        if route.retry is None or self._body == "partial":
            return False
        if not sent and self._body == "unread":
            return True
        return self._saved is not None

    async def _attempt(self, request: h11.Request, headers: Headers, route: Route,
                       ex: Exchange | None) -> bool:
        upgrade = is_upgrade(headers)
        sent = False
        try:
            up = await self._upstream(route)
            sent = True
            await up.send(h11.Request(method=request.method, target=route.target,
                                      headers=route.headers))
        except (UpstreamError, ConnectionError, OSError, h11.ProtocolError) as exc:
            text = f"service {exc}" if isinstance(exc, UpstreamError) else "service closed"
            if self.up is not None and sent:
                self.up.close()
                self.up = None
            if self._may_retry(route, sent):
                raise _Again(text) from exc
            route.report(None)
            self.role.upstream_failed(text)
            await self._refuse(Refusal(502, f"mesh: the shared {text}"))
            self._end(ex, 502, "error", text)
            return False
        if self._body == "read":  # a second upstream: the body was read and kept
            body = asyncio.ensure_future(self._replay_body(up))
        else:
            body = asyncio.create_task(self._pump_body(up, ex))
        result = "broken"
        try:
            result = await self._relay_response(up, ex, upgrade, body, route)
        except UpstreamTimeout:
            route.report(None)
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
                if not body.done():
                    body.cancel()
                self.up = None
                up.close()
                if self._may_retry(route, sent=True):
                    raise _Again("service closed the connection without a response") from exc
                route.report(None)
                await self._refuse(Refusal(502, "mesh: the service closed the connection "
                                                "without a response"))
                self._end(ex, 502, "error", "no response from the service")
            else:
                route.report(None)
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

    async def _replay_body(self, up: Upstream) -> None:
        if self._saved:
            await up.send(h11.Data(data=bytes(self._saved)))
        await up.send(h11.EndOfMessage())

    async def _pump_body(self, up: Upstream, ex: Exchange | None) -> None:
        conn = self.conn
        size = 0
        self._body = "partial"
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
                if self._saved is not None:
                    self._saved += event.data
                    if len(self._saved) > REPLAY_CAP:
                        self._saved = None
                await up.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._body = "read"
                await up.send(h11.EndOfMessage())
                return
            else:
                raise h11.RemoteProtocolError("client closed mid-body")

    async def _relay_response(self, up: Upstream, ex: Exchange | None, upgrade: bool,
                              body: asyncio.Task[None], route: Route) -> str:
        first = True
        filt = route.respond
        while True:
            event = await self._next_upstream_event(up, body, first)
            first = False
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101 and upgrade:
                    await body
                    route.report(101)
                    return await self._switch(up, ex, event)
                if event.status_code != 101:
                    await self.client.write(self.conn.send(h11.InformationalResponse(
                        status_code=event.status_code, reason=event.reason,
                        headers=strip_hop_by_hop(list(event.headers)))) or b"")
                continue
            if isinstance(event, h11.Response):
                route.report(event.status_code)
                headers = list(event.headers)
                out = strip_hop_by_hop(headers) + framing(headers)
                status, why = event.status_code, event.reason
                if filt is not None:
                    status, out = filt.head(status, out)
                    why = event.reason if status == event.status_code else reason(status).encode()
                if ex is not None and self.store is not None:
                    self.store.respond(ex, status, why, out)
                await self.client.write(self.conn.send(h11.Response(
                    status_code=status, reason=why, headers=out)) or b"")
            elif isinstance(event, h11.Data):
                chunk = filt.data(event.data) if filt is not None else event.data
                if ex is not None:
                    ex.response_body.feed(event.data)
                if chunk:
                    await self.client.write(self.conn.send(h11.Data(data=chunk)) or b"")
            elif isinstance(event, h11.EndOfMessage):
                tail = filt.end() if filt is not None else b""
                if ex is not None and filt is not None:
                    ex.cache = filt.cache
                data = self.conn.send(h11.Data(data=tail)) or b"" if tail else b""
                await self.client.write(data + (self.conn.send(h11.EndOfMessage()) or b""))
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
