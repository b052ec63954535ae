"""The inspector's Replay: send a recorded request (optionally edited) to the service again.

What is sent is what the service received the first time (the capture store
records the headers after the share's header policy), with its framing
re-derived by h11; a body cut at the capture cap is refused unless the edit
brings a body of its own. The replayed exchange is recorded like any other,
with ``replay_of`` naming the original.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import h11

from .capture import Exchange, Store
from .policy import Headers
from .proxy import Opener, Upstream, UpstreamError


class ReplayRefused(ValueError):
    """The recorded request cannot be sent again as it is."""


def _request(original: Exchange, method: str | None, target: str | None,
             headers: list[tuple[str, str]] | None, body: bytes) -> h11.Request:
    try:  # every field is checked by h11 (and Latin-1) before anything is sent
        hdrs: Headers = ([(k.lower().encode("latin-1"), v.encode("latin-1"))
                          for k, v in headers]
                         if headers is not None else list(original.request_headers))
        hdrs = [(k, v) for k, v in hdrs if k not in (b"content-length", b"transfer-encoding",
                                                     b"connection", b"upgrade")]
        m = (method or original.method).encode("latin-1")
        if body or m not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
            hdrs.append((b"content-length", str(len(body)).encode()))
        if not any(k == b"host" for k, _ in hdrs):
            hdrs.insert(0, (b"host", b"localhost"))
        return h11.Request(method=m, target=(target or original.target).encode("latin-1"),
                           headers=hdrs)
    except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
        raise ReplayRefused(f"the edited request is not valid HTTP: {exc}") from None


async def replay(store: Store, original: Exchange, open_upstream: Opener, *,
                 method: str | None = None, target: str | None = None,
                 headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
                 timeout: float = 30.0,
                 on_request: Callable[[Exchange], None] | None = None) -> Exchange:
    """Send ``original`` again, with the given edits; record and return the new exchange."""
    send_body = bytes(original.request_body.data) if body is None else body
    if body is None and original.request_body.truncated:
        raise ReplayRefused("the recorded body was cut at the capture limit; edit the "
                            "request to send a body of your own")
    request = _request(original, method, target, headers, send_body)
    ex = store.begin(request.method, request.target, b"1.1", list(request.headers),
                     peer="inspector", client="127.0.0.1", replay_of=original.id)
    ex.request_body.feed(send_body)
    up: Upstream | None = None
    try:
        async with asyncio.timeout(timeout):
            up = Upstream(await open_upstream())
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
