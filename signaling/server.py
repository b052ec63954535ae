"""The signaling server: aiohttp glue around the protocol in ``protocol.py``.

Routes: ``GET /`` upgrades to the signaling WebSocket; ``GET /healthz``
answers ``{"ok": true, "nodes": N}``.

Per connection: a hello with a fresh nonce, a registration deadline, a token
bucket on incoming frames, a frame size cap, and a bounded outgoing queue
drained by one writer task. Malformed input gets an error frame, and for the
codes in ``protocol.CLOSE_CODES`` a close; nothing a client sends can stop the
server serving the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from mesh.errors import AddressInUse, ConfigError
from mesh.proto import frames as p
from mesh.proto import names
from mesh.proto.identity import verify
from mesh.proto.limits import ConnectionCounter, TokenBucket
from mesh.proto.metrics import render as render_metrics

from .broker import Broker, MemoryBroker, TooManySessions
from .names import NameRules
from .naming import name_op
from .turn import rest_credentials

log = logging.getLogger("mesh.signal")

Rewrite = Callable[[str, str, bytes], bytes]
STOP_TIMEOUT = 2.0
"""Seconds sessions get to close when the server stops."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8765
    """Port to listen on; 0 picks a free one."""
    max_frame: int = p.MAX_FRAME
    """Largest frame accepted, in bytes."""
    rate: float = 50.0
    """Frames per second allowed per connection (sustained)."""
    burst: float = 200.0
    """Frames a connection may send in a burst."""
    max_conns_per_ip: int = 64
    """Concurrent WebSocket connections allowed from one client address."""
    register_timeout: float = 10.0
    """Seconds a new connection has to register."""
    outbox: int = 256
    """Frames queued for one slow client before further ones are refused."""
    outbox_bytes: int = 512 * 1024
    """Bytes of frames one session may have waiting; beyond, frames to it are dropped
    (a sender gets "recipient-busy")."""
    relay_policy: dict[str, Any] | None = None
    """What the embedded relay refuses and allows, told to each node (mesh netcheck)."""
    max_sessions_per_key: int = 8
    """Sessions (processes) one node key may hold on this server; the next is refused."""
    names: NameRules = field(default_factory=NameRules)
    """Public names: how many one key may hold, how long an absent holder keeps one."""
    claim_rate: float = 0.2
    """Name claims per second from one client address (sustained)."""
    claim_burst: float = 20.0
    stun_urls: tuple[str, ...] = field(default=())
    """STUN URLs handed to each registered node."""
    turn_urls: tuple[str, ...] = field(default=())
    """TURN URLs handed to each registered node, with fresh REST credentials."""
    turn_secret: bytes | None = None
    """Shared secret the TURN server(s) verify REST credentials with."""
    turn_ttl: int = 24 * 3600
    """Seconds the handed-out TURN credentials stay valid."""
    gateways: frozenset[str] = frozenset()
    """Node ids allowed to announce themselves as the public gateway (``--gateway``)."""

    def __post_init__(self) -> None:
        names.check_host(self.host, "--host")
        names.check_port(self.port, "--port", zero_ok=True)
        for key in self.gateways:
            names.check_node_id(key, "--gateway")
        for what in ("rate", "burst", "register_timeout"):
            names.check_positive(getattr(self, what), "--" + what.replace("_", "-"))
        if self.max_conns_per_ip < 1 or self.outbox < 1 or self.max_frame < 1024:
            raise ConfigError("--max-conns-per-ip must be at least 1")
        if self.outbox_bytes < 2 * self.max_frame:
            raise ConfigError("the outbox must hold at least two of the largest frames")

    def ice_servers(self, node: str, now: float) -> tuple[dict[str, Any], ...]:
        servers: list[dict[str, Any]] = []
        if self.stun_urls:
            servers.append({"urls": list(self.stun_urls)})
        if self.turn_urls and self.turn_secret is not None:
            user, password = rest_credentials(self.turn_secret, node, now, self.turn_ttl)
            servers.append({"urls": list(self.turn_urls), "username": user,
                            "credential": password})
        return tuple(servers)


