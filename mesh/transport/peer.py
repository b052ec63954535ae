"""A peer connection as the node layer sees it: SDP in and out, data channels, the path.

``Peer`` is one WebRTC data-channel session built from parts: ICE is aioice
(``IceConnection``, ice.py), the DTLS handshake aiortc's (dtls.py), and
everything after it mesh's own: DTLS records, SCTP and data channels
(mesh/proto/sctp, driven by datapath.py) on the selected pair's socket
(wire.py). The node layer offers or answers with SDP text (mesh/proto/sdp.py),
waits for ``connected`` with a bound, opens or receives data channels
(``Channel``), reads which candidate pair carries it (``PathInfo``), and gets
``MeshError``s, never aiortc's or aioice's exceptions. ``connected`` means
data can flow: ICE, DTLS and the SCTP association are all up.

Modes of one attempt: ``direct`` gathers host and server-reflexive candidates
only (so ICE cannot settle on a relay pair while a direct one is still being
punched); ``relay`` relay candidates only; ``any`` everything (the sharer's
answer to a relay attempt, so relay-to-reflexive pairs are possible).
Without UDP to the server, STUN is pointless and TURN goes over TCP.

States: ``new``, ``connecting``, ``connected``, then ``closed`` (closed here
or by the peer) or ``failed`` (ICE, DTLS or the association gave up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioice
from aiortc import RTCCertificate

from mesh.errors import ConnectError, HandshakeError, RelayRefused
from mesh.proto import plpmtud, sdp

from . import _private
from .channel import Channel
from .datapath import DataPath
from .dtls import Handshake
from .ice import IceConnection, IcePlan, IceSettings
from .relaywatch import RelayWatch
from .wire import Wire

log = logging.getLogger("mesh.peer")

MAX_MESSAGE = 256 * 1024
"""What this side accepts (a=max-message-size): the core's reassembly limit."""
EARLY = 32
"""Datagrams kept that arrive before the DTLS handshake is set up (a ClientHello)."""

__all__ = ["UNKNOWN", "Channel", "PathInfo", "Peer"]


@dataclass(frozen=True)
class PathInfo:
    """The candidate pair ICE selected."""

    path: str
    """``direct`` or ``relay``."""
    local_type: str
    remote_type: str
    local_addr: str
    remote_addr: str
    portmap: str | None = None
    """The router mapping this side offered (``ip:port``), if its router granted one."""

    def as_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "local_candidate": self.local_type,
                "remote_candidate": self.remote_type, "local_addr": self.local_addr,
                "remote_addr": self.remote_addr, "portmap": self.portmap}


UNKNOWN = PathInfo("unknown", "?", "?", "?", "?")


