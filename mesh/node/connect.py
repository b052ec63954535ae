"""The connecting side: a local listener whose connections come out at the share.

Wiring only. Which peer connections to build, keep and drop is the link
machine's (mesh/proto/link.py); admission and liveness on each of them are the
control machine's (mesh/proto/control.py). This module turns the link
machine's commands into peer connections (offer through signaling, ICE and
DTLS, admission) and local connections into tunnelled streams
(mesh/transport/stream.py).

``Tunnel.start()`` fails fast: the ticket is checked, the local port bound,
the signaling server reached and the first peer connection established and
admitted, each with its own bounded wait and a ``MeshError`` naming what
failed. ``open_stream()`` gives one tunnelled stream (the gateway and the HTTP
guard use it directly; the listener splices each accepted TCP connection to one).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any

from mesh.errors import (
    AddressInUse,
    AdmissionDenied,
    ConfigError,
    ConnectError,
    HandshakeError,
    MeshError,
    PeerUnreachable,
    Refused,
)
from mesh.http.config import HttpConfig
from mesh.http.proxy import HttpProxy
from mesh.http.roles import GuardRole
from mesh.proto import control, link
from mesh.proto.identity import Identity
from mesh.proto.ticket import Ticket
from mesh.transport import portmap, udp
from mesh.transport.duplex import TcpDuplex, splice
from mesh.transport.ice import IcePlan, ice_plan, udp_reachable
from mesh.transport.stream import Counters, Stream

from . import events
from .config import ConnectConfig
from .dialer import Dialer, Link
from .home import load_or_create
from .signal_client import SignalClient
from .status import ControlServer
from .streams import Streams

log = logging.getLogger("mesh.connect")

FATAL = (HandshakeError, AdmissionDenied, Refused, PeerUnreachable)
"""Attempt failures no retry can change: the first connect fails at once."""
QUIET_RESETS = ("connection reset", "tunnel closed", "reset by peer")


def signaling_urls(ticket: Ticket, cfg: ConnectConfig) -> tuple[list[str], list[str]]:
    """(the share's LAN endpoints to try first, every URL in order). --signal replaces
    the ticket's servers; a share's own LAN endpoint has no TURN relay, so --relay-only
    skips it."""
    hints = [] if cfg.signal_urls or not cfg.use_lan_hints or cfg.relay_only else [
        f"ws://{h}/" for h in ticket.lan_hints if ":" in h]
    return hints, hints + list(cfg.signal_urls or ticket.signal_urls)


class Tunnel:
    """A running ``mesh connect``. Use ``async with Tunnel(config) as t``."""

    def __init__(self, config: ConnectConfig, *, identity: Identity | None = None,
                 on_event: events.OnEvent = events.ignore,
                 signal: SignalClient | None = None) -> None:
        """``signal``: a registered client shared with others (the gateway keeps one
        session for all its tunnels and hands each its payloads via ``on_payload``)."""
        self.config = config
        self.ticket = config.ticket
        self.identity = identity or load_or_create()
        self.on_event = on_event
        self.counters = Counters()
        self.port = 0
        self.started = time.monotonic()
        self._shared_signal = signal
        self._signal: SignalClient | None = None
        self._dialer = Dialer(self.identity, self.ticket, config)
        self._server: asyncio.Server | None = None
        self._machine = link.Link(link.LinkTimings(
            relay_after=config.relay_after, connect_timeout=config.connect_timeout,
            upgrade_interval=config.upgrade_interval), relay_only=config.relay_only)
        self._attempts: dict[int, asyncio.Task[None]] = {}
        self._links: dict[int, Link] = {}
        self._link: Link | None = None
        self._first: asyncio.Future[None] | None = None
        self._began: float | None = None
        self._plan = IcePlan()
        self._udp_ok = True
        self._timer: asyncio.TimerHandle | None = None
        self._up = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._last_warning: dict[str, float] = {}
        self._control = ControlServer(self.snapshot) if config.control_socket else None
        self.udp: udp.ConnectorUdp | None = None
        """The UDP listener, when the share carries UDP."""
        self.streams = Streams(config.resume_timeout, self.counters,
                               lambda n, gap: self.emit(events.Resumed(
                                   self.ticket.node_id, n, gap)))
        """The tunnelled streams, and how they move between peer connections."""

    # -- public ---------------------------------------------------------------------
    @property
    def up(self) -> bool:
        """A peer connection is established and admitted right now."""
        return self._up.is_set()

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

    async def start(self) -> None:
        cfg = self.config
        self.ticket.check_fresh(time.time())
        if cfg.ice.portmap:
            portmap.warm(cfg.ice.host_addresses)
        hints, urls = signaling_urls(self.ticket, cfg)
        if not urls and self._shared_signal is None:
            raise ConfigError("the ticket names no signaling server; pass --signal URL")
        try:
            if cfg.listen:
                await self._listen()
            if self._control is not None:
                await self._control.start()
            if self._shared_signal is not None:
                self._signal = self._shared_signal
            else:
                self._signal = SignalClient(
                    self.identity, urls, self._dialer.on_payload,
                    lambda state, url: self.emit(events.Signal(
                        state, url, url in hints or cfg.by_name)),
                    fast_urls=frozenset(hints))
                await self._signal.start()
            self._dialer.signal = self._signal
            self._plan = ice_plan(self._signal.ice_servers)
            self._began = self._now()  # the first connect_ms counts the UDP probe too
            self._udp_ok = await udp_reachable(self._plan)
            if not self._udp_ok:
                self.emit(events.Warning("UDP to the signaling server's STUN port is blocked; "
                                         "relaying over TCP"))
            if cfg.relay_only and not self._plan.has_relay:
                raise ConfigError(f"--relay-only: the signaling server {self._signal.url} hands "
                                  "out no TURN relay; pass --signal URL of one that does")
            self._first = asyncio.get_running_loop().create_future()
            self._machine.start(self._now(), udp_ok=self._udp_ok,
                                has_relay=self._plan.has_relay)
            self._drive()
            await self._first
        except BaseException:
            await self.close()
            raise

    async def _listen(self) -> None:
        """The local TCP and/or UDP listener (one port number for both)."""
        cfg = self.config
        for attempt in range(10):
            try:
                await self._bind(cfg.port)
                break
            except AddressInUse:  # port 0: TCP got a port whose UDP side is taken
                if cfg.port or attempt == 9:
                    raise
        if self._server is not None:
            self.emit(events.Listening(cfg.host, self.port, "tcp"))
        if self.udp is not None:
            self.emit(events.Listening(cfg.host, self.port, "udp"))

    async def _bind(self, port: int) -> None:
        cfg = self.config
        try:
            if self.ticket.tcp:
                self._server = await asyncio.start_server(self._on_client, cfg.host, port)
                port = self._server.sockets[0].getsockname()[1]
            if self.ticket.udp:
                self.udp = udp.ConnectorUdp(cfg.udp_idle, cfg.max_flows, self._warn_once)
                port = await self.udp.listen(cfg.host, port)
        except OSError as exc:
            if self._server is not None:
                self._server.close()
                self._server = None
            if self.udp is not None:
                self.udp.close()
                self.udp = None
            what = "UDP port" if self.ticket.udp and not self.ticket.tcp else "port"
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(f"{what} {port} on {cfg.host} is already in use; "
                                   "pick another with --port (0 picks a free one)") from exc
            raise ConfigError(f"cannot listen on {cfg.host}:{port}: {exc.strerror}") from exc
        self.port = port

    async def open_stream(self) -> Stream:
        """A new tunnelled stream to the shared service (waits for a path, bounded)."""
        if not self.ticket.tcp:
            raise ConfigError(f"share {self.ticket.name or 'share'!r} carries UDP only: it "
                              "has no TCP streams")
        if self.counters.streams_open >= self.config.max_streams:
            self._warn_once("too many local connections (--max-streams); refusing one")
            raise ConnectionRefusedError("too many tunnelled connections")
        deadline = self._now() + self.config.wait_for_path
        while (current := self._link) is None:  # the path may go again before we wake
            try:
                await asyncio.wait_for(self._up.wait(), max(0.0, deadline - self._now()))
            except TimeoutError:
                raise ConnectionRefusedError("no path to the share") from None
        return self.streams.open(current)

    async def close(self) -> None:
        self._closed = True
        self._machine.close()
        self._drive()
        if self._timer is not None:
            self._timer.cancel()
        if self._control is not None:
            await self._control.close()
        if self._server is not None:
            self._server.close()
        self.streams.abort_all("the connect stopped")  # the sharer need not wait for them
        if self.udp is not None:
            self.udp.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._signal is not None and self._signal is not self._shared_signal:
            await self._signal.close()

    async def __aenter__(self) -> Tunnel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- signaling ------------------------------------------------------------------
    def on_payload(self, sender: str, payload: bytes) -> None:
        """A payload from a signaling client shared with others (the gateway's)."""
        self._dialer.on_payload(sender, payload)

    # -- the link machine's commands ------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _drive(self) -> None:
        while (cmd := self._machine.next_command()) is not None:
            match cmd:
                case link.Attempt(aid, mode):
                    self._attempts[aid] = self._spawn(self._attempt(aid, mode))
                case link.Cancel(aid):
                    task = self._attempts.pop(aid, None)
                    if task is not None:
                        task.cancel()
                case link.Install(aid, kind, started):
                    self._install(self._links[aid], kind, started)
                case link.Retire(aid):
                    self._retire(aid)
                case link.Failed(error, cause):
                    if self._first is not None and not self._first.done():
                        self._first.set_exception(
                            cause if isinstance(cause, MeshError) else ConnectError(error))
                case link.Lost(reason):
                    self._link = None
                    self._up.clear()
                    self.emit(events.Disconnected(self.ticket.node_id, reason,
                                                  waiting=len(self.streams)))
                case link.Warn(message):
                    self.emit(events.Warning(message))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self._machine.get_timer()
        if when is not None and not self._closed:
            self._timer = asyncio.get_running_loop().call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._machine.handle_timer(self._now())
        self._drive()

    async def _attempt(self, aid: int, mode: str) -> None:
        try:
            established = await self._dialer.dial(
                mode, self._plan, self._udp_ok, lambda event: self._on_control(aid, event))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, MeshError):
                log.debug("attempt failed", exc_info=exc)
                exc = ConnectError(f"the peer connection failed: {type(exc).__name__}")
            self._attempts.pop(aid, None)
            self._machine.attempt_failed(aid, exc, self._now(), fatal=isinstance(exc, FATAL))
        else:
            self._attempts.pop(aid, None)
            self._links[aid] = established
            established.peer.on_state(lambda state: self._on_peer_state(aid, state))
            self._machine.attempt_up(aid, established.info.path, self._now())
        self._drive()

    def _on_control(self, aid: int, event: control.Event) -> None:
        match event:
            case control.Failed(error):
                self._lost(aid, f"control channel: {error}")
            case control.Dead(reason):
                self._lost(aid, f"no answer from the sharer ({reason})")

    def _on_peer_state(self, aid: int, state: str) -> None:
        if state in ("failed", "closed"):
            self._lost(aid, f"peer connection {state}")

    def _lost(self, aid: int, reason: str) -> None:
        lost = self._links.get(aid)
        if lost is not None:
            lost.lost = True
        if not self._closed and self._machine.link == aid:
            self._machine.lost(reason, self._now())
            self._drive()

    def _install(self, established: Link, kind: str, started: float) -> None:
        if self._began is not None:
            started, self._began = min(started, self._began), None
        self._link = established
        self._up.set()
        self.streams.move(established)
        if self.udp is not None:
            self.udp.attach(udp.open_channel(established.peer))
        info = established.info
        self.emit(events.Connected(
            peer=self.ticket.node_id, path=info.path, local_candidate=info.local_type,
            remote_candidate=info.remote_type, remote_addr=info.remote_addr,
            rtt_ms=established.rtt_ms, connect_ms=round((self._now() - started) * 1000, 3),
            extra={"port": self.port, "name": self.ticket.name, "attempt": kind,
                   "proto": self.ticket.protos}, portmap=info.portmap))
        established.peer.watch_packet_size(lambda size: self.emit(
            events.PathMtu(self.ticket.node_id, size)))
        if self._first is not None and not self._first.done():
            self._first.set_result(None)

    def _retire(self, aid: int) -> None:
        old = self._links.pop(aid, None)
        if old is None:
            return
        if self._link is old:
            self._link = None
            self._up.clear()
        self._spawn(self._close_link(old))

    async def _close_link(self, old: Link) -> None:
        """Close a connection once nothing uses it: at once when streams resume (they
        moved with ``_move_streams``) or when it was lost (its streams end with it); else
        streams opened on it before an upgrade finish there (at most an hour)."""
        deadline = time.monotonic() + 3600
        while old.streams > 0 and old.peer.state == "connected" and not old.lost and (
                time.monotonic() < deadline and not self._closed):
            await asyncio.sleep(1.0)
        old.pump.close()
        await self._dialer.discard(old.peer, old.session)

    # -- local connections ----------------------------------------------------------
    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        local = TcpDuplex(reader, writer)
        if self.config.guard_http:
            # the guard parses each request and opens a tunnel stream only for one that
            # passed (a rebinding page never reaches the sharer)
            await HttpProxy(local, GuardRole(self.port, self.open_stream),
                            config=HttpConfig(inspect=None)).run()
            return
        try:
            stream = await self.open_stream()
        except ConnectionRefusedError:
            local.abort("no path")
            return
        await splice(local, stream, idle_timeout=self.config.idle_timeout)
        reason = stream.reset_reason
        if stream.reset_remotely and reason and reason not in QUIET_RESETS:
            self._warn_once(f"the sharer closed a connection: {reason}")

    def _warn_once(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(message, 0.0) > 5.0:
            self._last_warning[message] = now
            self.emit(events.Warning(message))

    # -- status -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        current = self._link
        return {
            "kind": "connect", "name": self.ticket.name, "peer": self.ticket.node_id,
            "port": self.port, "uptime_s": round(time.monotonic() - self.started, 1),
            "connected": current is not None, "path": current.info.path if current else None,
            "local_candidate": current.info.local_type if current else None,
            "remote_candidate": current.info.remote_type if current else None,
            "rtt_ms": current.rtt_ms if current else None,
            "streams_open": self.counters.streams_open,
            "streams_total": self.counters.streams_total,
            **self.streams.snapshot(),
            "bytes_in": self.counters.bytes_in, "bytes_out": self.counters.bytes_out,
            "proto": self.ticket.protos,
            "udp": self.udp.snapshot() if self.udp is not None else None,
            "signal": {"url": self._signal.url if self._signal else None,
                       "registered": bool(self._signal and self._signal.registered.is_set())},
        }