class _Session:
    """One WebSocket connection; also the broker's mailbox for its node."""

    def __init__(self, ws: web.WebSocketResponse, outbox: int, outbox_bytes: int) -> None:
        self.ws = ws
        self.node: str | None = None
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=outbox)
        self.addr = "?"
        self.queued_bytes = 0
        """Characters of frames waiting to be written (bounded by ``outbox_bytes``)."""
        self.outbox_bytes = outbox_bytes
        self.closing = False
        self.close_code = WSCloseCode.OK

    def deliver_frame(self, frame: str) -> bool:
        return self.push(frame)

    def replaced(self) -> None:
        self.push(p.encode(p.Error("replaced", "this node registered from elsewhere", None)))
        self.close_soon()

    def going_away(self) -> None:
        """The server is stopping: say so, then close with 1001 (Going Away)."""
        self.push(p.encode(p.Error("shutting-down", "the signaling server is shutting down; "
                                   "reconnect (to another instance if you know one)", None)))
        self.close_code = WSCloseCode.GOING_AWAY
        self.close_soon()

    def push(self, text: str) -> bool:
        if self.closing or self.queued_bytes + len(text) > self.outbox_bytes:
            return False  # a session that does not read is dropped frames, not memory
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            return False
        self.queued_bytes += len(text)
        return True

    def close_soon(self) -> None:
        if not self.closing:
            self.closing = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)

    async def writer(self) -> None:
        try:
            while True:
                text = await self.queue.get()
                if text is None:
                    break
                self.queued_bytes -= len(text)
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.closing = True
            await self.ws.close(code=self.close_code)