class Peer:
    """One peer connection for one attempt (see the module docstring for ``mode``)."""

    def __init__(self, plan: IcePlan, mode: str = "any", udp_ok: bool = True,
                 ice: IceSettings | None = None, window: int | None = None) -> None:
        self._settings = ice or IceSettings()
        turn = plan.turn(udp_ok)
        stun = plan.stun if udp_ok else None
        if mode == "relay":
            stun = None
        elif mode == "direct":
            turn = None
        self._ice_options: dict[str, Any] = {
            "stun_server": (stun.host, stun.port) if stun else None,
            "transport_policy": (aioice.TransportPolicy.RELAY if mode == "relay"
                                 else aioice.TransportPolicy.ALL)}
        if turn is not None:
            self._ice_options.update(turn_server=(turn.host, turn.port),
                                     turn_username=turn.username, turn_password=turn.password,
                                     turn_transport=turn.transport or "udp")
        self._certificate = RTCCertificate.generateCertificate()
        self._state = "new"
        self._state_listeners: list[Callable[[str], None]] = []
        self._channel_listeners: list[Callable[[Channel], None]] = []
        self._size_listeners: list[Callable[[int], None]] = []
        self._path = DataPath(on_channel=self._on_channel, on_ready=self._on_ready,
                              on_end=self._on_end, on_packet_size=self._on_packet_size)
        if window is not None:
            self._path.window = window
        self._connection: IceConnection | None = None
        self._handshake: Handshake | None = None
        self._wire: Wire | None = None
        self._early: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._mid = "0"
        self._closing = False
        self._failure: ConnectError | None = None
        """Why the attempt failed, when it is known better than "ICE failed"."""
        self._relay_watch = RelayWatch(self._relay_refused)
        self._remote_relayed = False
        """The peer offered relayed candidates only (its relay-only attempt)."""
        self.control: Channel | None = None

    # -- SDP ------------------------------------------------------------------------
    async def offer(self) -> str:
        """The offer (the offerer opens ``mesh-ctl`` first: see ``control``)."""
        self.control = self.open_channel("mesh-ctl")
        await self._gather(controlling=True)
        return self._describe("actpass")

    async def answer(self, offer_sdp: str) -> str:
        """Take an offer; return the answer. ``HandshakeError`` if the offer is unusable."""
        try:
            remote = sdp.parse(offer_sdp)
        except sdp.SdpError as exc:
            raise HandshakeError(f"the offer is unusable: {exc}") from exc
        self._mid = remote.mid
        await self._gather(controlling=False)
        server = remote.setup == "active"  # the offerer chose to be the DTLS client
        answer = self._describe("passive" if server else "active")
        self._begin(remote, server)
        return answer

    async def accept(self, answer_sdp: str) -> None:
        """Take the answer to our offer; ``HandshakeError`` if it is unusable."""
        try:
            remote = sdp.parse(answer_sdp)
        except sdp.SdpError as exc:
            raise HandshakeError(f"the sharer's answer is unusable: {exc}") from exc
        if remote.setup == "actpass":
            raise HandshakeError("the sharer's answer is unusable: its DTLS role is actpass")
        if self._connection is None or self._task is not None:
            raise HandshakeError("an answer without an offer")
        self._begin(remote, server=remote.setup == "active")

    async def _gather(self, controlling: bool) -> None:
        connection = IceConnection(addresses=self._settings.host_addresses, sink=self._sink,
                                   on_close=self._on_ice_closed, ice_controlling=controlling,
                                   portmap=self._settings.portmap, **self._ice_options)
        self._connection = connection
        try:
            await connection.gather_candidates()
        except (OSError, ValueError) as exc:
            raise ConnectError(f"could not gather ICE candidates: {exc}") from exc
        self._relay_watch.watch(connection)

    def _describe(self, setup: str) -> str:
        connection = self._connection
        assert connection is not None
        return sdp.build(sdp.Description(
            ice_ufrag=connection.local_username, ice_pwd=connection.local_password,
            fingerprints=tuple((f.algorithm, f.value)
                               for f in self._certificate.getFingerprints()),
            setup=setup, candidates=tuple(c.to_sdp() for c in connection.local_candidates),
            mid=self._mid, max_message_size=MAX_MESSAGE))

    # -- connecting -----------------------------------------------------------------
    def _begin(self, remote: sdp.Description, server: bool) -> None:
        self._set_state("connecting")
        self._task = asyncio.create_task(self._run_guarded(remote, server))

    async def _run_guarded(self, remote: sdp.Description, server: bool) -> None:
        """A failure nobody foresaw fails the attempt at once (the link machine retries)
        instead of leaving it "connecting" until the caller's timeout."""
        try:
            await self._run(remote, server)
        except Exception as exc:
            log.warning("peer connection failed: %r", exc)
            self._set_state("failed")

    async def _run(self, remote: sdp.Description, server: bool) -> None:
        connection = self._connection
        assert connection is not None
        try:
            connection.remote_username = remote.ice_ufrag
            connection.remote_password = remote.ice_pwd
            remote_addrs, remote_types = [], set()
            for text in remote.candidates:
                with contextlib.suppress(ValueError):
                    candidate = aioice.Candidate.from_sdp(text)
                    remote_addrs.append((candidate.host, candidate.port))
                    remote_types.add(candidate.type)
                    await connection.add_remote_candidate(candidate)
            # a relay-only offer: whatever address a check comes from, it is the relay's
            self._remote_relayed = remote_types == {"relay"}
            if all(c.type == "relay" for c in connection.local_candidates):
                self._relay_watch.expect(remote_addrs)  # relayed only: the relay decides
            if remote.end_of_candidates:  # else (a browser's trickle offer) checks that
                await connection.add_remote_candidate(None)  # arrive still find pairs
            if not connection.ice_controlling:
                connection.prime()
            await connection.connect()
            pair = _private.nominated_pair(connection)
            if pair is None:
                raise ConnectionError("no candidate pair")
        except (ConnectionError, ValueError, OSError) as exc:
            log.info("ICE failed: %s", exc)
            self._set_state("failed")
            return
        handshake = self._handshake = Handshake(self._certificate, server, self._send_early)
        for datagram in self._early:
            handshake.feed(datagram)
        self._early.clear()
        try:
            records = await handshake.run(remote.fingerprints)
        except HandshakeError as exc:
            log.info("%s", exc)
            self._set_state("failed")
            return
        wire = self._wire = Wire(pair, self._path.receive, self._path.flush,
                                 offload=self._settings.udp_offload)
        discover = self._settings.plpmtud and wire.prepare()
        self._path.start(client=not server, discover=discover, records=records,
                         send=wire.send_many, remote_port=remote.sctp_port,
                         peer_max_message=remote.max_message_size)
        wire.take_over()

    def _sink(self, datagram: bytes) -> None:
        """A datagram that came through aioice (not read by the wire)."""
        if self._path.started:
            self._path.receive(datagram)
            self._path.later()
        elif self._handshake is not None:
            self._handshake.feed(datagram)
        elif len(self._early) < EARLY:
            self._early.append(datagram)

    def _send_early(self, datagram: bytes) -> None:
        """The handshake's datagrams, before the wire exists: aioice's path."""
        if self._wire is not None:
            self._wire.send(datagram)
            return
        pair = _private.nominated_pair(self._connection) if self._connection else None
        if pair is not None:
            pair.protocol.transport.sendto(datagram, pair.remote_addr)

    # -- events from the parts ------------------------------------------------------
    def _on_ready(self) -> None:
        self._set_state("connected")

    def _relay_refused(self, message: str) -> None:
        """Every peer address this attempt could use was refused by the relay: fail now
        with that reason, instead of waiting out the timeout."""
        log.info("%s", message)
        self._failure = RelayRefused(message)
        self._set_state("failed")
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _on_end(self, reason: str, by_peer: bool) -> None:
        log.info("association ended: %s", reason)
        self._set_state("closed" if self._closing or by_peer else "failed")
        if not self._closing:
            asyncio.get_running_loop().create_task(self.close())

    def _on_ice_closed(self) -> None:
        if not self._closing:
            log.info("ICE closed (consent to send expired)")
            self._set_state("failed")
            asyncio.get_running_loop().create_task(self.close())

    def _on_channel(self, channel: Channel) -> None:
        for callback in list(self._channel_listeners):
            callback(channel)

    def _on_packet_size(self, size: int, dont_fragment: bool) -> None:
        if self._wire is not None:
            self._wire.dont_fragment(dont_fragment)
        log.info("SCTP packets now up to %d bytes", size)
        for callback in list(self._size_listeners):
            callback(size)

    def _set_state(self, state: str) -> None:
        if state == self._state or self._state in ("closed", "failed"):
            return
        self._state = state
        for callback in list(self._state_listeners):
            callback(state)

    # -- state ----------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``new``, ``connecting``, ``connected``, ``failed`` or ``closed``."""
        return self._state

    def on_state(self, callback: Callable[[str], None]) -> None:
        self._state_listeners.append(callback)

    async def connected(self, timeout: float) -> None:
        """Wait until data can flow; ``ConnectError`` on failure or timeout."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def check(state: str) -> None:
            if done.done():
                return
            if state == "connected":
                done.set_result(None)
            elif state in ("failed", "closed"):
                done.set_exception(self._failure or ConnectError(
                    "could not establish a peer-to-peer path (ICE/DTLS failed)"))

        self._state_listeners.append(check)
        check(self._state)
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError as exc:
            raise ConnectError(
                f"no peer-to-peer path within {timeout:g} s (firewall or NAT in the way?)"
            ) from exc
        finally:
            self._state_listeners.remove(check)

    def path(self) -> PathInfo:
        """The candidate pair that carries the connection."""
        pair = _private.nominated_pair(self._connection) if self._connection else None
        if pair is None:
            return UNKNOWN
        local, remote = pair.local_candidate, pair.remote_candidate
        relay = "relay" in (local.type, remote.type) or self._remote_relayed
        return PathInfo("relay" if relay else "direct", local.type, remote.type,
                        f"{local.host}:{local.port}", f"{remote.host}:{remote.port}",
                        self._connection.mapped_address if self._connection else None)

    @property
    def packet_size(self) -> int:
        return self._path.packet_size

    @property
    def largest_packet(self) -> int:
        """The largest SCTP packet sent so far (path MTU probes included)."""
        return self._path.largest

    def watch_packet_size(self, report: Callable[[int], None]) -> None:
        """``report(size)`` now if path MTU discovery grew the packets, and on each change."""
        if self._path.packet_size > plpmtud.BASE:
            report(self._path.packet_size)
        self._size_listeners.append(report)

    def set_window(self, window: int) -> None:
        """The SCTP receive window from now on: what the peer may have in flight to us."""
        self._path.set_window(window)

    # -- channels -------------------------------------------------------------------
    def open_channel(self, label: str, *, protocol: str = "", ordered: bool = True,
                     max_retransmits: int | None = None,
                     max_packet_life_time: float | None = None) -> Channel:
        """A channel; unordered and partially reliable ones carry datagrams (UDP)."""
        return self._path.open_channel(label, protocol=protocol, ordered=ordered,
                                       max_retransmits=max_retransmits,
                                       max_packet_life_time=max_packet_life_time)

    def on_channel(self, callback: Callable[[Channel], None]) -> None:
        """``callback(channel)`` for each channel the other side opens."""
        self._channel_listeners.append(callback)

    async def close(self) -> None:
        """ABORT the association, close_notify, then ICE; idempotent."""
        if self._closing:
            return
        self._closing = True
        self._path.abort("the peer closed the connection")
        if self._handshake is not None:
            await self._handshake.close()  # close_notify
        if self._wire is not None:
            self._wire.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._connection.close())
        self._set_state("closed")
