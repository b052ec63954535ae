"""HTTP mode: an HTTP/1.1 proxy between a tunnelled connection and its upstream.

Two roles, one implementation:

* ``share`` (``mesh share --http``): the sharing side parses each request with
  h11, applies the checks and header policy of httppolicy.py, records it in the
  capture store (inspector) and forwards it to the service over a keep-alive
  connection of its own; the response streams back unbuffered (chunked bodies,
  server-sent events) and a ``101 Switching Protocols`` (WebSocket) turns the
  connection into a byte splice;
* ``guard`` (``mesh connect --http``): the connecting side parses requests only
  to refuse a foreign Host (421, DNS rebinding) before they enter the tunnel.

Defences at the parser, before any byte reaches the upstream: smuggling
(``Content-Length`` with ``Transfer-Encoding``, duplicate ``Content-Length``:
400), heads over 16 KiB (431, h11's ``max_incomplete_event_size``), transfer
codings other than chunked (501), and a head that is not complete 10 s after
the connection opened or after its first byte (408, then close). The upstream
is dialled lazily, on the first request that passed, so a refused request
never opens a connection to the service.

Everything on the wire is h11's: no hand-written HTTP parsing or framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11

from .capture import Exchange, Store
from .policy import (
    Headers,
    Refusal,
    ShareHttpPolicy,
    framing,
    head_problem,
    host_guard,
    is_upgrade,
    reason,
    strip_hop_by_hop,
)

log = logging.getLogger("mesh.http")

READ = 64 * 1024
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Opener = Callable[[], Awaitable[Conn]]


@dataclass(frozen=True)
class HttpConfig:
    """``mesh share --http`` options."""

    basic_auth: tuple[str, str] | None = None
    """Require these Basic credentials (checked by the sharer, never forwarded)."""
    host_header: str | None = None
    """``None`` keeps the client's Host, ``"rewrite"`` sends the service's host:port,
    anything else is sent as is."""
    inspect: str | None = "127.0.0.1:4040"
    """Address of the local inspector (loopback only); ``None`` disables it."""
    header_timeout: float = 10.0
    """Seconds a client has to finish a request head."""
    keepalive_timeout: float = 75.0
    """Seconds an idle keep-alive connection is kept."""
    max_head: int = 16 * 1024
    """Largest request head (request line and headers)."""
    body_cap: int = 128 * 1024
    """Bytes of each body kept for the inspector."""
    history: int = 200
    """Exchanges kept for the inspector."""
    upstream_timeout: float = 10.0
    """Seconds to connect to the service."""
    response_timeout: float | None = None
    """Seconds the upstream has to start its response (then 504); None: no limit."""
    max_body: int | None = None
    """Largest request body accepted (413 beyond it); None: no limit."""


@dataclass(frozen=True)
class Route:
    """Where a router (the gateway) sends one request, and how."""

    key: str
    """Requests with the same key may reuse one upstream connection."""
    opener: Opener
    target: bytes
    headers: Headers
    """The headers to send upstream (already transformed, framing included)."""
    release: Callable[[], None] = lambda: None
    """Called once the exchange is over (stream counters)."""


Router = Callable[[h11.Request, Headers], Awaitable["Route | Refusal"]]


class UpstreamError(Exception):
    """The service could not be reached or broke the response."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not start its response in time."""


class BodyTooLarge(Exception):
    """The request body went over ``max_body`` while streaming."""


class _Upstream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ)
            self.conn.receive_data(data)

    def close(self) -> None:
        self.writer.close()


async def pipe_pair() -> tuple[Conn, Conn]:
    """Two connected in-process stream ends (a Unix socket pair): HTTP mode puts the
    proxy on one end and the tunnel stream on the other."""
    ours, theirs = socket.socketpair()
    return (await asyncio.open_connection(sock=ours),
            await asyncio.open_connection(sock=theirs))


async def _send(writer: asyncio.StreamWriter, data: bytes | None) -> None:
    if data:
        writer.write(data)
        await writer.drain()