class SignalServer:
    """The rendezvous: registration and envelope routing."""

    def __init__(
        self,
        config: ServerConfig,
        broker: Broker | None = None,
        *,
        _rewrite: Rewrite | None = None,
        instance: str | None = None,
    ) -> None:
        self.config = config
        self.broker: Broker = broker or MemoryBroker(config.max_sessions_per_key,
                                                     names=config.names)
        self._claims: OrderedDict[str, TokenBucket] = OrderedDict()
        self.instance = instance or secrets.token_hex(4)
        self._conns = ConnectionCounter(config.max_conns_per_ip)
        self._rewrite = _rewrite
        self._runner: web.AppRunner | None = None
        self.stats: dict[str, int] = {"routed": 0, "rejected": 0, "registered": 0,
                                      "gateway_announcements": 0}
        self.rejections: dict[str, int] = {}
        self.extra_metrics: Callable[[], dict[str, float]] | None = None
        self.port = config.port
        self._sessions: set[_Session] = set()
        self._stopping = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._handle)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> str:
        await self.broker.start()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=STOP_TIMEOUT)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}/tcp"
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(f"the signaling port {where} is taken; use --port "
                                   "(0 picks a free one)") from exc
            raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from exc
        server = site._server
        assert server is not None
        sock: socket.socket = server.sockets[0]  # type: ignore[attr-defined]
        self.port = sock.getsockname()[1]
        return self.url

    @property
    def url(self) -> str:
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"ws://{host}:{self.port}/"

    async def stop(self) -> None:
        """Stop listening, tell every session the server is going away, and give them
        ``STOP_TIMEOUT`` seconds to close: clients reconnect at once, to another
        instance when they know one, and this instance's presence is gone with them."""
        self._stopping = True
        for session in list(self._sessions):
            session.going_away()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.broker.close()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "nodes": self.broker.count(),
                                  "instance": self.instance})

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition (version 0.0.4)."""
        lines = [
            "# HELP mesh_signal_nodes Nodes registered on this instance.",
            "# TYPE mesh_signal_nodes gauge",
            f"mesh_signal_nodes {self.broker.count()}",
            "# HELP mesh_signal_connections Open WebSocket connections.",
            "# TYPE mesh_signal_connections gauge",
            f"mesh_signal_connections {self._conns.total()}",
            "# HELP mesh_signal_registrations_total Successful registrations.",
            "# TYPE mesh_signal_registrations_total counter",
            f"mesh_signal_registrations_total {self.stats['registered']}",
            "# HELP mesh_signal_messages_routed_total Envelopes routed.",
            "# TYPE mesh_signal_messages_routed_total counter",
            f"mesh_signal_messages_routed_total {self.stats['routed']}",
            "# HELP mesh_signal_rejections_total Frames or connections refused, by reason.",
            "# TYPE mesh_signal_rejections_total counter",
        ]
        for reason, count in sorted(self.rejections.items()):
            lines.append(f'mesh_signal_rejections_total{{reason="{reason}"}} {count}')
        lines += render_metrics(self.extra_metrics() if self.extra_metrics else {})
        return web.Response(text="\n".join(lines) + "\n",
                            content_type="text/plain", charset="utf-8")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.config.max_frame * 2, heartbeat=30)
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text="mesh signaling: connect with a WebSocket\n")
        await ws.prepare(request)
        addr = request.remote or "?"
        if not self._conns.acquire(addr):
            self.stats["rejected"] += 1
            self.rejections["too-many-connections"] = (
                self.rejections.get("too-many-connections", 0) + 1)
            await ws.send_str(p.encode(p.Error("too-many-connections",
                                               "too many connections from your address", None)))
            await ws.close()
            return ws
        session = _Session(ws, self.config.outbox, self.config.outbox_bytes)
        session.addr = addr
        self._sessions.add(session)
        if self._stopping:
            session.going_away()
        writer = asyncio.create_task(session.writer())
        try:
            await self._serve(session)
        except Exception:  # a bug must cost one session, never the server
            log.exception("signaling session failed")
        finally:
            self._sessions.discard(session)
            self._conns.release(addr)
            if session.node is not None:
                await self.broker.detach(session.node, session)
            session.close_soon()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(writer, 5)
            writer.cancel()
        return ws

    def _reject(self, session: _Session, code: str, message: str, ref: int | None = None) -> None:
        self.stats["rejected"] += 1
        self.rejections[code] = self.rejections.get(code, 0) + 1
        session.push(p.encode(p.Error(code, message, ref)))
        if code in p.CLOSE_CODES:
            session.close_soon()

    async def _serve(self, session: _Session) -> None:
        ws = session.ws
        nonce = secrets.token_bytes(32)
        session.push(p.encode(p.Hello(p.VERSION, nonce)))
        bucket = TokenBucket(self.config.rate, self.config.burst)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.register_timeout
        while not session.closing:
            timeout = None if session.node else max(0.0, deadline - loop.time())
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                self._reject(session, "bad-frame", "register within "
                             f"{self.config.register_timeout:g} s")
                session.close_soon()
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type == WSMsgType.ERROR:
                self._reject(session, "too-large", "frame too large or broken")
                return
            if msg.type != WSMsgType.TEXT:
                self._reject(session, "bad-frame", "frames must be JSON text")
                continue
            if not bucket.take(loop.time()):
                self._reject(session, "rate-limited", "slow down: too many frames")
                continue
            try:
                frame = p.parse_client_frame(msg.data)
            except p.FrameError as exc:
                self._reject(session, exc.code, exc.message)
                continue
            await self._dispatch(session, frame, nonce)

    async def _dispatch(self, session: _Session, frame: p.ClientFrame, nonce: bytes) -> None:
        match frame:
            case p.Register(node, sig):
                if session.node is not None:
                    self._reject(session, "bad-frame", "already registered")
                elif not verify(node, p.register_message(nonce, node), sig):
                    self._reject(session, "bad-signature", "registration signature is invalid")
                else:
                    try:
                        await self.broker.attach(node, session)
                    except TooManySessions as exc:
                        self._reject(session, "too-many-sessions", str(exc))
                        return
                    session.node = node
                    self.stats["registered"] += 1
                    ice = self.config.ice_servers(node, time.time())
                    session.push(p.encode(p.Registered(node, ice, self.instance,
                                                       self.config.relay_policy)))
            case p.Send(to, payload, ref):
                if session.node is None:
                    self._reject(session, "not-registered", "register first", ref)
                    return
                if not await self.broker.allow(session.node, time.time()):
                    self._reject(session, "rate-limited", "slow down: too many frames "
                                 "from this node", ref)
                    return
                if self._rewrite is not None:
                    payload = self._rewrite(session.node, to, payload)
                result = await self.broker.route(session.node, to, payload)
                if result == "ok":
                    self.stats["routed"] += 1
                elif result == "unknown-destination":
                    self._reject(session, result, f"node {to[:8]} is not connected", ref)
                else:
                    self._reject(session, result, f"node {to[:8]} is not keeping up", ref)
            case p.Ping():
                session.push(p.encode(p.Pong()))
            case p.NameOp(op, name, ref, roster):
                if session.node is None:
                    self._reject(session, "not-registered", "register first", ref)
                    return
                await self._name_op(session, session.node, op, name, ref, roster)
            case p.Announce(domain, url):
                if session.node is None or session.node not in self.config.gateways:
                    self._reject(session, "not-gateway", "this node is not a gateway pinned "
                                 "by the server's operator (mesh signal --gateway NODE_ID)")
                    return
                await self.broker.set_gateway({"node": session.node, "domain": domain,
                                               "url": url})
                self.stats["gateway_announcements"] += 1

    def _claim_allowed(self, addr: str) -> bool:
        """The per-address claim rate (bounded: the oldest addresses are forgotten)."""
        bucket = self._claims.pop(addr, None) or TokenBucket(self.config.claim_rate,
                                                             self.config.claim_burst)
        self._claims[addr] = bucket
        while len(self._claims) > 10_000:
            self._claims.popitem(last=False)
        return bucket.take(asyncio.get_running_loop().time())

    async def _name_op(self, session: _Session, node: str, op: str, name: str,
                       ref: int | None, text: str | None = None) -> None:
        if op == "claim" and not self._claim_allowed(session.addr):
            self._reject(session, "rate-limited", "too many name claims from your address; "
                         "try again later", ref)
            return
        answer = await name_op(self.broker, node, op, name, text)
        if isinstance(answer, tuple):
            self._reject(session, *answer, ref)
            return
        session.push(p.encode(replace(answer, ref=ref)))
