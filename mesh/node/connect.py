"""The connecting side: a local listener whose connections come out at the share.

``Tunnel.start()`` fails fast: the ticket is checked, the local port bound,
the signaling server reached, the peer connection established and admitted,
each with its own bounded wait and a ``MeshError`` naming what failed. Then
every accepted TCP connection gets its own data channel (tunnel.py).

If the peer connection later fails, the tunnel reports ``disconnected`` and
rebuilds it in the background (new offer through signaling, same ticket);
connections accepted meanwhile wait for the new path for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from mesh.errors import (
    AddressInUse,
    AdmissionDenied,
    ConfigError,
    ConnectError,
    EnvelopeError,
    EnvelopeKindError,
    HandshakeError,
    MeshError,
    PeerUnreachable,
    ProtocolError,
    Refused,
)
from mesh.http.proxy import HttpConfig, HttpSession, pipe_pair
from mesh.proto import admission
from mesh.proto.envelope import Opener, seal_envelope
from mesh.proto.identity import Identity
from mesh.proto.ticket import Ticket, share_tag
from mesh.transport.fastpath import watch_packet_size
from mesh.transport.peer import (
    IcePlan,
    PathInfo,
    ice_plan,
    make_pc,
    path_info,
    udp_reachable,
    wait_connected,
)
from mesh.transport.tunnel import Counters, Stream

from . import events
from .home import load_or_create
from .signal_client import SignalClient
from .status import ControlServer

log = logging.getLogger("mesh.connect")


@dataclass(frozen=True)
class ConnectConfig:
    ticket: Ticket
    """The share to connect to."""
    port: int = 0
    """Local port to listen on; 0 picks a free one."""
    host: str = "127.0.0.1"
    """Local address to listen on."""
    signal_urls: tuple[str, ...] = ()
    """Signaling servers to use instead of the ticket's."""
    answer_timeout: float = 15.0
    """Seconds to wait for the sharer's answer."""
    connect_timeout: float = 20.0
    """Seconds to wait for a path (ICE and DTLS), all attempts together."""
    relay_after: float = 2.0
    """Seconds after which a relay-only attempt races the direct one."""
    admission_timeout: float = 10.0
    """Seconds to wait for admission."""
    wait_for_path: float = 45.0
    """Seconds a new local connection waits for a (re)built peer connection."""
    ping_interval: float = 2.0
    """Seconds between keepalive pings on the control channel."""
    dead_after: float = 8.0
    """Seconds of silence after which the peer connection is declared dead and rebuilt."""
    upgrade_interval: float = 30.0
    """Seconds between attempts to move from the relay to a direct path."""
    max_streams: int = 4096
    """Local connections tunnelled at once; more are refused."""
    idle_timeout: float = 0.0
    """Close a tunnelled connection idle this many seconds (0: never)."""
    control_socket: bool = True
    """Answer `mesh status` on a local Unix socket."""
    use_lan_hints: bool = True
    """Try the ticket's LAN endpoints (2 s each) before its signaling servers."""
    by_name: bool = False
    """The ticket was made from a LAN advert (`mesh connect NAME`), not given."""
    http: bool = False
    """Parse local requests as HTTP/1.1 and refuse a foreign Host with 421 (``--http``)."""
    relay_only: bool = False
    """Connect only through the TURN relay: the sharer never learns this machine's
    addresses (``--relay-only``); no direct attempt, no upgrade."""


class _Link:
    """One established, admitted peer connection."""

    def __init__(self, pc: RTCPeerConnection, ctl: RTCDataChannel, info: PathInfo) -> None:
        self.pc = pc
        self.ctl = ctl
        self.info = info
        self.rtt_ms: float | None = None
        self.mode = "direct"
        self.session = ""
        self.last_seen = time.monotonic()
        self.streams = 0