class HttpSession:
    """One client connection in HTTP mode."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        open_upstream: Opener | None,
        *,
        config: HttpConfig,
        router: Router | None = None,
        policy: ShareHttpPolicy | None = None,
        guard_port: int | None = None,
        store: Store | None = None,
        on_request: Callable[[Exchange], None] | None = None,
        on_upstream_error: Callable[[str], None] | None = None,
        peer: str = "",
        client: str = "",
    ) -> None:
        self.reader, self.writer = reader, writer
        self.open_upstream = open_upstream
        self.router = router
        self.up_key = ""
        self.config = config
        self.policy = policy
        self.guard_port = guard_port
        self.store = store
        self.on_request = on_request
        self.on_upstream_error = on_upstream_error
        self.peer, self.client = peer, client
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_head)
        self.up: _Upstream | None = None

    async def run(self) -> None:
        try:
            await self._serve()
        except (ConnectionError, OSError, h11.ProtocolError, asyncio.IncompleteReadError) as exc:
            log.debug("http session ended: %s", exc)
        finally:
            if self.up is not None:
                self.up.close()
            self.writer.close()

    # -- the request loop -------------------------------------------------------
    async def _serve(self) -> None:
        first = True
        while True:
            request = await self._next_head(first)
            if request is None:
                return
            first = False
            headers: Headers = list(request.headers)
            refusal = None
            if self.guard_port is not None:
                refusal = host_guard(headers, self.guard_port)
            if refusal is None and self.policy is not None:
                refusal = self.policy.check(headers)
            if refusal is None and self.config.max_body is not None:
                length = dict(headers).get(b"content-length")
                if length is not None and int(length) > self.config.max_body:
                    refusal = Refusal(413, f"request body over {self.config.max_body} bytes")
            route: Route | None = None
            if refusal is None and self.router is not None:
                routed = await self.router(request, headers)
                if isinstance(routed, Refusal):
                    refusal = routed
                else:
                    route = routed
            if refusal is not None:
                self._log_refusal(request, headers, refusal)
                await self._refuse(refusal)
                return
            try:
                keep = await self._exchange(request, headers, route)
            finally:
                if route is not None:
                    route.release()
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
                    await self._refuse(problem)
                    return None
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if conn.trailing_data[0] or not conn.trailing_data[1]:
                    await self._refuse(Refusal(exc.error_status_hint, str(exc)))
                return None
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed
            if head_deadline is None and conn.trailing_data[0]:
                head_deadline = loop.time() + self.config.header_timeout
            deadline = head_deadline or started + self.config.keepalive_timeout
            try:
                data = await asyncio.wait_for(self.reader.read(READ), deadline - loop.time())
            except TimeoutError:
                if conn.trailing_data[0]:
                    await self._refuse(Refusal(408, "request head not complete within "
                                                    f"{self.config.header_timeout:g} s"))
                return None
            conn.receive_data(data)

    async def _refuse(self, refusal: Refusal) -> None:
        body = (refusal.message + "\n").encode()
        headers = [("content-type", "text/plain; charset=utf-8"),
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
            await _send(self.writer, data)

    def _log_refusal(self, request: h11.Request, headers: Headers, refusal: Refusal) -> None:
        if self.store is None:
            return
        ex = self.store.begin(request.method, request.target, request.http_version, headers,
                              peer=self.peer, client=self.client)
        self.store.respond(ex, refusal.status, reason(refusal.status).encode(), [])
        self.store.finish(ex, "complete")
        if self.on_request is not None:
            self.on_request(ex)

    # -- one exchange -----------------------------------------------------------
    async def _upstream(self, route: Route | None) -> _Upstream:
        key = route.key if route is not None else ""
        if self.up is not None and self.up.conn.our_state is h11.IDLE and self.up_key == key:
            return self.up
        if self.up is not None:
            self.up.close()
            self.up = None
        opener = route.opener if route is not None else self.open_upstream
        assert opener is not None
        try:
            reader, writer = await asyncio.wait_for(opener(), self.config.upstream_timeout)
        except (OSError, TimeoutError) as exc:
            text = ("refused the connection" if isinstance(exc, ConnectionRefusedError)
                    else f"unreachable: {getattr(exc, 'strerror', None) or 'timeout'}")
            raise UpstreamError(text) from exc
        self.up = _Upstream(reader, writer)
        self.up_key = key
        return self.up

    async def _exchange(self, request: h11.Request, headers: Headers,
                        route: Route | None = None) -> bool:
        """Forward one request; return whether the client connection stays open."""
        upgrade = is_upgrade(headers)
        target = request.target
        if route is not None:
            out, target = route.headers, route.target
        elif self.policy is not None:
            out = self.policy.upstream_headers(headers, peer=self.peer, client=self.client,
                                               upgrade=upgrade)
        else:
            out = strip_hop_by_hop(headers, keep_upgrade=upgrade) + framing(headers)
        ex = None
        if self.store is not None:
            ex = self.store.begin(request.method, request.target, request.http_version, out,
                                  peer=route.key if route is not None else self.peer,
                                  client=self.client)
        try:
            up = await self._upstream(route)
            await up.send(h11.Request(method=request.method, target=target, headers=out))
        except (UpstreamError, ConnectionError, OSError, h11.ProtocolError) as exc:
            text = f"service {exc}" if isinstance(exc, UpstreamError) else "service closed"
            if self.on_upstream_error is not None:
                self.on_upstream_error(text)
            await self._refuse(Refusal(502, f"mesh: the shared {text}"))
            self._end(ex, 502, "error", text)
            return False
        body = asyncio.create_task(self._pump_body(up, ex))
        try:
            result = await self._relay_response(up, ex, upgrade, body)
        except UpstreamTimeout:
            result = "broken"
            await self._refuse(Refusal(504, "mesh: the share did not answer within "
                                            f"{self.config.response_timeout:g} s"))
            self._end(ex, 504, "error", "timed out")
        except BodyTooLarge:
            result = "broken"
            await self._refuse(Refusal(413, f"request body over {self.config.max_body} bytes"))
            self._end(ex, 413, "error", "body too large")
        except (ConnectionError, OSError, h11.ProtocolError, UpstreamError) as exc:
            result = "broken"
            if ex is not None and ex.status is None:
                await self._refuse(Refusal(502, "mesh: the service closed the connection "
                                                "without a response"))
                self._end(ex, 502, "error", "no response from the service")
            else:
                self.writer.transport.abort()
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

    def _end(self, ex: Exchange | None, status: int | None, state: str,
             error: str | None = None) -> None:
        if ex is None or self.store is None:
            return
        if status is not None and ex.status is None:
            self.store.respond(ex, status, reason(status).encode(), [])
        self.store.finish(ex, state, error)
        if self.on_request is not None:
            self.on_request(ex)

    async def _pump_body(self, up: _Upstream, ex: Exchange | None) -> None:
        conn = self.conn
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(self.reader.read(READ),
                                              self.config.keepalive_timeout)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if self.config.max_body is not None and size > self.config.max_body:
                    up.writer.transport.abort()  # the upstream never gets a whole request
                    raise BodyTooLarge()
                if ex is not None:
                    ex.request_body.feed(event.data)
                await up.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await up.send(h11.EndOfMessage())
                return
            else:
                raise h11.RemoteProtocolError("client closed mid-body")

    async def _relay_response(self, up: _Upstream, ex: Exchange | None, upgrade: bool,
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
                    await _send(self.writer, self.conn.send(h11.InformationalResponse(
                        status_code=event.status_code, reason=event.reason,
                        headers=strip_hop_by_hop(list(event.headers)))))
                continue
            if isinstance(event, h11.Response):
                headers = list(event.headers)
                out = strip_hop_by_hop(headers) + framing(headers)
                if ex is not None and self.store is not None:
                    self.store.respond(ex, event.status_code, event.reason, out)
                await _send(self.writer, self.conn.send(h11.Response(
                    status_code=event.status_code, reason=event.reason, headers=out)))
            elif isinstance(event, h11.Data):
                if ex is not None:
                    ex.response_body.feed(event.data)
                await _send(self.writer, self.conn.send(h11.Data(data=event.data)))
            elif isinstance(event, h11.EndOfMessage):
                await _send(self.writer, self.conn.send(h11.EndOfMessage()))
                self._end(ex, None, "complete")
                return "done"
            else:
                raise UpstreamError("service closed the connection mid-response")

    async def _next_upstream_event(self, up: _Upstream, body: asyncio.Task[None],
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
        finally:
            if not nxt.done():
                nxt.cancel()

    async def _switch(self, up: _Upstream, ex: Exchange | None,
                      event: h11.InformationalResponse) -> str:
        headers = strip_hop_by_hop(list(event.headers), keep_upgrade=True)
        await _send(self.writer, self.conn.send(h11.InformationalResponse(
            status_code=101, reason=event.reason, headers=headers)))
        if ex is not None and self.store is not None:
            self.store.respond(ex, 101, event.reason, headers)
        client_rest = self.conn.trailing_data[0]
        up_rest = up.conn.trailing_data[0]
        self.up = None  # the upstream socket now belongs to the splice

        async def pipe(reader: asyncio.StreamReader, first: bytes,
                       writer: asyncio.StreamWriter, body: Any) -> None:
            try:
                if first:
                    writer.write(first)
                    body.feed(first)
                while data := await reader.read(READ):
                    writer.write(data)
                    body.feed(data)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError):
                writer.transport.abort()

        class _Null:
            def feed(self, data: bytes) -> None:
                pass

        req_body: Any = ex.request_body if ex is not None else _Null()
        resp_body: Any = ex.response_body if ex is not None else _Null()
        started = time.monotonic()
        try:
            await asyncio.gather(pipe(self.reader, client_rest, up.writer, req_body),
                                 pipe(up.reader, up_rest, self.writer, resp_body))
        finally:
            up.writer.close()
            log.debug("upgraded connection ended after %.1f s", time.monotonic() - started)
            self._end(ex, None, "upgraded")
        return "upgraded"


async def replay(store: Store, original: Exchange, open_upstream: Opener, *,
                 method: str | None = None, target: str | None = None,
                 headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
                 timeout: float = 30.0,
                 on_request: Callable[[Exchange], None] | None = None) -> Exchange:
    """Send a recorded request (optionally edited) to the service again and record it."""
    send_body = bytes(original.request_body.data) if body is None else body
    if body is None and original.request_body.truncated:
        raise ValueError("the recorded body was cut at the capture limit; edit the "
                         "request to send a body of your own")
    hdrs: Headers = ([(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
                     if headers is not None else list(original.request_headers))
    hdrs = [(k, v) for k, v in hdrs if k not in (b"content-length", b"transfer-encoding",
                                                 b"connection", b"upgrade")]
    m = (method or original.method).encode("latin-1")
    if send_body or m not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        hdrs.append((b"content-length", str(len(send_body)).encode()))
    if not any(k == b"host" for k, _ in hdrs):
        hdrs.insert(0, (b"host", b"localhost"))
    request = h11.Request(method=m, target=(target or original.target).encode("latin-1"),
                          headers=hdrs)
    ex = store.begin(request.method, request.target, b"1.1", list(request.headers),
                     peer="inspector", client="127.0.0.1", replay_of=original.id)
    ex.request_body.feed(send_body)
    up: _Upstream | None = None
    try:
        async with asyncio.timeout(timeout):
            up = _Upstream(*await open_upstream())
            await up.send(request)
            if send_body:
                await up.send(h11.Data(data=send_body))
            await up.send(h11.EndOfMessage())
            while True:
                event = await up.next_event()
                if isinstance(event, h11.Response | h11.InformationalResponse):
                    store.respond(ex, event.status_code, event.reason, list(event.headers))
                    if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                        store.finish(ex, "upgraded")
                        break
                elif isinstance(event, h11.Data):
                    ex.response_body.feed(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    store.finish(ex, "complete")
                    break
                else:
                    raise UpstreamError("service closed the connection mid-response")
    except (TimeoutError, OSError, h11.ProtocolError, UpstreamError) as exc:
        store.finish(ex, "error", f"replay failed: {exc or type(exc).__name__}")
    finally:
        if up is not None:
            up.close()
    if on_request is not None:
        on_request(ex)
    return ex
