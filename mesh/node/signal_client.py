"""A node's session with a signaling server (protocol: signaling/protocol.py).

Connects, proves key ownership by signing the server's hello nonce, then
sends and receives opaque payloads (sealed envelopes) addressed by node id.
After the first successful registration it keeps the session alive: when the
server goes away it reconnects with jittered exponential backoff (capped at a
few seconds, so a share is back within seconds of the server) and tries the
next URL in the list. aiohttp errors are translated into ``SignalingError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import WSCloseCode

from mesh.errors import MeshError, NameTaken, NotOwner, PeerUnreachable, SignalingError
from mesh.proto import frames as p
from mesh.proto.identity import Identity

log = logging.getLogger("mesh.signal")

OnPayload = Callable[[str, bytes], None]
OnState = Callable[[str, str], None]

CONNECT_TIMEOUT = 10.0
FAST_TIMEOUT = 2.0
BACKOFF_MIN = 0.25
BACKOFF_MAX = 3.0


class SignalClient:
    """Registration and payload routing through one of ``urls``."""

    def __init__(
        self,
        identity: Identity,
        urls: list[str],
        on_payload: OnPayload,
        on_state: OnState | None = None,
        fast_urls: frozenset[str] = frozenset(),
        on_registered: Callable[[], None] | None = None,
    ) -> None:
        if not urls:
            raise SignalingError("no signaling server configured")
        self.identity = identity
        self.urls = list(urls)
        self.url = self.urls[0]
        self.ice_servers: tuple[dict[str, Any], ...] = ()
        self.relay_policy: dict[str, Any] | None = None
        """What the server's embedded relay refuses and allows (None: not told)."""
        self._on_payload = on_payload
        self._on_state = on_state or (lambda state, url: None)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._refs = itertools.count(1)
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._pongs: list[asyncio.Future[None]] = []
        self.registered = asyncio.Event()
        self._fast = fast_urls
        self._on_registered = on_registered
        self._names: dict[int, asyncio.Future[p.NameResult]] = {}
        self._going_away = False
        """URLs (LAN hints) given up on after FAST_TIMEOUT rather than CONNECT_TIMEOUT."""

    async def start(self) -> None:
        """Register with the first reachable server; raises SignalingError if none is."""
        self._http = aiohttp.ClientSession()
        errors: list[str] = []
        for url in self.urls:
            try:
                await self._connect(url)
            except SignalingError as exc:
                errors.append(str(exc))
                continue
            self._task = asyncio.create_task(self._run())
            return
        await self._http.close()
        raise SignalingError("; ".join(errors))

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        for fut in self._pending.values():
            fut.cancel()

    async def send(self, to: str, payload: bytes) -> asyncio.Future[None]:
        """Send a payload; the returned future fails if the server reports an error for it."""
        ws = self._ws
        if ws is None or ws.closed or not self.registered.is_set():
            raise SignalingError(f"not connected to the signaling server {self.url}")
        ref = next(self._refs)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[ref] = fut
        asyncio.get_running_loop().call_later(60, self._forget, ref)
        try:
            await ws.send_str(p.encode(p.Send(to, payload, ref)))
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self._forget(ref)
            raise SignalingError(f"lost the signaling server {self.url}: {exc}") from exc
        return fut

    async def ping(self, timeout: float = 5.0) -> float | None:
        """Round trip to the signaling server in ms (None if it did not answer)."""
        ws = self._ws
        if ws is None or ws.closed:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(fut)
        t0 = time.monotonic()
        try:
            await ws.send_str(p.encode(p.Ping()))
            await asyncio.wait_for(fut, timeout)
        except (TimeoutError, aiohttp.ClientError, ConnectionError, RuntimeError):
            return None
        return round((time.monotonic() - t0) * 1000, 2)

    async def name(self, op: str, name: str, timeout: float = 10.0,
                   roster: str | None = None) -> p.NameResult:
        """Claim, release, look up a public name or store its pool's roster (see
        mesh/proto/frames.py)."""
        ws = self._ws
        if ws is None or ws.closed or not self.registered.is_set():
            raise SignalingError(f"not connected to the signaling server {self.url}")
        ref = next(self._refs)
        fut: asyncio.Future[p.NameResult] = asyncio.get_running_loop().create_future()
        self._names[ref] = fut
        try:
            await ws.send_str(p.encode(p.NameOp(op, name, ref, roster)))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise SignalingError(f"the signaling server did not answer a name {op}") from None
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise SignalingError(f"lost the signaling server {self.url}: {exc}") from exc
        finally:
            self._names.pop(ref, None)

    async def announce_gateway(self, domain: str, url: str) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise SignalingError(f"not connected to the signaling server {self.url}")
        await ws.send_str(p.encode(p.Announce(domain, url)))

    def _forget(self, ref: int) -> None:
        fut = self._pending.pop(ref, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def _connect(self, url: str) -> None:
        assert self._http is not None
        limit = FAST_TIMEOUT if url in self._fast else CONNECT_TIMEOUT
        try:
            ws = await asyncio.wait_for(self._http.ws_connect(
                url, heartbeat=20, max_msg_size=p.MAX_FRAME * 2,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            ), limit)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise SignalingError(f"cannot reach signaling server {url}: "
                                 f"{_describe(exc)}") from exc
        try:
            async with asyncio.timeout(limit):
                hello = await self._read(ws)
                if not isinstance(hello, p.Hello):
                    raise SignalingError(f"{url} is not a mesh signaling server")
                node = self.identity.node_id
                sig = self.identity.sign(p.register_message(hello.nonce, node))
                await ws.send_str(p.encode(p.Register(node, sig)))
                reply = await self._read(ws)
                if isinstance(reply, p.Error):
                    raise SignalingError(f"{url} refused registration: {reply.message}")
                if not isinstance(reply, p.Registered):
                    raise SignalingError(f"{url} answered registration with nonsense")
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            await ws.close()
            raise SignalingError(f"signaling server {url} did not complete registration") from exc
        except MeshError:
            await ws.close()
            raise
        self.ice_servers = reply.ice_servers
        self.relay_policy = reply.relay
        self._ws = ws
        self.url = url
        self.registered.set()
        self._on_state("registered", url)
        if self._on_registered is not None:
            self._on_registered()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> p.ServerFrame:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise SignalingError("signaling server closed the connection")
        try:
            return p.parse_server_frame(msg.data)
        except p.FrameError as exc:
            raise SignalingError(f"signaling server sent a bad frame: {exc.message}") from exc

    async def _run(self) -> None:
        """Pump frames; reconnect whenever the session drops (at once, and to another URL
        first, when the server said it is going away)."""
        backoff = BACKOFF_MIN
        while not self._closed:
            ws = self._ws
            going_away = False
            if ws is not None:
                self._going_away = False
                await self._pump(ws)
                going_away = self._going_away or ws.close_code == WSCloseCode.GOING_AWAY
                self.registered.clear()
                self._ws = None
                if self._closed:
                    return
                self._on_state("disconnected", self.url)
            others = [u for u in self.urls if u != self.url]
            order = others + [self.url] if going_away else [self.url] + others
            if not going_away:
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(BACKOFF_MAX, backoff * 2)
            elif not others:  # the same server restarting: give it a moment
                await asyncio.sleep(BACKOFF_MIN * random.uniform(0.5, 1.5))
            for url in order:
                try:
                    await self._connect(url)
                    backoff = BACKOFF_MIN
                    break
                except SignalingError as exc:
                    log.debug("reconnect failed: %s", exc)

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    frame = p.parse_server_frame(msg.data)
                except p.FrameError:
                    log.warning("ignoring malformed frame from the signaling server")
                    continue
                self._handle(frame)
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            pass

    def _handle(self, frame: p.ServerFrame) -> None:
        match frame:
            case p.Deliver(sender, payload):
                try:
                    self._on_payload(sender, payload)
                except Exception:  # a handler bug must not kill the session
                    log.exception("payload handler failed")
            case p.NameResult(ref=ref):
                waiting = self._names.get(ref) if ref is not None else None
                if waiting is not None and not waiting.done():
                    waiting.set_result(frame)
            case p.Error(code, message, ref) if ref is not None and ref in self._names:
                named = self._names[ref]
                if not named.done():
                    named.set_exception(NameTaken(message)
                                        if code in ("name-taken", "name-quota")
                                        else NotOwner(message) if code == "not-owner"
                                        else SignalingError(f"signaling: {message}"))
            case p.Error("shutting-down", _, _):
                self._going_away = True
            case p.Error(code, message, ref):
                fut = self._pending.pop(ref, None) if ref is not None else None
                if fut is not None and not fut.done():
                    exc_type = PeerUnreachable if code == "unknown-destination" else SignalingError
                    fut.set_exception(exc_type(f"signaling: {message}"))
                    fut.exception()  # mark retrieved: nobody may be waiting
                else:
                    log.warning("signaling server: %s (%s)", message, code)
            case p.Pong():
                while self._pongs:
                    fut = self._pongs.pop(0)
                    if not fut.done():
                        fut.set_result(None)
                        break
            case _:
                pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"HTTP {exc.status} (is this a mesh signaling URL?)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return "not a valid ws:// or wss:// URL"
    return str(exc) or type(exc).__name__
