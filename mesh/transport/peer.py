"""aiortc glue: build peer connections, wait for them, report the path taken.

Owns everything that touches RTCPeerConnection directly so the rest of mesh
sees mesh types and ``MeshError``s:

- ``ice_plan``/``make_pc``: a peer connection with exactly the ICE servers
  the signaling server handed us (never aiortc's default public STUN server),
  all candidate types or relay only; aiortc uses one STUN and one TURN URL,
  so we choose: TURN over UDP when the server answers STUN over UDP
  (``udp_reachable``, a 1 s probe), TURN over TCP when it does not;
- host candidate addresses: ``IceSettings.host_addresses`` limits the local
  addresses ICE gathers on, e.g. ``127.0.0.1`` for tests on one machine
  (aioice leaves loopback out by default);
- ``wait_connected``: a bounded wait for ICE + DTLS + SCTP;
- ``path_info``: which candidate pair ICE selected (direct or relay).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcicetransport import parse_stun_turn_uri

from mesh.errors import ConnectError

from .fastpath import TunedPeerConnection
from .stunclient import answers


@dataclass(frozen=True)
class IceSettings:
    """What the transport takes from the environment (mesh/node/environ.py)."""

    host_addresses: tuple[str, ...] | None = None
    """Local addresses to gather host candidates on; None: aioice's choice (all
    but loopback)."""
    plpmtud: bool = True
    """Path MTU discovery (RFC 8899) with peers that announce it."""


_stock_get_host_addresses = aioice.ice.get_host_addresses
_host_addresses_wanted: tuple[str, ...] | None = None


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _host_addresses_wanted is None:
        return list(_stock_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
    return list(_host_addresses_wanted)


aioice.ice.get_host_addresses = _host_addresses


def gather_on(addresses: tuple[str, ...] | None) -> None:
    """Host candidates on ``addresses`` only (None: aioice's choice), process-wide:
    aioice takes no per-connection setting, so ``make_pc`` sets this for its own."""
    global _host_addresses_wanted
    _host_addresses_wanted = addresses


@dataclass(frozen=True)
class IcePlan:
    """The STUN/TURN servers signaling handed us, split by kind."""

    stun: RTCIceServer | None = None
    stun_addr: tuple[str, int] | None = None
    turn_udp: RTCIceServer | None = None
    turn_tcp: RTCIceServer | None = None

    @property
    def has_relay(self) -> bool:
        return self.turn_udp is not None or self.turn_tcp is not None


def ice_plan(entries: tuple[dict[str, Any], ...]) -> IcePlan:
    stun = stun_addr = turn_udp = turn_tcp = None
    for entry in entries:
        urls = entry.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list):
            continue
        user, cred = entry.get("username"), entry.get("credential")
        for url in urls:
            if not isinstance(url, str):
                continue
            try:
                parsed = parse_stun_turn_uri(url)
            except ValueError:
                continue
            if parsed["scheme"] == "stun" and stun is None:
                stun = RTCIceServer(urls=url)
                stun_addr = (str(parsed["host"]).strip("[]"), int(parsed["port"]))
            elif parsed["scheme"] == "turn" and isinstance(user, str) and isinstance(cred, str):
                server = RTCIceServer(urls=url, username=user, credential=cred)
                if parsed["transport"] == "udp" and turn_udp is None:
                    turn_udp = server
                elif parsed["transport"] == "tcp" and turn_tcp is None:
                    turn_tcp = server
    return IcePlan(stun, stun_addr, turn_udp, turn_tcp)


def make_pc(plan: IcePlan, mode: str = "any", udp_ok: bool = True,
            ice: IceSettings = IceSettings()) -> RTCPeerConnection:
    """A peer connection for one attempt.

    ``direct``: host and server-reflexive candidates only (so ICE cannot settle
    on a relay pair while a direct one is still being punched); ``relay``:
    relay candidates only; ``any``: everything (the sharer's answer to a relay
    attempt, so relay-to-reflexive pairs are possible). Without UDP to the
    server, STUN is pointless and TURN goes over TCP.
    """
    gather_on(ice.host_addresses)
    turn = plan.turn_udp if udp_ok and plan.turn_udp else plan.turn_tcp or plan.turn_udp
    stun = plan.stun if udp_ok else None
    if mode == "relay":
        servers = [turn] if turn else []
        return TunedPeerConnection(configuration=RTCConfiguration(
            iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY),
            plpmtud=ice.plpmtud)
    chosen = (stun,) if mode == "direct" else (stun, turn)
    return TunedPeerConnection(configuration=RTCConfiguration(
        iceServers=[x for x in chosen if x is not None]), plpmtud=ice.plpmtud)


_probe_cache: dict[tuple[str, int], tuple[float, bool]] = {}


async def udp_reachable(plan: IcePlan) -> bool:
    """Can we reach the STUN server over UDP? Cached for 30 s. True if there is none."""
    if plan.stun_addr is None:
        return True
    now = time.monotonic()
    cached = _probe_cache.get(plan.stun_addr)
    if cached and now - cached[0] < 30:
        return cached[1]
    ok = await answers(plan.stun_addr)
    _probe_cache[plan.stun_addr] = (now, ok)
    return ok


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


def path_info(pc: RTCPeerConnection) -> PathInfo:
    sctp = pc.sctp
    pair = sctp.transport.transport._connection._nominated.get(1) if sctp else None
    if pair is None:
        return PathInfo("unknown", "?", "?", "?", "?")
    local, remote = pair.local_candidate, pair.remote_candidate
    relay = "relay" in (local.type, remote.type)
    return PathInfo("relay" if relay else "direct", local.type, remote.type,
                    f"{local.host}:{local.port}", f"{remote.host}:{remote.port}")


async def wait_connected(pc: RTCPeerConnection, timeout: float) -> None:
    """Wait until ICE and DTLS are up; ConnectError on failure or timeout."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def check() -> None:
        state = pc.connectionState
        if done.done():
            return
        if state == "connected":
            done.set_result(None)
        elif state in ("failed", "closed"):
            done.set_exception(ConnectError(
                "could not establish a peer-to-peer path (ICE/DTLS failed)"))

    pc.on("connectionstatechange", check)
    check()
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError as exc:
        raise ConnectError(
            f"no peer-to-peer path within {timeout:g} s (firewall or NAT in the way?)"
        ) from exc
    finally:
        pc.remove_listener("connectionstatechange", check)
