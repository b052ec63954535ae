"""The sharing side: accept offers, admit peers, dial the one shared service.

Flow per connecting peer (one RTCPeerConnection each):

1. an ``offer`` envelope arrives through signaling; it is opened and verified
   (envelope.py), the sender checked against ``allow`` and ``max_peers``;
2. we answer with a signed, sealed ``answer`` (or a ``reject`` with a reason);
3. ICE + DTLS come up; the connector opens ``mesh-ctl`` and admission runs
   (admission.py). Until it succeeds, every ``tcp`` channel is closed unread,
   so no byte reaches the service from an unadmitted peer;
4. each ``tcp`` channel is bridged (tunnel.py) to a fresh connection to the
   shared host:port, and to nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from mesh.errors import (
    ConfigError,
    EnvelopeError,
    MeshError,
    NameTaken,
    ProtocolError,
)
from mesh.http.capture import Exchange, Store
from mesh.http.inspector import Inspector
from mesh.http.policy import ShareHttpPolicy
from mesh.http.proxy import HttpConfig, HttpSession, pipe_pair, replay
from mesh.proto import admission
from mesh.proto.envelope import Opener, seal_envelope
from mesh.proto.identity import Identity
from mesh.proto.ticket import Ticket, new_secret, share_tag
from mesh.transport.fastpath import watch_packet_size
from mesh.transport.peer import ice_plan, make_pc, path_info, udp_reachable, wait_connected
from mesh.transport.tunnel import Counters, Stream

from . import events
from .discovery import Advertiser, open_secret
from .home import load_or_create, share_secret
from .signal_client import SignalClient
from .status import ControlServer

if TYPE_CHECKING:
    from signaling.server import SignalServer

log = logging.getLogger("mesh.share")


@dataclass(frozen=True)
class ShareConfig:
    port: int
    """Port of the service to share."""
    host: str = "127.0.0.1"
    """Host of the service to share (the sharer dials only host:port)."""
    name: str = ""
    """Human name of the share, carried in the ticket."""
    signal_urls: tuple[str, ...] = ()
    """Signaling servers to register with, in order of preference."""
    ttl: float = 7 * 24 * 3600
    """Seconds the ticket stays valid."""
    allow: frozenset[str] | None = None
    """If set, only these peer node ids are admitted."""
    max_peers: int = 64
    """Peers connected at once."""
    max_streams: int = 4096
    """Concurrent TCP connections per peer."""
    handshake_timeout: float = 30.0
    """Seconds a peer has from offer to admission."""
    dial_timeout: float = 10.0
    """Seconds to connect to the shared service."""
    idle_timeout: float = 0.0
    """Close a tunnelled connection idle this many seconds (0: never)."""
    ping_interval: float = 5.0
    """Seconds between keepalive pings to each peer."""
    dead_after: float = 20.0
    """Seconds of silence after which a peer is dropped."""
    control_socket: bool = True
    """Answer `mesh status` on a local Unix socket."""
    persist_secret: bool = True
    """Keep the admission secret per share name, so tickets survive restarts."""
    new_ticket: bool = False
    """Replace the kept secret: every older ticket for this name stops working."""
    lan: bool = True
    """Serve signaling on the LAN and advertise the share with mDNS."""
    lan_host: str = "0.0.0.0"
    """Address the LAN signaling endpoint listens on."""
    lan_open: bool = False
    """Admit LAN peers that connect by name, without the ticket (always so when no
    signaling server is configured: LAN-only mode)."""
    http: HttpConfig | None = None
    """Speak HTTP/1.1 to the service: request log, inspector, auth (``--http``)."""
    public: bool = False
    """Claim ``name`` and let the signaling tier's gateway serve it (``--public``)."""
    public_auth: tuple[str, str] | None = None
    """Basic credentials the gateway demands from public callers (``--public-auth``)."""


@dataclass
class PeerState:
    node: str
    session: str
    started: float
    admitted: bool = False
    path: dict[str, str] = field(default_factory=dict)
    rtt_ms: float | None = None
    counters: Counters = field(default_factory=Counters)


