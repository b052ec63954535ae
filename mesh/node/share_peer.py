"""One connecting peer on the sharing side: its peer connection, admission, streams.

Wiring only: admission and liveness are the control machine's
(mesh/proto/control.py), fed by a ``ControlPump`` from the moment the offer
arrives, so a peer whose control channel never opens still meets the
deadline. Until the machine says ``Admitted``, every ``tcp`` channel is closed
unread: no byte reaches the service from an unadmitted peer. After it, each
``tcp`` channel is one ``Stream`` to a fresh connection to the shared
host:port (spliced byte for byte), or, in HTTP mode, one ``HttpProxy`` whose
client end is the stream itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from mesh.errors import ProtocolError
from mesh.http.proxy import HttpProxy
from mesh.http.roles import ShareRole
from mesh.proto import admission, control
from mesh.proto import resume as rs
from mesh.proto import stream as sp
from mesh.transport.duplex import describe, splice
from mesh.transport.peer import Channel, PathInfo, Peer
from mesh.transport.pump import ControlPump
from mesh.transport.stream import Counters, Stream
from mesh.transport.udp import SharerUdp

from . import events

UNADMITTED_WINDOW = 256 * 1024
"""The SCTP receive window a peer gets until it is admitted: with the channels'
hold for unread messages (transport/channel.py) it bounds what a stranger who
knows only the node id can make the sharer hold, about half a MiB per peer."""
ADMITTED_WINDOW = 4 * 1024 * 1024

if TYPE_CHECKING:
    from .share import Share

log = logging.getLogger("mesh.share")


class SharePeer:
    def __init__(self, share: Share, node: str, session: str, peer: Peer,
                 *, trusted: bool = False, lan: bool = False) -> None:
        self.share = share
        self.lan = lan
        """The offer came through this share's LAN endpoint."""
        self.node = node
        self.session = session
        self.peer = peer
        self.trusted = trusted
        """The peer is the tier's gateway (its X-Forwarded-* describe the caller)."""
        self.started = time.monotonic()
        self.counters = Counters()
        self.info: PathInfo | None = None
        self.closed = False
        self._pump: ControlPump | None = None
        self.udp: SharerUdp | None = None
        """This peer's UDP flows (a UDP share, once the peer opened its ``udp`` channel)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gaps: list[float] = []
        """Resumes completed on this connection, not yet reported."""

    @property
    def admitted(self) -> bool:
        return self._pump is not None and self._pump.machine.admitted

    @property
    def rtt_ms(self) -> float | None:
        return self._pump.machine.rtt_ms if self._pump is not None else None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handshake(self, offer_sdp: str) -> str:
        """Take the offer, start the control machine's clock; return the answer SDP."""
        self.peer.on_channel(self._on_channel)
        self.peer.on_state(self._on_state)
        answer = await self.peer.answer(offer_sdp)
        transcript = admission.Transcript(
            sharer=self.share.identity.node_id, connector=self.node,
            offer_fps=admission.fingerprints(offer_sdp),
            answer_fps=admission.fingerprints(answer))
        machine = control.Control(
            control.Role.SHARER, admission.SharerAdmission(
                admission.Keys(self.share.master, self.share.open_key if self.lan else None),
                transcript, time.time()),
            asyncio.get_running_loop().time(),
            control.Timings(admit_timeout=self.share.config.handshake_timeout))
        self._pump = ControlPump(machine, self._on_control)
        return answer

    # -- events -----------------------------------------------------------------------
    def _on_state(self, state: str) -> None:
        if state in ("failed", "closed") and not self.closed:
            if self.admitted:
                self.share.emit(events.Disconnected(self.node, f"peer connection {state}",
                                                    self.waiting()))
            self._spawn(self.close())

    def _on_channel(self, channel: Channel) -> None:
        pump = self._pump
        log.debug("channel %r from %s (admitted=%s)", channel.label, self.node[:8],
                  self.admitted)
        if channel.label == "mesh-ctl" and pump is not None and pump.machine.state is (
                control.State.WAITING):
            pump.attach(channel)
        elif channel.label == "tcp" and self.admitted:
            if not self.share.config.tcp:
                Stream(channel, Counters()).abort("this share carries UDP only")
            elif self.counters.streams_open >= self.share.config.max_streams:
                Stream(channel, Counters()).abort("too many streams for this peer")
            else:
                self._open_stream(channel)
        elif channel.label == rs.RESUME_LABEL and self.admitted:
            self._resume_stream(channel)
        elif channel.label == "udp" and self.admitted and self.share.config.udp:
            self._serve_udp(channel)
        else:
            channel.close()

    def _on_control(self, event: control.Event) -> None:
        match event:
            case control.Ready(rtt_ms):
                self.peer.set_window(ADMITTED_WINDOW)
                self._announce(rtt_ms)
            case control.Refused(reason):
                self.share.emit(events.Rejected(self.node, reason))
            case control.Failed(error):
                self.share.emit(events.Rejected(self.node, str(error)))
                self._spawn(self.close())
            case control.Dead(reason):
                self.share.emit(events.Disconnected(self.node, reason, self.waiting()))
                self._spawn(self.close())
            case control.Closed():
                self._spawn(self.close())

    def _announce(self, rtt_ms: float | None) -> None:
        """Report the admitted peer once: path, candidates, round-trip time."""
        if self.closed:
            return
        self.info = info = self.peer.path()
        self.share.emit(events.Connected(
            peer=self.node, path=info.path, local_candidate=info.local_type,
            remote_candidate=info.remote_type, remote_addr=info.remote_addr, rtt_ms=rtt_ms,
            connect_ms=round((time.monotonic() - self.started) * 1000, 3),
            portmap=info.portmap))
        self.peer.watch_packet_size(lambda size: self.share.emit(events.PathMtu(self.node, size)))

    # -- streams ------------------------------------------------------------------------
    async def _serve(self, stream: Stream) -> None:
        share = self.share
        cfg = share.config
        if cfg.http is not None and share.http_policy is not None:
            stream.accept()
            info = self.info or self.peer.path()
            client = info.remote_addr.rsplit(":", 1)[0].strip("[]") or "unknown"
            role = ShareRole(share.http_policy, share.dial_service, self.node, client,
                             trusted=self.trusted, on_error=share.warn_service)
            await HttpProxy(stream, role, config=cfg.http, store=share.store,
                            on_request=share.on_request, peer=self.node,
                            client_addr=client).run()
            return
        try:
            service = await share.dial_service()
        except (TimeoutError, OSError) as exc:
            reason = describe(exc)
            share.warn_service(f"{reason} ({cfg.target})")
            stream.abort(reason)
            return
        stream.accept()
        await splice(stream, service, idle_timeout=cfg.idle_timeout)

    def _open_stream(self, channel: Channel, adopted: sp.Resume | None = None) -> None:
        """A new tunnelled connection; resumable when the connector named it.
        ``adopted``: the connector's ``resume`` of a stream whose open was lost."""
        share = self.share
        timeout = share.config.resume_timeout
        sid = rs.parse_protocol(channel.protocol) if timeout > 0 else None
        key = (self.node, sid or "")
        if sid is not None and key in share.streams:
            Stream(channel, Counters()).abort("that stream id is in use")
            return

        def forget() -> None:
            if share.streams.get(key) is stream:
                del share.streams[key]
                share.ended_stream(key)

        stream = Stream(channel, self.counters, on_end=forget, sid=sid, resume_timeout=timeout,
                        on_resumed=self._resumed, opened_here=False)
        if sid is not None:
            share.streams[key] = stream
        if adopted is not None:
            stream.adopt(adopted)
        share.spawn(self._serve(stream))  # the share's: it outlives this connection

    def _resume_stream(self, channel: Channel) -> None:
        """The connector carries one of its streams on over this connection. Looked up
        by this peer's admitted node id: another key's stream is not found. A stream we
        never saw open (its open was lost with the old connection) is opened now if the
        connector's ``resume`` says it never heard from us and it did not end here."""
        share = self.share
        sid = rs.parse_protocol(channel.protocol)
        key = (self.node, sid or "")
        stream = share.streams.get(key) if sid else None
        if stream is not None and stream.resume(channel):
            stream.rehome(self.counters)
            stream.on_resumed = self._resumed
            return
        if stream is not None or sid is None or share.config.resume_timeout <= 0 or (
                share.recently_ended(key) or not share.config.tcp
                or self.counters.streams_open >= share.config.max_streams):
            Stream(channel, Counters()).abort("no such stream to resume")
            return

        def first(message: bytes | str) -> None:
            channel.remove_listener("message", first)
            try:
                msg = sp.parse(message) if isinstance(message, str) else None
            except ProtocolError:
                msg = None
            if (isinstance(msg, sp.Resume) and msg.new and key not in share.streams
                    and not share.recently_ended(key)):
                self._open_stream(channel, msg)
            else:
                Stream(channel, Counters()).abort("no such stream to resume")

        channel.on("message", first)

    def _resumed(self, stream: Stream, gap: float) -> None:
        if not self._gaps:
            asyncio.get_running_loop().call_later(0.5, self._report_resumed)
        self._gaps.append(gap)

    def _report_resumed(self) -> None:
        gaps, self._gaps = self._gaps, []
        self.share.emit(events.Resumed(self.node, len(gaps), round(max(gaps) * 1000, 1)))

    def waiting(self) -> int:
        """This peer's streams that wait for it to come back."""
        return sum(1 for node, _ in self.share.streams if node == self.node)

    def _serve_udp(self, channel: Channel) -> None:
        """The peer's ``udp`` channel: one per peer connection (a new one replaces it)."""
        cfg = self.share.config
        if self.udp is not None:
            self.udp.close()
        self.udp = SharerUdp(cfg.host, cfg.port, cfg.udp_idle, cfg.max_flows,
                             self.share.warn_service)
        self.udp.attach(channel)

    # -- status and end -----------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        c = self.counters
        info = self.info
        return {"peer": self.node, "admitted": self.admitted,
                "path": info.path if info else None,
                "local_candidate": info.local_type if info else None,
                "remote_candidate": info.remote_type if info else None,
                "rtt_ms": self.rtt_ms, "streams_open": c.streams_open,
                "streams_total": c.streams_total, "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
                "udp": self.udp.snapshot() if self.udp is not None else None,
                "uptime_s": round(time.monotonic() - self.started, 1)}

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.share.forget(self)
        if self._pump is not None:
            self._pump.close()
        if self.udp is not None:
            self.udp.close()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await self.peer.close()

