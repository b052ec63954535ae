"""The client's side of a proxied HTTP/1.1 connection: request heads in, our own answers out.

``Downstream`` reads each request head with h11 and the parser defences of
mesh/http/policy.py (431, 400, 408 for a head too slow), answers by itself when
a role refuses (a ``Refusal``: the connection closes) or answers (an
``Answer``: a cache hit or a CORS preflight; the connection stays open), and
records every exchange in the capture store. ``HttpProxy`` (proxy.py) adds
the forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import h11

from mesh.transport.duplex import Duplex

from .capture import Exchange, Store
from .config import HttpConfig
from .policy import Headers, Refusal, head_problem, reason, request_line
from .route import READ, Answer


class Downstream:
    def __init__(self, client: Duplex, *, config: HttpConfig, store: Store | None = None,
                 on_request: Callable[[Exchange], None] | None = None,
                 peer: str = "", client_addr: str = "") -> None:
        self.client = client
        self.config = config
        self.store = store
        self.on_request = on_request
        self.peer, self.client_addr = peer, client_addr
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_head)

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

    # -- the role's own answer ----------------------------------------------------
    async def _answer(self, request: h11.Request, headers: Headers, answer: Answer) -> bool:
        """Send the role's own response; the connection stays open if the request had
        no body."""
        ex = None
        if self.store is not None:
            ex = self.store.begin(request.method, request.target, request.http_version,
                                  headers, peer=self.peer, client=self.client_addr)
            ex.cache = answer.cache
            self.store.respond(ex, answer.status, reason(answer.status).encode(),
                               answer.headers)
            ex.response_body.feed(answer.body)
        body = answer.body if request.method != b"HEAD" else b""
        out = [(k, v) for k, v in answer.headers if k != b"content-length"]
        if answer.status not in (204, 304):
            out.append((b"content-length", str(len(answer.body)).encode()))
        data = self.conn.send(h11.Response(status_code=answer.status, headers=out,
                                           reason=reason(answer.status))) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.client.write(data)
        self._end(ex, None, "complete")
        event = self.conn.next_event()
        return isinstance(event, h11.EndOfMessage)