class _Peer:
    def __init__(self, share: Share, node: str, session: str, pc: RTCPeerConnection) -> None:
        self.share = share
        self.pc = pc
        self.state = PeerState(node, session, time.monotonic())
        self.admission: admission.SharerAdmission | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.announced = False
        self.last_seen = time.monotonic()
        self.ctl: RTCDataChannel | None = None

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def handshake(self, offer_sdp: str) -> str:
        pc = self.pc
        pc.on("datachannel", self.on_channel)
        pc.on("connectionstatechange", self.on_state)
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        transcript = admission.Transcript(
            sharer=self.share.identity.node_id, connector=self.state.node,
            offer_fps=admission.fingerprints(offer_sdp),
            answer_fps=admission.fingerprints(pc.localDescription.sdp),
        )
        self.admission = admission.SharerAdmission(self.share.secret, transcript)
        self.spawn(self.deadline())
        return str(pc.localDescription.sdp)

    async def deadline(self) -> None:
        await asyncio.sleep(self.share.config.handshake_timeout)
        if not self.state.admitted:
            self.share.emit(events.Rejected(self.state.node, "handshake timed out"))
            await self.close()

    def on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed") and not self.closed:
            if self.state.admitted:
                self.share.emit(events.Disconnected(self.state.node, "peer connection "
                                                    f"{self.pc.connectionState}"))
            self.spawn(self.close())

    def on_channel(self, channel: RTCDataChannel) -> None:
        log.debug("channel %r from %s (admitted=%s)", channel.label, self.state.node[:8],
                  self.state.admitted)
        if channel.label == "mesh-ctl" and self.admission is not None and self.ctl is None:
            self.ctl = channel
            channel.on("message", lambda m: self.on_control(channel, m))
            channel.send(self.admission.challenge())
        elif channel.label == "tcp" and self.state.admitted:
            if self.state.counters.streams_open >= self.share.config.max_streams:
                Stream(channel, Counters()).fail("too many streams for this peer")
                return
            self.spawn(self.bridge(Stream(channel, self.state.counters,
                                          idle_timeout=self.share.config.idle_timeout)))
        else:
            channel.close()

    def on_control(self, channel: RTCDataChannel, message: str | bytes) -> None:
        self.last_seen = time.monotonic()
        try:
            if not isinstance(message, str):
                raise ProtocolError("control messages are text")
            obj = admission.parse(message)
            if obj["t"] == "ping":
                channel.send(json.dumps({"t": "pong", "id": obj.get("id"),
                                         "ts": obj.get("ts")}))
                return
            if obj["t"] == "pong":
                if isinstance(obj.get("ts"), float):
                    self.state.rtt_ms = round((time.monotonic() - obj["ts"]) * 1000, 3)
                    if not self.announced:
                        self.announce()
                return
            assert self.admission is not None
            reply = self.admission.receive(obj)
        except ProtocolError as exc:
            self.share.emit(events.Rejected(self.state.node, str(exc)))
            self.spawn(self.close())
            return
        channel.send(reply)
        if self.admission.admitted:
            self.state.admitted = True
            channel.send(json.dumps({"t": "ping", "id": 1, "ts": time.monotonic()}))
            asyncio.get_running_loop().call_later(2.0, self.announce)
            self.spawn(self.keepalive(channel))
        else:
            self.share.emit(events.Rejected(self.state.node, "wrong ticket secret"))
            asyncio.get_running_loop().call_later(1.0, lambda: self.spawn(self.close()))

    async def keepalive(self, channel: RTCDataChannel) -> None:
        cfg = self.share.config
        seq = 1
        while not self.closed:
            await asyncio.sleep(cfg.ping_interval)
            if time.monotonic() - self.last_seen > cfg.dead_after:
                self.share.emit(events.Disconnected(
                    self.state.node, f"no answer for {cfg.dead_after:g} s"))
                await self.close()
                return
            seq += 1
            with contextlib.suppress(Exception):
                channel.send(json.dumps({"t": "ping", "id": seq, "ts": time.monotonic()}))

    def snapshot(self) -> dict[str, Any]:
        c = self.state.counters
        return {"peer": self.state.node, "admitted": self.state.admitted,
                "path": self.state.path.get("path"),
                "local_candidate": self.state.path.get("local_candidate"),
                "remote_candidate": self.state.path.get("remote_candidate"),
                "rtt_ms": self.state.rtt_ms, "streams_open": c.streams_open,
                "streams_total": c.streams_total, "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
                "uptime_s": round(time.monotonic() - self.state.started, 1)}

    def announce(self) -> None:
        """Report the admitted peer once: path, candidates, round-trip time."""
        if self.announced or self.closed:
            return
        self.announced = True
        info = path_info(self.pc)
        self.state.path = info.as_dict()
        self.share.emit(events.Connected(
            peer=self.state.node, path=info.path, local_candidate=info.local_type,
            remote_candidate=info.remote_type, remote_addr=info.remote_addr,
            rtt_ms=self.state.rtt_ms, connect_ms=(time.monotonic() - self.state.started) * 1000,
        ))
        watch_packet_size(self.pc, lambda size: self.share.emit(
            events.PathMtu(self.state.node, size)))

    async def bridge(self, stream: Stream) -> None:
        cfg = self.share.config
        if cfg.http is not None:
            await self.bridge_http(stream, cfg.http)
            return
        try:
            reader, writer = await self.share.dial_service()
        except (TimeoutError, OSError) as exc:
            reason = ("service refused the connection" if isinstance(exc, ConnectionRefusedError)
                      else f"service unreachable: {getattr(exc, 'strerror', None) or 'timeout'}")
            self.share.warn_service(f"{reason} ({cfg.host}:{cfg.port})")
            stream.fail(reason)
            return
        stream.accept()
        await stream.run(reader, writer)

    async def bridge_http(self, stream: Stream, http: HttpConfig) -> None:
        """HTTP mode: the tunnelled bytes go through an in-process HTTP proxy
        (httpproxy.py) over a socket pair; the proxy dials the service itself."""
        share = self.share
        (reader, writer), (proxy_reader, proxy_writer) = await pipe_pair()
        client = self.state.path.get("remote_addr") or path_info(self.pc).remote_addr
        session = HttpSession(
            proxy_reader, proxy_writer, share.dial_service, config=http, policy=share.http_policy,
            store=share.store, on_request=share.on_request, on_upstream_error=share.warn_service,
            peer=self.state.node, client=client.rsplit(":", 1)[0].strip("[]") or "unknown")
        proxy = asyncio.create_task(session.run())
        stream.accept()
        try:
            await stream.run(reader, writer)
        finally:
            if not proxy.done():
                await asyncio.wait({proxy}, timeout=1.0)
            proxy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await proxy

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.share.peers.pop(self.state.session, None)
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        await self.pc.close()