class Tunnel:
    """A running ``mesh connect``. Use ``async with Tunnel(config) as t``."""

    def __init__(
        self,
        config: ConnectConfig,
        *,
        identity: Identity | None = None,
        on_event: events.OnEvent = events.ignore,
        signal: SignalClient | None = None,
    ) -> None:
        """``signal``: a registered client shared with others (the gateway keeps one
        session for all its tunnels and hands each its payloads via ``on_payload``)."""
        self.config = config
        self.ticket = config.ticket
        self._shared_signal = signal
        self.identity = identity or load_or_create()
        self.on_event = on_event
        self.counters = Counters()
        self.port = 0
        self.started = time.monotonic()
        self._opener = Opener(self.identity, frozenset({"answer", "reject"}))
        self._answers: dict[str, asyncio.Future[tuple[str, dict[str, Any]]]] = {}
        self._signal: SignalClient | None = None
        self._server: asyncio.Server | None = None
        self._link: _Link | None = None
        self._up = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._last_warning: dict[str, float] = {}
        self._control = ControlServer(self.snapshot) if config.control_socket else None

    @property
    def up(self) -> bool:
        """A peer connection is established and admitted right now."""
        return self._up.is_set()

    def on_payload(self, sender: str, payload: bytes) -> None:
        """Feed a payload received on a shared signaling client."""
        self._on_payload(sender, payload)

    @property
    def path(self) -> str | None:
        return self._link.info.path if self._link else None

    @property
    def link_info(self) -> dict[str, Any] | None:
        if self._link is None:
            return None
        return {**self._link.info.as_dict(), "rtt_ms": self._link.rtt_ms}

    def emit(self, event: events.Event) -> None:
        try:
            self.on_event(event)
        except Exception:
            log.exception("event handler failed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        cfg = self.config
        self.ticket.check_fresh(time.time())
        hints = [] if cfg.signal_urls or not cfg.use_lan_hints else [
            f"ws://{h}/" if ":" in h else "" for h in self.ticket.lan_hints]
        hints = [h for h in hints if h]
        urls = hints + list(cfg.signal_urls or self.ticket.signal_urls)
        if not urls:
            raise ConfigError("the ticket names no signaling server; pass --signal URL")
        try:
            self._server = await asyncio.start_server(self._on_client, cfg.host, cfg.port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(f"port {cfg.port} on {cfg.host} is already in use; "
                                   "pick another with --port (0 picks a free one)") from exc
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        self.emit(events.Listening(cfg.host, self.port))
        if self._control is not None:
            await self._control.start()
        try:
            if self._shared_signal is not None:
                self._signal = self._shared_signal
            else:
                self._signal = SignalClient(
                    self.identity, urls, self._on_payload,
                    lambda state, url: self.emit(events.Signal(state, url)),
                    fast_urls=frozenset(hints),
                )
                await self._signal.start()
            await self._establish()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closed = True
        if self._control is not None:
            await self._control.close()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
        if self._link is not None:
            await self._link.pc.close()
            await self._bye(self._link.session)
        if self._signal is not None and self._signal is not self._shared_signal:
            await self._signal.close()

    async def __aenter__(self) -> Tunnel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- signaling ----------------------------------------------------------
    def _on_payload(self, sender: str, payload: bytes) -> None:
        try:
            env = self._opener.open(payload, sender, time.time())
        except EnvelopeKindError:
            return  # e.g. our own offer, when the share runs under the same node key
        except EnvelopeError as exc:
            # Only the server stamps "from", so a bad envelope "from the sharer" means
            # the server (or whatever is between us) altered it: fail loudly.
            if sender == self.ticket.node_id:
                for fut in self._answers.values():
                    if not fut.done():
                        fut.set_exception(HandshakeError(
                            f"the sharer's answer failed verification ({exc}); the "
                            "signaling server or the network tampered with it"))
            return
        waiting = self._answers.get(env.session)
        if waiting is not None and not waiting.done() and env.sender == self.ticket.node_id:
            waiting.set_result((env.kind, env.body))

    # -- establishing ---------------------------------------------------------
    async def _establish(self) -> None:
        """Race a full ICE attempt against a relay-only one started ``relay_after`` later."""
        cfg = self.config
        assert self._signal is not None
        t0 = time.monotonic()
        plan = ice_plan(self._signal.ice_servers)
        udp_ok = await udp_reachable(plan)
        if not udp_ok:
            self.emit(events.Warning("UDP to the signaling server's STUN port is blocked; "
                                     "relaying over TCP"))
        if cfg.relay_only and not plan.has_relay:
            raise ConfigError("--relay-only: the signaling server hands out no TURN relay")
        first = "relay" if cfg.relay_only else "direct"
        attempts: dict[asyncio.Task[_Link], str] = {
            asyncio.create_task(self._attempt(plan, first, udp_ok)): first}
        relay_started = not plan.has_relay or cfg.relay_only
        relay_after = cfg.relay_after if udp_ok else 0.0
        failures: list[MeshError] = []
        link: _Link | None = None
        try:
            while link is None:
                now = time.monotonic()
                if now - t0 > cfg.connect_timeout:
                    raise ConnectError(f"no peer-to-peer path within {cfg.connect_timeout:g} s"
                                       " (firewall or NAT in the way?)")
                wait = cfg.connect_timeout - (now - t0)
                if not relay_started:
                    wait = min(wait, max(0.0, relay_after - (now - t0)))
                done: set[asyncio.Task[_Link]] = set()
                if attempts:
                    done, _ = await asyncio.wait(set(attempts), timeout=wait,
                                                 return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    attempts.pop(task)
                    try:
                        link = task.result()
                        break
                    except (HandshakeError, AdmissionDenied, Refused, PeerUnreachable):
                        raise
                    except MeshError as exc:
                        failures.append(exc)
                if link is None and not relay_started and (
                        not attempts or time.monotonic() - t0 >= relay_after):
                    relay_started = True
                    attempts[asyncio.create_task(self._attempt(plan, "relay", udp_ok))] = "relay"
                elif link is None and not attempts:
                    raise failures[-1] if failures else ConnectError("could not connect")
        finally:
            for task in attempts:
                task.cancel()
        assert link is not None
        self._install(link, plan, udp_ok, t0, link.mode)

    def _install(self, link: _Link, plan: IcePlan, udp_ok: bool, t0: float, attempt: str
                 ) -> None:
        self._link = link
        self._up.set()
        link.last_seen = time.monotonic()
        link.pc.on("connectionstatechange", lambda: self._on_pc_state(link))
        self.emit(events.Connected(
            peer=self.ticket.node_id, path=link.info.path, local_candidate=link.info.local_type,
            remote_candidate=link.info.remote_type, remote_addr=link.info.remote_addr,
            rtt_ms=link.rtt_ms, connect_ms=(time.monotonic() - t0) * 1000,
            extra={"port": self.port, "name": self.ticket.name, "attempt": attempt},
        ))
        watch_packet_size(link.pc, lambda size: self.emit(
            events.PathMtu(self.ticket.node_id, size)))
        self._spawn(self._keepalive(link))
        if link.info.path == "relay" and not self.config.relay_only:
            self._spawn(self._upgrade(link, plan, udp_ok))

    async def _attempt(self, plan: IcePlan, mode: str, udp_ok: bool) -> _Link:
        pc = make_pc(plan, mode, udp_ok)
        session = secrets.token_hex(8)
        try:
            link = await self._handshake(pc, session, mode)
        except BaseException:
            await pc.close()
            await self._bye(session)
            raise
        link.mode = mode
        link.session = session
        return link

    async def _bye(self, session: str) -> None:
        if self._signal is None or not self._signal.registered.is_set():
            return
        blob = seal_envelope(self.identity, self.ticket.node_id, "bye", session, {}, time.time())
        with contextlib.suppress(MeshError, asyncio.CancelledError):
            await self._signal.send(self.ticket.node_id, blob)

    async def _handshake(self, pc: RTCPeerConnection, session: str, mode: str) -> _Link:
        cfg = self.config
        assert self._signal is not None
        ctl = pc.createDataChannel("mesh-ctl")
        inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        ctl.on("message", inbox.put_nowait)
        await pc.setLocalDescription(await pc.createOffer())
        offer_sdp = pc.localDescription.sdp
        fut: asyncio.Future[tuple[str, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future())
        self._answers[session] = fut
        blob = seal_envelope(self.identity, self.ticket.node_id, "offer", session,
                             {"sdp": offer_sdp, "name": self.ticket.name, "mode": mode,
                              "share": share_tag(self.ticket.name),
                              "lan": self.config.by_name},
                             time.time())
        try:
            errors = await self._signal.send(self.ticket.node_id, blob)
            try:
                waits: list[asyncio.Future[Any]] = [fut, errors]
                done, _ = await asyncio.wait(waits, timeout=cfg.answer_timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if errors in done:
                    errors.result()
            finally:
                errors.cancel()
            if fut not in done:
                raise ConnectError(f"the sharer did not answer within {cfg.answer_timeout:g} s"
                                   " (is the share still running?)")
            kind, body = fut.result()
        finally:
            self._answers.pop(session, None)
        if kind == "reject":
            raise Refused(f"the sharer refused: {str(body.get('reason'))[:200]}")
        answer_sdp = body.get("sdp")
        if not isinstance(answer_sdp, str):
            raise HandshakeError("the sharer's answer carries no SDP")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        except (ValueError, AttributeError) as exc:
            raise HandshakeError(f"the sharer's answer is unusable: {exc}") from exc
        await wait_connected(pc, cfg.connect_timeout)
        transcript = admission.Transcript(
            sharer=self.ticket.node_id, connector=self.identity.node_id,
            offer_fps=admission.fingerprints(offer_sdp),
            answer_fps=admission.fingerprints(answer_sdp),
        )
        adm = admission.ConnectorAdmission(self.ticket.secret, transcript)
        try:
            async with asyncio.timeout(cfg.admission_timeout):
                while not adm.admitted:
                    msg = await inbox.get()
                    if not isinstance(msg, str):
                        raise ProtocolError("control messages are text")
                    reply = adm.receive(admission.parse(msg))
                    if reply is not None:
                        ctl.send(reply)
                link = _Link(pc, ctl, path_info(pc))
                ctl.send(json.dumps({"t": "ping", "id": 1, "ts": time.monotonic()}))
                while link.rtt_ms is None:
                    msg = await inbox.get()
                    if isinstance(msg, str):
                        self._on_ctl(link, msg)
        except TimeoutError as exc:
            raise ConnectError("the sharer did not complete admission in time") from exc
        ctl.remove_all_listeners("message")
        ctl.on("message", lambda m: self._on_ctl(link, m))
        return link

    def _on_ctl(self, link: _Link, message: str | bytes) -> None:
        """Control messages after admission: ping/pong both ways (round-trip time)."""
        if not isinstance(message, str):
            return
        with contextlib.suppress(ProtocolError):
            obj = admission.parse(message)
            link.last_seen = time.monotonic()
            if obj["t"] == "pong" and isinstance(obj.get("ts"), float):
                link.rtt_ms = round((time.monotonic() - obj["ts"]) * 1000, 3)
            elif obj["t"] == "ping" and link.ctl.readyState == "open":
                link.ctl.send(json.dumps({"t": "pong", "id": obj.get("id"),
                                          "ts": obj.get("ts")}))

    def _on_pc_state(self, link: _Link) -> None:
        if link.pc.connectionState in ("failed", "closed"):
            self._drop(link, f"peer connection {link.pc.connectionState}")

    def _drop(self, link: _Link, reason: str) -> None:
        """The current link is dead: report it, close it, rebuild in the background."""
        if self._closed or self._link is not link:
            return
        self._link = None
        self._up.clear()
        self.emit(events.Disconnected(self.ticket.node_id, reason))
        self._spawn(link.pc.close())
        self._spawn(self._rebuild())

    async def _rebuild(self) -> None:
        delay = 1.0
        while not self._closed and self._link is None:
            try:
                await self._establish()
                return
            except MeshError as exc:
                self.emit(events.Warning(f"reconnecting: {exc}"))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 5.0)

    async def _keepalive(self, link: _Link) -> None:
        """Ping the sharer; a link that stays silent for ``dead_after`` s is dead.

        ICE consent freshness would notice too, but only after ~30 s.
        """
        cfg = self.config
        seq = 0
        while self._link is link:
            await asyncio.sleep(cfg.ping_interval)
            if self._link is not link:
                return
            if time.monotonic() - link.last_seen > cfg.dead_after:
                self._drop(link, f"no answer from the sharer for {cfg.dead_after:g} s")
                return
            seq += 1
            with contextlib.suppress(Exception):
                link.ctl.send(json.dumps({"t": "ping", "id": seq, "ts": time.monotonic()}))

    async def _upgrade(self, link: _Link, plan: IcePlan, udp_ok: bool) -> None:
        """While on the relay, try the direct path now and then; move to it if it works."""
        while self._link is link and link.info.path == "relay" and udp_ok:
            await asyncio.sleep(self.config.upgrade_interval)
            if self._link is not link:
                return
            try:
                new = await asyncio.wait_for(self._attempt(plan, "direct", udp_ok),
                                             self.config.relay_after * 2 + 5)
            except (MeshError, TimeoutError):
                continue
            if new.info.path != "direct" or self._link is not link:
                await new.pc.close()
                await self._bye(new.session)
                continue
            self._install(new, plan, udp_ok, time.monotonic(), "upgrade")
            self._spawn(self._retire(link))
            return

    async def _retire(self, link: _Link) -> None:
        """Close a replaced link once its streams have finished (at most an hour)."""
        deadline = time.monotonic() + 3600
        while link.streams > 0 and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
        await link.pc.close()
        await self._bye(link.session)

    # -- local connections ------------------------------------------------------
    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if self.config.http:
            # the guard parses each request and opens the tunnel stream only for one
            # that passed (a rebinding page never reaches the sharer)
            guard = HttpSession(reader, writer, self._open_pipe, config=HttpConfig(inspect=None),
                                guard_port=self.port)
            await guard.run()
            return
        await self._tunnel(reader, writer)

    async def _open_pipe(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A local socket pair whose far end is tunnelled like an accepted connection."""
        (reader, writer), (far_reader, far_writer) = await pipe_pair()
        self._spawn(self._tunnel(far_reader, far_writer))
        return reader, writer

    async def _tunnel(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if self.counters.streams_open >= self.config.max_streams:
            self._warn_once("too many local connections (--max-streams); refusing one")
            writer.transport.abort()
            return
        try:
            await asyncio.wait_for(self._up.wait(), self.config.wait_for_path)
        except TimeoutError:
            writer.transport.abort()
            return
        link = self._link
        if link is None:
            writer.transport.abort()
            return
        stream = Stream(link.pc.createDataChannel("tcp"), self.counters,
                        idle_timeout=self.config.idle_timeout)
        link.streams += 1
        try:
            await stream.run(reader, writer)
        finally:
            link.streams -= 1
        reason = stream.reset_reason
        if reason and reason not in ("connection reset", "tunnel closed", "reset by peer"):
            self._warn_once(f"the sharer closed a connection: {reason}")

    def _warn_once(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(message, 0.0) > 5.0:
            self._last_warning[message] = now
            self.emit(events.Warning(message))

    # -- status -------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        link = self._link
        return {
            "kind": "connect", "name": self.ticket.name, "peer": self.ticket.node_id,
            "port": self.port, "uptime_s": round(time.monotonic() - self.started, 1),
            "connected": link is not None, "path": link.info.path if link else None,
            "local_candidate": link.info.local_type if link else None,
            "remote_candidate": link.info.remote_type if link else None,
            "rtt_ms": link.rtt_ms if link else None,
            "streams_open": self.counters.streams_open,
            "streams_total": self.counters.streams_total,
            "bytes_in": self.counters.bytes_in, "bytes_out": self.counters.bytes_out,
            "signal": {"url": self._signal.url if self._signal else None,
                       "registered": bool(self._signal and self._signal.registered.is_set())},
        }


async def resolve(target: str, now: float, browse_seconds: float = 2.0) -> tuple[Ticket, bool]:
    """A ticket from a ticket string, or from a share found on the LAN by name or node id
    prefix. Returns (ticket, found_by_name)."""
    from mesh.proto import ticket as ticket_mod

    from .discovery import browse, open_secret

    if ticket_mod.looks_like_ticket(target) or target.strip().lower().startswith(
            ticket_mod.PREFIX):
        return ticket_mod.decode(target, now=now), False
    if os.environ.get("MESH_LAN", "on").lower() in ("off", "0", "no"):
        ticket_mod.decode(target)  # LAN discovery is off: it must be a ticket (raises)
    needle = target.strip()
    if not needle:
        raise ConfigError("give a ticket or the name of a share on this network")
    adverts = await browse(browse_seconds)
    matches = [a for a in adverts if a.name == needle]
    if not matches and len(needle) >= 4:
        matches = [a for a in adverts if a.node_id.startswith(needle.lower())]
    if not matches:
        seen = ", ".join(sorted({a.name for a in adverts})) or "none"
        raise ConfigError(f"no share named {needle!r} on this network (visible: {seen})")
    if len(matches) > 1:
        listing = "; ".join(f"{a.name} {a.node_id[:12]} at {', '.join(a.addresses)}"
                            for a in matches)
        raise ConfigError(f"{needle!r} is ambiguous: {listing}; use a node id prefix")
    ad = matches[0]
    if not ad.open:
        raise ConfigError(f"share {ad.name!r} ({ad.node_id[:8]}) is not open to the LAN by "
                          "name; ask the sharer for its ticket")
    ticket = Ticket(node_id=ad.node_id, secret=open_secret(ad.node_id, ad.name),
                    expires=int(now) + 3600, name=ad.name, signal_urls=ad.signal_urls)
    return ticket, True
