"""A peer connection as the node layer sees it: SDP in and out, data channels, the path.

``Peer`` wraps one aiortc peer connection (ICE, DTLS, SCTP) so that nothing
above the transport touches aiortc: the node layer offers or answers with SDP
text, waits for ``connected`` with a bound, opens or receives data channels
(``Channel``), reads which candidate pair carries it (``PathInfo``), and gets
``MeshError``s, never aiortc's exceptions.

Modes of one attempt: ``direct`` gathers host and server-reflexive candidates
only (so ICE cannot settle on a relay pair while a direct one is still being
punched); ``relay`` relay candidates only; ``any`` everything (the sharer's
answer to a relay attempt, so relay-to-reflexive pairs are possible).
Without UDP to the server, STUN is pointless and TURN goes over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from mesh.errors import ConnectError, HandshakeError

from .fastpath import TunedPeerConnection, watch_packet_size
from .ice import IcePlan, IceServer, IceSettings, gather_on

Channel = RTCDataChannel
"""A data channel: ``label``, ``readyState``, ``bufferedAmount``, ``send``, ``close``,
and the events ``open``, ``message``, ``close``, ``bufferedamountlow``."""


@dataclass(frozen=True)
class PathInfo:
    """The candidate pair ICE selected."""

    path: str
    """``direct`` or ``relay``."""
    local_type: str
    remote_type: str
    local_addr: str
    remote_addr: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "local_candidate": self.local_type,
                "remote_candidate": self.remote_type, "local_addr": self.local_addr,
                "remote_addr": self.remote_addr}


UNKNOWN = PathInfo("unknown", "?", "?", "?", "?")


def _server(server: IceServer) -> RTCIceServer:
    return RTCIceServer(urls=server.url, username=server.username, credential=server.password)


class Peer:
    """One peer connection for one attempt (see the module docstring for ``mode``)."""

    def __init__(self, plan: IcePlan, mode: str = "any", udp_ok: bool = True,
                 ice: IceSettings | None = None) -> None:
        ice = ice or IceSettings()
        gather_on(ice.host_addresses)
        turn = plan.turn(udp_ok)
        stun = plan.stun if udp_ok else None
        if mode == "relay":
            config = RTCConfiguration(iceServers=[_server(turn)] if turn else [],
                                      iceTransportPolicy=RTCIceTransportPolicy.RELAY)
        else:
            chosen = (stun,) if mode == "direct" else (stun, turn)
            config = RTCConfiguration(iceServers=[_server(s) for s in chosen if s is not None])
        self._pc = TunedPeerConnection(configuration=config, plpmtud=ice.plpmtud)

    # -- SDP ------------------------------------------------------------------------------
    async def offer(self) -> str:
        """The offer (the offerer opens ``mesh-ctl`` first: see ``control``)."""
        self.control = self._pc.createDataChannel("mesh-ctl")
        await self._pc.setLocalDescription(await self._pc.createOffer())
        return str(self._pc.localDescription.sdp)

    async def answer(self, offer_sdp: str) -> str:
        """Take an offer; return the answer. ``HandshakeError`` if the offer is unusable."""
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            await self._pc.setLocalDescription(await self._pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError & co on a bad SDP
            raise HandshakeError(f"the offer is unusable: {exc}") from exc
        return str(self._pc.localDescription.sdp)

    async def accept(self, answer_sdp: str) -> None:
        """Take the answer to our offer; ``HandshakeError`` if it is unusable."""
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        except Exception as exc:
            raise HandshakeError(f"the sharer's answer is unusable: {exc}") from exc

    # -- state ----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``new``, ``connecting``, ``connected``, ``failed`` or ``closed``."""
        return str(self._pc.connectionState)

    def on_state(self, callback: Callable[[str], None]) -> None:
        self._pc.on("connectionstatechange", lambda: callback(self.state))

    async def connected(self, timeout: float) -> None:
        """Wait until ICE and DTLS are up; ``ConnectError`` on failure or timeout."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def check() -> None:
            state = self.state
            if done.done():
                return
            if state == "connected":
                done.set_result(None)
            elif state in ("failed", "closed"):
                done.set_exception(ConnectError(
                    "could not establish a peer-to-peer path (ICE/DTLS failed)"))

        self._pc.on("connectionstatechange", check)
        check()
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError as exc:
            raise ConnectError(
                f"no peer-to-peer path within {timeout:g} s (firewall or NAT in the way?)"
            ) from exc
        finally:
            self._pc.remove_listener("connectionstatechange", check)

    def path(self) -> PathInfo:
        """The candidate pair that carries the connection."""
        sctp = self._pc.sctp
        pair = sctp.transport.transport._connection._nominated.get(1) if sctp else None
        if pair is None:
            return UNKNOWN
        local, remote = pair.local_candidate, pair.remote_candidate
        relay = "relay" in (local.type, remote.type)
        return PathInfo("relay" if relay else "direct", local.type, remote.type,
                        f"{local.host}:{local.port}", f"{remote.host}:{remote.port}")

    def watch_packet_size(self, report: Callable[[int], None]) -> None:
        """``report(size)`` now if path MTU discovery grew the packets, and on each change."""
        watch_packet_size(self._pc, report)

    # -- channels -------------------------------------------------------------------------
    def open_channel(self, label: str) -> Channel:
        return self._pc.createDataChannel(label)

    def on_channel(self, callback: Callable[[Channel], None]) -> None:
        """``callback(channel)`` for each channel the other side opens."""
        self._pc.on("datachannel", callback)

    async def close(self) -> None:
        # shielded: aiortc closes itself when DTLS ends, and its close task awaits the
        # same future ours does; a cancelled close of ours must not cancel that future
        with contextlib.suppress(Exception):
            await asyncio.shield(self._pc.close())