class Share:
    """A running share. Use ``async with Share(config) as share`` or start/close."""

    def __init__(
        self,
        config: ShareConfig,
        *,
        identity: Identity | None = None,
        on_event: events.OnEvent = events.ignore,
    ) -> None:
        self.config = config
        self.identity = identity or load_or_create()
        self.lan_open = config.lan and (config.lan_open or not config.signal_urls)
        if self.lan_open:
            self.secret = open_secret(self.identity.node_id, config.name)
        elif config.persist_secret:
            self.secret = share_secret(config.name, rotate=config.new_ticket)
        else:
            self.secret = new_secret()
        self.tag = share_tag(config.name)
        self.on_event = on_event
        self.peers: dict[str, _Peer] = {}
        self.ticket = ""
        self.started = time.monotonic()
        self._opener = Opener(self.identity, frozenset({"offer", "bye", "pubreq"}))
        self._signal: SignalClient | None = None
        self._signals: list[SignalClient] = []
        self._lan_server: SignalServer | None = None
        self._advertiser: Advertiser | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_service_warning = 0.0
        self._control = ControlServer(self.snapshot) if config.control_socket else None
        self.store: Store | None = None
        self.http_policy: ShareHttpPolicy | None = None
        self.inspector: Inspector | None = None
        if config.http is not None:
            http = config.http
            self.store = Store(http.history, http.body_cap if http.inspect else 0)
            self.http_policy = ShareHttpPolicy(config.host, config.port, http.basic_auth,
                                               http.host_header)

    async def dial_service(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(self.config.host, self.config.port),
            self.config.dial_timeout)

    def on_request(self, ex: Exchange) -> None:
        self.emit(events.Request(
            id=ex.id, method=ex.method, path=ex.target, status=ex.status,
            duration_ms=ex.duration_ms, bytes_in=ex.request_body.size,
            bytes_out=ex.response_body.size, peer=ex.peer, client=ex.client, state=ex.state,
            replay_of=ex.replay_of, error=ex.error))

    async def replay(self, original: Exchange, edits: dict[str, Any]) -> Exchange:
        """Send a recorded request to the service again (the inspector's Replay)."""
        assert self.store is not None
        return await replay(self.store, original, self.dial_service,
                            on_request=self.on_request, **edits)

    @property
    def target(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def emit(self, event: events.Event) -> None:
        try:
            self.on_event(event)
        except Exception:
            log.exception("event handler failed")

    def warn_service(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_service_warning > 5:
            self._last_service_warning = now
            self.emit(events.Warning(message))

    async def start(self) -> str:
        """Register with signaling (and/or serve it on the LAN); return the ticket."""
        try:
            return await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> str:
        cfg = self.config
        if not cfg.signal_urls and not cfg.lan:
            raise ConfigError("no signaling server and LAN mode is off: nobody could connect")
        hints: list[str] = []
        if cfg.lan:
            hints = await self._start_lan()
        if cfg.public and not cfg.signal_urls:
            raise ConfigError("--public needs a signaling server whose operator runs a "
                              "gateway (--signal URL)")
        claimed: tuple[str, str] | None = None
        if cfg.signal_urls:
            remote = self._client(list(cfg.signal_urls), claim=cfg.public)
            self._signals.insert(0, remote)
            await remote.start()
            if cfg.public:  # before the ticket is shown: a taken name is an error
                claimed = await self._claim(remote, first=True)
        self._signal = self._signals[0]
        ticket = Ticket(
            node_id=self.identity.node_id, secret=self.secret,
            expires=int(time.time() + cfg.ttl), name=cfg.name, signal_urls=cfg.signal_urls,
            lan_hints=tuple(hints[:8]),
        )
        self.ticket = ticket.encode(self.identity)
        self.emit(events.Ready(self.ticket, self.identity.node_id, cfg.name, self.target,
                               self._signal.url))
        if not cfg.signal_urls:
            self.emit(events.Warning(
                f"LAN mode: no signaling server configured; anyone on this network can "
                f"connect with `mesh connect {cfg.name}` (pass --signal to reach beyond it)"))
        if claimed is not None:
            self.emit(events.Public(cfg.name, *claimed))
        if self._control is not None:
            await self._control.start()
        if cfg.http is not None and cfg.http.inspect and self.store is not None:
            self.inspector = Inspector(self.store, cfg.http.inspect, self.replay, self.target)
            self.emit(events.InspectorReady(await self.inspector.start()))
        return self.ticket

    def _client(self, urls: list[str], claim: bool = False) -> SignalClient:
        client: SignalClient
        registrations = 0

        def on_payload(sender: str, payload: bytes) -> None:
            self._on_payload(client, sender, payload)

        def on_registered() -> None:
            nonlocal registrations
            registrations += 1
            if claim and registrations > 1:  # after a reconnect: hold the name again
                self._spawn(self._claim(client, first=False))

        client = SignalClient(self.identity, urls, on_payload,
                              lambda state, url: self.emit(events.Signal(state, url)),
                              on_registered=on_registered)
        return client

    async def _claim(self, client: SignalClient, first: bool) -> tuple[str, str] | None:
        """Hold the public name; return the gateway's URLs for it (if one is announced)."""
        name = self.config.name
        try:
            result = await client.name("claim", name)
        except NameTaken:
            if first:
                raise NameTaken(f"the public name {name!r} belongs to another node key; "
                                "pick another with --name") from None
            self.emit(events.Warning(f"lost the public name {name!r} to another node key"))
            return None
        except MeshError as exc:
            if first:
                raise
            self.emit(events.Warning(f"could not renew the public name: {exc}"))
            return None
        gateway = result.gateway
        if gateway is None:
            if first:
                self.emit(events.Warning("no gateway is announced on this signaling server "
                                         "yet; the share is public as soon as one is"))
            return None
        return public_urls(gateway, name)

    async def _on_pubreq(self, via: SignalClient, sender: str, session: str,
                         body: dict[str, Any]) -> None:
        """The gateway asks for this share's ticket: only a --public share answers, and
        only to the gateway the signaling tier names."""
        if body.get("name") != self.config.name:
            return  # another share under this node key
        reason = None
        if not self.config.public:
            reason = "this share is not public"
        else:
            try:
                result = await via.name("lookup", self.config.name)
            except MeshError as exc:
                log.info("pubreq lookup failed: %s", exc)
                return
            if result.owner != self.identity.node_id:
                reason = "this node does not hold the name"
            elif result.gateway is None or result.gateway["node"] != sender:
                reason = "you are not the gateway of this signaling server"
        if reason is not None:
            await self._reply(via, sender, "reject", session, {"reason": reason})
            return
        auth = self.config.public_auth
        await self._reply(via, sender, "publish", session, {
            "ticket": self.ticket, "auth": f"{auth[0]}:{auth[1]}" if auth else None})

    async def _start_lan(self) -> list[str]:
        """Serve the signaling protocol on the LAN, register there, advertise it."""
        from signaling.server import ServerConfig, SignalServer

        server = SignalServer(ServerConfig(host=self.config.lan_host, port=0))
        await server.start()
        self._lan_server = server
        local = self._client([f"ws://127.0.0.1:{server.port}/"])
        await local.start()
        self._signals.append(local)
        self._advertiser = Advertiser(self.identity, self.config.name, server.port,
                                      self.lan_open)
        try:
            await self._advertiser.start()
        except Exception as exc:  # zeroconf: no multicast here is not fatal
            self.emit(events.Warning(f"cannot advertise on the LAN: {exc}"))
            self._advertiser = None
            return []
        return [f"{a}:{server.port}" for a in self._advertiser.addresses]

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": "share", "name": self.config.name, "node_id": self.identity.node_id,
            "target": self.target, "uptime_s": round(time.monotonic() - self.started, 1),
            "ticket": self.ticket,
            "signal": {"url": self._signal.url if self._signal else None,
                       "registered": bool(self._signal and self._signal.registered.is_set())},
            "peers": [p.snapshot() for p in self.peers.values()],
            "http": None if self.store is None else {
                "inspector": self.inspector.url if self.inspector else None,
                "recorded": len(self.store.all())},
        }

    async def close(self) -> None:
        if self.inspector is not None:
            await self.inspector.close()
        if self._control is not None:
            await self._control.close()
        for peer in list(self.peers.values()):
            await peer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._advertiser is not None:
            await self._advertiser.close()
        for client in self._signals:
            await client.close()
        if self._lan_server is not None:
            await self._lan_server.stop()

    async def __aenter__(self) -> Share:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_payload(self, via: SignalClient, sender: str, payload: bytes) -> None:
        try:
            env = self._opener.open(payload, sender, time.time())
        except EnvelopeError as exc:
            log.info("dropped envelope from %s: %s", sender[:8], exc)
            return
        if env.kind == "pubreq":
            self._spawn(self._on_pubreq(via, env.sender, env.session, env.body))
            return
        if env.kind == "bye":
            peer = self.peers.get(env.session)
            if peer is not None and peer.state.node == env.sender:
                self._spawn(peer.close())
            return
        if env.body.get("lan") and not self.lan_open:
            self._spawn(self._reply(via, env.sender, "reject", env.session, {
                "reason": f"share {self.config.name!r} is not open to the LAN by name; "
                          "ask the sharer for its ticket"}))
            return
        if env.body.get("share", self.tag) != self.tag:
            return  # for another share of this node key (another process)
        sdp = env.body.get("sdp")
        if not isinstance(sdp, str) or len(sdp) > 32 * 1024:
            return
        mode = env.body.get("mode")
        self._spawn(self._on_offer(via, env.sender, env.session, sdp,
                                   "direct" if mode == "direct" else "any"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, via: SignalClient, to: str, kind: str, session: str,
                     body: dict[str, Any]) -> None:
        blob = seal_envelope(self.identity, to, kind, session, body, time.time())
        with contextlib.suppress(MeshError):
            await via.send(to, blob)

    async def _on_offer(self, via: SignalClient, node: str, session: str, sdp: str,
                        mode: str) -> None:
        cfg = self.config
        if cfg.allow is not None and node not in cfg.allow:
            self.emit(events.Rejected(node, "not in the --allow list"))
            await self._reply(via, node, "reject", session, {"reason": "this share does not "
                                                                       "admit your key"})
            return
        if session in self.peers:
            return
        if len(self.peers) >= cfg.max_peers:
            self.emit(events.Rejected(node, "too many peers"))
            await self._reply(via, node, "reject", session, {
                "reason": "the share has too many peers (--max-peers)"})
            return
        plan = ice_plan(via.ice_servers)
        peer = _Peer(self, node, session, make_pc(plan, mode, await udp_reachable(plan)))
        self.peers[session] = peer
        try:
            answer = await peer.handshake(sdp)
        except Exception as exc:  # aiortc raises ValueError & co on a bad SDP
            log.info("bad offer from %s: %s", node[:8], exc)
            await peer.close()
            await self._reply(via, node, "reject", session, {"reason": "offer was not usable"})
            return
        await self._reply(via, node, "answer", session, {"sdp": answer})
        with contextlib.suppress(MeshError):
            await wait_connected(peer.pc, cfg.handshake_timeout)


def public_urls(gateway: dict[str, str], name: str) -> tuple[str, str]:
    """The public URLs of ``name`` behind ``gateway`` ({"domain", "url"})."""
    from urllib.parse import urlsplit

    base = gateway.get("url", "").rstrip("/")
    parts = urlsplit(base)
    port = f":{parts.port}" if parts.port else ""
    host_url = f"{parts.scheme or 'https'}://{name}.{gateway.get('domain', '')}{port}/"
    return host_url, f"{base}/s/{name}/"
