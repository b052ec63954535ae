"""The sharing side: register, hand out the ticket, take offers, serve admitted peers.

Flow per connecting peer (one peer connection each, mesh/node/share_peer.py):

1. an ``offer`` envelope arrives through signaling (a server, or the share's
   own LAN endpoint); it is opened and verified (mesh/proto/envelope.py) and
   the sender checked against ``allow``, the admitted-peer limit and the
   pending-offer limits;
2. we answer with a signed, sealed ``answer`` (or a ``reject`` with a reason);
3. ICE and DTLS come up; the connector opens ``mesh-ctl`` and the control
   machine admits it (or not) before any ``tcp`` channel is served;
4. each ``tcp`` channel is bridged to a fresh connection to the shared
   host:port, and to nothing else.

Unadmitted peers do not take peer slots: at most ``PENDING_PER_KEY`` offers per
key and ``PENDING`` in all wait for admission at once, and when all pending
places are taken the oldest is dropped, so a flood of offers from throwaway
keys cannot lock ticket holders out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from mesh.errors import EnvelopeError, MeshError
from mesh.http.capture import Exchange, Store
from mesh.http.inspector import Inspector
from mesh.http.policy import ShareHttpPolicy
from mesh.http.replay import replay
from mesh.proto import admission
from mesh.proto.advert import open_secret
from mesh.proto.envelope import Opener, seal_envelope
from mesh.proto.identity import Identity
from mesh.proto.ticket import Ticket, new_secret, share_tag
from mesh.transport import portmap
from mesh.transport.duplex import TcpDuplex
from mesh.transport.ice import ice_plan, udp_reachable
from mesh.transport.peer import Peer
from mesh.transport.stream import Stream

from . import events
from .config import ShareConfig
from .discovery import Advertiser
from .home import load_or_create, share_secret
from .public import Publisher
from .share_peer import UNADMITTED_WINDOW, SharePeer
from .signal_client import SignalClient
from .status import ControlServer

if TYPE_CHECKING:
    from signaling.server import SignalServer

log = logging.getLogger("mesh.share")

PENDING = 32
"""Offers waiting for admission at once; beyond it the oldest is dropped."""
PENDING_PER_KEY = 2
"""Offers one key may have waiting for admission at once."""
MAX_SDP = 32 * 1024
ENDED_KEPT = 65536
"""Ended resumable streams remembered (per share), so a late resume cannot reopen one."""


class Share:
    """A running share. Use ``async with Share(config) as share`` or start/close."""

    def __init__(self, config: ShareConfig, *, identity: Identity | None = None,
                 on_event: events.OnEvent = events.ignore) -> None:
        self.config = config
        self.identity = identity or load_or_create()
        self.lan_open = config.lan and (config.lan_open or not config.signal_urls)
        # tickets carry secrets derived from this and their expiry (admission.py)
        self.master = (share_secret(config.name, rotate=config.new_ticket)
                       if config.persist_secret else new_secret())
        self.open_key = open_secret(self.identity.node_id, config.name) if self.lan_open else None
        """The derivable secret of a share open to the LAN: only via the LAN endpoint."""
        self._lan_client: SignalClient | None = None
        self.tag = share_tag(config.name)
        self.on_event = on_event
        self.peers: dict[str, SharePeer] = {}
        self.streams: dict[tuple[str, str], Stream] = {}
        """Resumable tunnelled streams by (peer node id, stream id): they outlive the peer
        connection they started on, and another connection of that peer resumes them."""
        self._ended: OrderedDict[tuple[str, str], float] = OrderedDict()
        """Streams that ended lately: one of them is never opened again by a resume."""
        self.ticket = ""
        self.started = time.monotonic()
        self.publisher = Publisher(config.name, self.identity.node_id, config.public,
                                   config.public_auth, self.emit)
        self._opener = Opener(self.identity, frozenset({"offer", "bye", "pubreq", "connreq"}))
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

    @property
    def target(self) -> str:
        return self.config.target

    # -- what peers use -----------------------------------------------------------------
    async def dial_service(self) -> TcpDuplex:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.config.host, self.config.port),
            self.config.dial_timeout)
        return TcpDuplex(reader, writer)

    def on_request(self, ex: Exchange) -> None:
        self.emit(events.Request.from_exchange(ex))

    async def replay(self, original: Exchange, edits: dict[str, Any]) -> Exchange:
        """Send a recorded request to the service again (the inspector's Replay)."""
        assert self.store is not None
        return await replay(self.store, original, self.dial_service,
                            on_request=self.on_request, **edits)

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

    def ended_stream(self, key: tuple[str, str]) -> None:
        self._ended[key] = time.monotonic()
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    def recently_ended(self, key: tuple[str, str]) -> bool:
        """``key`` ended within twice ``--resume-timeout`` (a resume that says it is new is
        then refused: the stream's service connection has had its bytes)."""
        when = self._ended.get(key)
        return when is not None and time.monotonic() - when < 2 * self.config.resume_timeout

    def forget(self, peer: SharePeer) -> None:
        if self.peers.get(peer.session) is peer:
            del self.peers[peer.session]

    # -- start and stop -------------------------------------------------------------------
    async def start(self) -> str:
        """Register with signaling (and/or serve it on the LAN); return the ticket."""
        try:
            return await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> str:
        cfg = self.config
        if cfg.ice.portmap:
            portmap.warm(cfg.ice.host_addresses)
        hints = await self._start_lan() if cfg.lan else []
        claimed: tuple[str, str] | None = None
        if cfg.signal_urls:
            remote = self._client(list(cfg.signal_urls), claim=cfg.public)
            self._signals.insert(0, remote)
            await remote.start()
            if cfg.public:  # before the ticket is shown: a taken name is an error
                claimed = await self.publisher.claim(remote, first=True)
        self._signal = self._signals[0]
        self._hints = tuple(hints[:8])
        self._new_ticket()
        self.emit(events.Ready(self.ticket, self.identity.node_id, cfg.name, self.target,
                               self._signal.url, cfg.protos))
        self.spawn(self._renew_tickets())
        if not cfg.signal_urls:
            self.emit(events.Warning(
                f"LAN mode: no signaling server configured; anyone on this network can "
                f"connect with `mesh connect {cfg.name}` (pass --signal to reach beyond it)"))
        if claimed is not None:
            self.emit(events.Public(cfg.name, *claimed))
        if self._control is not None:
            await self._control.start()
        if cfg.http is not None and cfg.http.inspect and self.store is not None:
            self.inspector = Inspector(self.store, cfg.http.inspect, self.replay, self.target,
                                       explicit=cfg.http.inspect_explicit)
            self.emit(events.InspectorReady(await self.inspector.start()))
        return self.ticket

    def _client(self, urls: list[str], claim: bool = False, lan: bool = False) -> SignalClient:
        client: SignalClient
        registrations = 0

        def on_payload(sender: str, payload: bytes) -> None:
            self._on_payload(client, sender, payload)

        def on_registered() -> None:
            nonlocal registrations
            registrations += 1
            if claim and registrations > 1:  # after a reconnect: hold the name again
                self.spawn(self.publisher.claim(client, first=False))

        client = SignalClient(self.identity, urls, on_payload,
                              lambda state, url: self.emit(events.Signal(state, url, lan)),
                              on_registered=on_registered)
        return client

    async def _start_lan(self) -> list[str]:
        """Serve the signaling protocol on the LAN, register there, advertise it."""
        from signaling.server import ServerConfig, SignalServer

        server = SignalServer(ServerConfig(host=self.config.lan_host, port=0))
        await server.start()
        self._lan_server = server
        local = self._client([f"ws://127.0.0.1:{server.port}/"], lan=True)
        self._lan_client = local
        await local.start()
        self._signals.append(local)
        self._advertiser = Advertiser(self.identity, self.config.name, server.port,
                                      self.lan_open, self.config.protos)
        try:
            await self._advertiser.start()
        except Exception as exc:  # zeroconf: no multicast here is not fatal
            self.emit(events.Warning(f"cannot advertise on the LAN: {exc}"))
            self._advertiser = None
            return []
        return [f"{a}:{server.port}" for a in self._advertiser.addresses]

    def _new_ticket(self) -> None:
        """A ticket expiring ``--ttl`` from now (its secret derives from that expiry)."""
        cfg = self.config
        self.ticket_expires = int(time.time() + cfg.ttl)
        self.ticket = Ticket(node_id=self.identity.node_id,
                             secret=admission.ticket_secret(self.master, self.ticket_expires),
                             expires=self.ticket_expires, name=cfg.name,
                             signal_urls=cfg.signal_urls, lan_hints=self._hints,
                             http=cfg.http is not None, tcp=bool(cfg.tcp),
                             udp=cfg.udp).encode(self.identity)

    def renew_ticket(self) -> None:
        """The ticket has expired: say so, and hand out a new one."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.ticket_expires))
        self.emit(events.Warning(f"the ticket expired at {when}; peers already connected "
                                 "stay, new ones need the new ticket"))
        self._new_ticket()
        self.emit(events.TicketRenewed(self.ticket, self.ticket_expires))

    async def _renew_tickets(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.ticket_expires - time.time()))
            if time.time() >= self.ticket_expires:
                self.renew_ticket()

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": "share", "name": self.config.name, "node_id": self.identity.node_id,
            "target": self.target, "proto": self.config.protos,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "ticket": self.ticket,
            "signal": {"url": self._signal.url if self._signal else None,
                       "registered": bool(self._signal and self._signal.registered.is_set())},
            "peers": [p.snapshot() for p in self.peers.values()],
            "streams_waiting": sum(1 for s in self.streams.values() if s.waiting),
            "resume_held_bytes": sum(s.held_bytes for s in self.streams.values()),
            "http": None if self.store is None else {
                "inspector": self.inspector.url if self.inspector else None,
                "recorded": len(self.store.all())},
        }

    async def close(self) -> None:
        for stream in list(self.streams.values()):
            stream.abort("the share stopped")  # peers need not wait for a resume
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

    # -- signaling --------------------------------------------------------------------------
    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, via: SignalClient, to: str, kind: str, session: str,
                     body: dict[str, Any]) -> None:
        blob = seal_envelope(self.identity, to, kind, session, body, time.time())
        with contextlib.suppress(MeshError):
            await via.send(to, blob)

    def _on_payload(self, via: SignalClient, sender: str, payload: bytes) -> None:
        try:
            env = self._opener.open(payload, sender, time.time())
        except EnvelopeError as exc:
            log.info("dropped envelope from %s: %s", sender[:8], exc)
            return
        if env.kind in ("pubreq", "connreq"):
            self.spawn(self.publisher.answer(via, env.sender, env.session, env.body,
                                              self.ticket, self._reply, self.config.allow,
                                              connect=env.kind == "connreq"))
            return
        if env.kind == "bye":
            peer = self.peers.get(env.session)
            if peer is not None and peer.node == env.sender:
                self.spawn(peer.close())
            return
        if env.body.get("lan") and not self.lan_open:
            self.spawn(self._reply(via, env.sender, "reject", env.session, {
                "reason": f"share {self.config.name!r} is not open to the LAN by name; "
                          "ask the sharer for its ticket"}))
            return
        if env.body.get("share", self.tag) != self.tag:
            return  # for another share of this node key (another process)
        sdp = env.body.get("sdp")
        if not isinstance(sdp, str) or len(sdp) > MAX_SDP:
            return
        mode = "direct" if env.body.get("mode") == "direct" else "any"
        self.spawn(self._on_offer(via, env.sender, env.session, sdp, mode))

    def _refusal(self, node: str, session: str) -> str | None:
        """Why an offer is refused before any work is spent on it (None: take it)."""
        cfg = self.config
        gateway = cfg.public and node == self.publisher.gateway
        if cfg.allow is not None and node not in cfg.allow and not gateway:
            # (--public: the gateway the tier names serves it to anyone, --allow or not)
            return "this share does not admit your key"
        if sum(1 for p in self.peers.values() if p.admitted) >= cfg.max_peers:
            return "the share has too many peers (--max-peers)"
        pending = [p for p in self.peers.values() if not p.admitted]
        if sum(1 for p in pending if p.node == node) >= PENDING_PER_KEY:
            return "too many offers from your key are waiting for admission"
        if len(pending) >= PENDING:
            oldest = min(pending, key=lambda p: p.started)
            self.emit(events.Rejected(oldest.node, "dropped: too many peers waiting for "
                                                   "admission"))
            self.spawn(oldest.close())
        return None

    async def _on_offer(self, via: SignalClient, node: str, session: str, sdp: str,
                        mode: str) -> None:
        if session in self.peers:
            return
        reason = self._refusal(node, session)
        if reason is not None:
            self.emit(events.Rejected(node, reason))
            await self._reply(via, node, "reject", session, {"reason": reason})
            return
        plan = ice_plan(via.ice_servers)
        transport = Peer(plan, mode, await udp_reachable(plan), self.config.ice,
                         window=UNADMITTED_WINDOW)
        peer = SharePeer(self, node, session, transport,
                         trusted=node == self.publisher.gateway and self.config.public,
                         lan=via is self._lan_client)
        self.peers[session] = peer
        try:
            answer = await peer.handshake(sdp)
        except MeshError as exc:
            log.info("bad offer from %s: %s", node[:8], exc)
            await peer.close()
            await self._reply(via, node, "reject", session, {"reason": "offer was not usable"})
            return
        await self._reply(via, node, "answer", session, {"sdp": answer})
        with contextlib.suppress(MeshError):
            await transport.connected(self.config.handshake_timeout)
