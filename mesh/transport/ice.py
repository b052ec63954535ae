"""Which ICE servers a peer connection uses, and on which local addresses it gathers.

- ``ice_plan``: the STUN/TURN servers the signaling server handed us, split by
  kind (mesh's own types; the URLs are parsed by mesh/proto/names.py). A peer
  connection uses one STUN and one TURN server: TURN over UDP when the server
  answers STUN over UDP (``udp_reachable``, a 1 s probe, cached 30 s), TURN
  over TCP when it does not. Never aiortc's default public STUN server.
- ``IceConnection``: aioice's connection through its public hooks: host
  candidates only on the addresses asked for (tests on one machine gather on
  ``127.0.0.1``, which aioice leaves out by default) and every datagram that is
  not STUN handed straight to the data plane instead of aioice's queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioice

from mesh.proto.names import parse_ice_url

from .settings import IceSettings
from .stunclient import answers

__all__ = ["IceConnection", "IcePlan", "IceServer", "IceSettings", "ice_plan",
           "udp_reachable"]


@dataclass(frozen=True)
class IceServer:
    url: str
    host: str
    port: int
    transport: str | None = None
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class IcePlan:
    """The STUN/TURN servers signaling handed us, split by kind."""

    stun: IceServer | None = None
    turn_udp: IceServer | None = None
    turn_tcp: IceServer | None = None

    @property
    def stun_addr(self) -> tuple[str, int] | None:
        return (self.stun.host, self.stun.port) if self.stun else None

    @property
    def has_relay(self) -> bool:
        return self.turn_udp is not None or self.turn_tcp is not None

    def turn(self, udp_ok: bool) -> IceServer | None:
        """The relay for this network: over UDP if UDP reaches the server, else TCP."""
        if udp_ok and self.turn_udp is not None:
            return self.turn_udp
        return self.turn_tcp or self.turn_udp


def ice_plan(entries: tuple[dict[str, Any], ...]) -> IcePlan:
    stun = turn_udp = turn_tcp = None
    for entry in entries:
        urls = entry.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list):
            continue
        user, cred = entry.get("username"), entry.get("credential")
        for url in urls:
            parsed = parse_ice_url(url) if isinstance(url, str) else None
            if parsed is None:
                continue
            if parsed.scheme == "stun" and stun is None:
                stun = IceServer(url, parsed.host, parsed.port)
            elif parsed.scheme == "turn" and isinstance(user, str) and isinstance(cred, str):
                server = IceServer(url, parsed.host, parsed.port, parsed.transport, user, cred)
                if parsed.transport == "udp" and turn_udp is None:
                    turn_udp = server
                elif parsed.transport == "tcp" and turn_tcp is None:
                    turn_tcp = server
    return IcePlan(stun, turn_udp, turn_tcp)


_probe_cache: dict[tuple[str, int], tuple[float, bool]] = {}


async def udp_reachable(plan: IcePlan) -> bool:
    """Can we reach the STUN server over UDP? Cached for 30 s. True if there is none."""
    addr = plan.stun_addr
    if addr is None:
        return True
    now = time.monotonic()
    cached = _probe_cache.get(addr)
    if cached and now - cached[0] < 30:
        return cached[1]
    ok = await answers(addr)
    _probe_cache[addr] = (now, ok)
    return ok


class IceConnection(aioice.Connection):
    """An aioice connection that gathers on ``addresses`` (None: aioice's choice) and
    hands each datagram that is not STUN to ``sink``; ``on_close`` runs once when it
    closes (consent to send expired, or closed here)."""

    def __init__(self, *, addresses: tuple[str, ...] | None, sink: Callable[[bytes], None],
                 on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mesh_addresses = addresses
        self.mesh_sink = sink
        self.mesh_on_close: Callable[[], None] | None = on_close

    async def get_component_candidates(self, component: int, addresses: list[str],
                                       timeout: int = 5) -> list[aioice.Candidate]:
        if addresses and self.mesh_addresses is not None:  # none at all: relay only
            addresses = list(self.mesh_addresses)
        result: list[aioice.Candidate] = await super().get_component_candidates(
            component, addresses, timeout)
        return result

    def data_received(self, data: bytes, component: int) -> None:
        self.mesh_sink(data)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            callback, self.mesh_on_close = self.mesh_on_close, None
            if callback is not None:
                callback()
