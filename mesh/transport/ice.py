"""Which ICE servers a peer connection uses, and on which local addresses it gathers.

- ``ice_plan``: the STUN/TURN servers the signaling server handed us, split by
  kind (mesh's own types; the URLs are parsed by mesh/proto/names.py). A peer
  connection uses one STUN and one TURN server: TURN over UDP when the server
  answers STUN over UDP (``udp_reachable``, a 1 s probe, cached 30 s), TURN
  over TCP when it does not. Never aiortc's default public STUN server.
- ``IceConnection``: aioice's connection through its public hooks: host
  candidates only on the addresses asked for (tests on one machine gather on
  ``127.0.0.1``, which aioice leaves out by default) and every datagram that is
  not STUN handed straight to the data plane instead of aioice's queue. With
  ``portmap`` it asks the router to map each host socket (transport/portmap.py) and
  offers a granted mapping as one more server-reflexive candidate of its own; with
  ``prime()`` (the answering side) its first checks leave with a small TTL.

Priming: a Linux NAT that accepts unsolicited packets on its WAN side (MASQUERADE,
open INPUT) takes a peer probe that arrives before we sent anything toward that peer
as traffic for itself; the conntrack entry it makes then forces our own flow to that
peer onto another port. The answering side starts checks first, so for
``PRIME_WINDOW`` seconds its packets leave with TTL ``PRIME_TTL``: they open its own
router's mapping and die at the next hop. The offering side's full checks then find
that mapping open. The first check that arrives restores the TTL at once (and sends
our check toward its sender again, instead of on aioice's 0.5 s retransmission timer);
so does the end of the window, for every check still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioice
from aioice.candidate import candidate_foundation, candidate_priority

from mesh.proto import stun
from mesh.proto.names import parse_ice_url

from . import _private
from . import portmap as pmap
from .settings import IceSettings
from .stunclient import answers

PRIME_TTL = 2
"""Hops the answering side's first packets live: past its own router, not the peer's."""
PRIME_WINDOW = 0.3
"""Seconds the answering side's checks keep the small TTL (unless a check arrives)."""

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
                 on_close: Callable[[], None], portmap: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mesh_addresses = addresses
        self.mesh_sink = sink
        self.mesh_on_close: Callable[[], None] | None = on_close
        self.mesh_portmap = portmap
        self.mesh_mappings: list[pmap.Mapper] = []
        self._mesh_primed: list[tuple[Any, int]] = []
        """(socket, its TTL before priming) while the small TTL is on."""
        self._mesh_primed_protocols: list[Any] = []

    async def get_component_candidates(self, component: int, addresses: list[str],
                                       timeout: int = 5) -> list[aioice.Candidate]:
        if addresses and self.mesh_addresses is not None:  # none at all: relay only
            addresses = list(self.mesh_addresses)
        found = pmap.route(tuple(addresses)) if self.mesh_portmap and addresses else None
        if found is not None:
            pmap.warm(found=found)
        result: list[aioice.Candidate] = await super().get_component_candidates(
            component, addresses, timeout)
        if found is not None and pmap.router_protocol(found[0]):
            result += await self._mapped(*found, component, result)
        return result

    async def _mapped(self, gw: str, client: str, component: int,
                      have: list[aioice.Candidate]) -> list[aioice.Candidate]:
        """A candidate for each host socket the router maps (waiting ``GRANT_WAIT`` at
        most); the mappings live until the connection closes."""
        for host, port, _transport in _private.host_sockets(self):
            if host == client:
                mapping = await pmap.start_mapping(gw, host, port)
                if mapping is not None:
                    self.mesh_mappings.append(mapping)
        out = []
        known = {(c.host, c.port) for c in have}
        for mapping in self.mesh_mappings:
            external = await mapping.wait(pmap.GRANT_WAIT)
            if external is None or external in known:
                continue
            out.append(aioice.Candidate(
                foundation=candidate_foundation("srflx", "udp", f"portmap {mapping.client_ip}"),
                component=component, transport="udp",
                priority=candidate_priority(component, "srflx"), host=external[0],
                port=external[1], type="srflx", related_address=mapping.client_ip,
                related_port=mapping.port))
        return out

    @property
    def mapped_address(self) -> str | None:
        """The router mapping this connection offers, ``ip:port``, if any."""
        for mapping in self.mesh_mappings:
            if mapping.external is not None:
                return f"{mapping.external[0]}:{mapping.external[1]}"
        return None

    def prime(self) -> None:
        """Open our own router's mappings toward every peer address without reaching
        the peer's router (see the module docstring)."""
        remotes = [(c.host, c.port) for c in self.remote_candidates
                   if c.type != "relay" and _ipv4(c.host)]
        for host, _port, transport in _private.host_sockets(self):
            sock = transport.get_extra_info("socket")
            if not _ipv4(host) or sock is None:
                continue
            with contextlib.suppress(OSError):
                old = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, PRIME_TTL)
                self._mesh_primed.append((sock, old))
                self._mesh_primed_protocols.append(transport.get_protocol())
                indication = stun.Message(stun.BINDING, stun.INDICATION,
                                          secrets.token_bytes(12)).encode()
                for addr in remotes:
                    transport.sendto(indication, addr)
        if self._mesh_primed:
            asyncio.get_running_loop().call_later(PRIME_WINDOW, self._window_over)

    def _window_over(self) -> None:
        """Full TTL again; every check still in flight leaves again at once (the ones
        sent in the window died one hop out, and aioice retransmits only after 0.5 s)."""
        protocols = self._mesh_primed_protocols if self._mesh_primed else []
        self._unprime()
        if _private.checking(self):
            for protocol in protocols:
                _private.recheck(self, protocol, None)

    def _unprime(self) -> None:
        primed, self._mesh_primed, self._mesh_primed_protocols = self._mesh_primed, [], []
        for sock, ttl in primed:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)

    def request_received(self, message: Any, addr: tuple[str, int], protocol: Any) -> None:
        primed = bool(self._mesh_primed)
        if primed:  # the peer reached us: answers and checks go all the way
            self._unprime()
        super().request_received(message, addr, protocol)
        if primed and _private.checking(self):  # our check there left with TTL 2: again
            _private.recheck(self, protocol, addr)

    def data_received(self, data: bytes, component: int) -> None:
        self.mesh_sink(data)

    async def close(self) -> None:
        mappings, self.mesh_mappings = self.mesh_mappings, []
        if mappings:
            await asyncio.gather(*(m.aclose() for m in mappings))
        try:
            await super().close()
        finally:
            callback, self.mesh_on_close = self.mesh_on_close, None
            if callback is not None:
                callback()


def _ipv4(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return False
