"""Router port mapping for ICE sockets: the asyncio glue around mesh/proto/portmap.py.

``RouterMapping`` asks the IPv4 default gateway (read from ``/proc/net/route``) for a
UDP mapping of one local port, PCP first and NAT-PMP second (the ``Lease`` machine),
from a socket of its own on port 5351's far side: the router's answers never reach the
ICE socket. It keeps the mapping refreshed at half its lifetime and releases it
(lifetime 0) on ``close``. For NAT-PMP, whose MAP answer carries no address, it asks
the router's external address once. A datagram that is not a valid answer to our
request is counted and dropped (``PortmapError``): anyone on the LAN can send one.

UPnP-IGD (transport/upnp.py) is the third choice, for a router that answers neither.

``probe(gw)`` asks all three at once and releases what it got: what the router offers
(``mesh netcheck`` reports it). ``warm()`` runs it once, in the background, at process
start; ``router_protocol(gw)`` is then the protocol this process maps with, or None
(the router maps with none, or was not asked yet). An ICE gathering asks for a mapping
(``start_mapping``) only when that protocol is known, and waits ``GRANT_WAIT`` seconds
at most: a router that never answers, or answers garbage, delays no connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from mesh.proto import portmap as pm

if TYPE_CHECKING:  # loaded on first use: async-upnp-client brings aiohttp.web, which
    from .upnp import UpnpMapping  # `mesh connect` does not load at start

log = logging.getLogger("mesh.portmap")

ROUTES = Path("/proc/net/route")
GRANT_WAIT = 0.25
"""Seconds a gathering waits for a router known to map (it answers in milliseconds)."""
LIFETIME = 1200
"""Seconds asked for; refreshed at half, so a crashed process leaves 20 minutes at most."""
RECHECK = 300.0
"""A router that did not map is asked again after this many seconds."""

_known: dict[str, tuple[float, str | None]] = {}
"""gateway -> (when, the protocol it maps with, or None)"""
_igd: dict[str, str] = {}
"""gateway -> its UPnP description URL"""
_warming: set[asyncio.Task[None]] = set()


def gateway() -> str | None:
    try:
        return pm.default_gateway(ROUTES.read_text())
    except OSError:
        return None


def router_protocol(gw: str) -> str | None:
    """How the router at ``gw`` maps (``pcp``, ``nat-pmp``, ``upnp``), if it does."""
    entry = _known.get(gw)
    return entry[1] if entry else None


def _stale(gw: str) -> bool:
    entry = _known.get(gw)
    return entry is None or (entry[1] is None and time.monotonic() - entry[0] > RECHECK)


def source_address(gw: str) -> str | None:
    """The local address the router sees us from (a connected UDP socket's name)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((gw, pm.PCP_PORT))
            return str(sock.getsockname()[0])
        except OSError:
            return None


class _Answers(asyncio.DatagramProtocol):
    def __init__(self, owner: RouterMapping) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner.received(data)


class RouterMapping:
    """One UDP mapping of ``port`` on ``client_ip`` at the router ``gw``."""

    def __init__(self, gw: str, client_ip: str, port: int, lifetime: int = LIFETIME,
                 protocols: tuple[str, ...] = ("pcp", "nat-pmp")) -> None:
        self.gateway, self.client_ip, self.port, self.lifetime = gw, client_ip, port, lifetime
        self.protocols = protocols
        self.mapping: pm.Mapping | None = None
        self.external: tuple[str, int] | None = None
        self.reason: str | None = None
        self.dropped = 0
        """Datagrams that were not a valid answer (counted, then ignored)."""
        self.settled = asyncio.Event()
        self._lease: pm.Lease | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Answers(self), local_addr=(self.client_ip, 0),
                remote_addr=(self.gateway, pm.PCP_PORT))
        except OSError as exc:
            self._settle(None, f"cannot reach the router: {exc}")
            return
        self._transport = transport
        self._lease = pm.Lease(self.client_ip, self.port, secrets.token_bytes(12), loop.time(),
                               lifetime=self.lifetime, protocols=self.protocols)
        self._task = asyncio.create_task(self._drive())

    async def wait(self, timeout: float) -> tuple[str, int] | None:
        """The mapped (external address, port) once granted, within ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), timeout)
        return self.external

    def _settle(self, external: tuple[str, int] | None, reason: str | None) -> None:
        self.external, self.reason = external, reason
        self.settled.set()

    async def _drive(self) -> None:
        lease, loop = self._lease, asyncio.get_running_loop()
        assert lease is not None
        while True:
            self._flush()
            deadline = lease.timer()
            if deadline is None:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - loop.time()))
            self._wake.clear()
            lease.on_timer(loop.time())

    def _flush(self) -> None:
        assert self._lease is not None
        for command in self._lease.commands():
            if isinstance(command, pm.Send):
                self._send(command.data)
            elif isinstance(command, pm.Granted):
                self.mapping = command.mapping
                if command.mapping.external_ip is not None:
                    self._settle((command.mapping.external_ip, command.mapping.external_port),
                                 None)
                elif self.external is None:
                    self._send(pm.natpmp_address_request())
                else:  # a NAT-PMP refresh: the address is known
                    self.external = (self.external[0], command.mapping.external_port)
            else:
                self.mapping = None
                if self.external is None:
                    self._settle(None, command.reason)
                else:
                    log.info("port mapping lost: %s", command.reason)
                    self.external = None

    def _send(self, data: bytes) -> None:
        if self._transport is not None:
            with contextlib.suppress(OSError):
                self._transport.sendto(data)

    def received(self, data: bytes) -> None:
        lease = self._lease
        if lease is None:
            return
        try:
            if len(data) == 12 and data[:2] == b"\x00\x80":  # NAT-PMP external address
                result, ip = pm.natpmp_address_response(data)
                if result == 0 and self.mapping is not None and self.external is None:
                    self._settle((ip, self.mapping.external_port), None)
                return
            lease.on_datagram(data, asyncio.get_running_loop().time())
        except pm.PortmapError as exc:
            self.dropped += 1
            log.debug("ignored a router datagram: %s", exc)
            return
        self._flush()
        self._wake.set()

    def close(self) -> None:
        """Release the mapping (best effort: one datagram) and stop refreshing it."""
        if self._lease is not None:
            release = self._lease.release()
            if release is not None:
                self._send(release)
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.close()
        self._transport = None

    async def aclose(self) -> None:
        self.close()


Mapper: TypeAlias = "RouterMapping | UpnpMapping"


async def start_mapping(gw: str, client_ip: str, port: int) -> Mapper | None:
    """Ask the router to map ``port`` with the protocol it is known to map with."""
    protocol = router_protocol(gw)
    mapper: Mapper
    if protocol == "upnp" and gw in _igd:
        from .upnp import UpnpMapping

        mapper = UpnpMapping(_igd[gw], client_ip, port)
    elif protocol in ("pcp", "nat-pmp"):
        mapper = RouterMapping(gw, client_ip, port)
    else:
        return None
    await mapper.start()
    return mapper


@dataclass(frozen=True)
class RouterReport:
    """What a router offers: each protocol that granted a mapping, and that mapping."""

    gateway: str
    pcp: bool
    nat_pmp: bool
    upnp: bool
    mapped: str | None
    """``ip:port`` of the mapping granted (released again), if any."""
    protocol: str | None
    """The protocol mesh maps with: the first that worked of PCP, NAT-PMP, UPnP."""

    def as_dict(self) -> dict[str, object]:
        return {"gateway": self.gateway, "pcp": self.pcp, "nat_pmp": self.nat_pmp,
                "upnp": self.upnp, "mapped": self.mapped, "protocol": self.protocol}


async def _try(mapper: Mapper, timeout: float, gw: str, protocol: str
               ) -> tuple[str, int] | None:
    """Map, then release; the first protocol that maps is known at once (a connection
    arriving while the slower ones are still asked uses it)."""
    await mapper.start()
    try:
        got = await mapper.wait(timeout)
    finally:
        await mapper.aclose()
    if got is not None and router_protocol(gw) is None:
        _known[gw] = (time.monotonic(), protocol)
    return got


def route(addresses: tuple[str, ...] | None) -> tuple[str, str] | None:
    """(the default gateway, our address toward it), if ICE gathers on that address
    (``addresses`` None: on every address). A process held to loopback never talks
    to the router."""
    gw = gateway()
    client = source_address(gw) if gw is not None else None
    if gw is None or client is None or (addresses is not None and client not in addresses):
        return None
    return gw, client


async def probe(gw: str, client: str | None = None) -> RouterReport | None:
    """Map a throwaway port of ``client`` (default: our address toward ``gw``) with each
    protocol at once, release each: what the router offers. Takes 3 s at most (SSDP
    discovery 1.2 s of it); records what it learnt."""
    client = client or source_address(gw)
    if client is None:
        return None
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(3):  # a throwaway port per protocol: no mapping replaces another
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((client, 0))
            ports.append(sock.getsockname()[1])

        async def by_upnp() -> tuple[str, int] | None:
            from . import upnp

            location = await upnp.discover(gw, client)
            if location is None:
                return None
            _igd[gw] = location
            return await _try(upnp.UpnpMapping(location, client, ports[2], lifetime=60), 1.5,
                              gw, "upnp")

        pcp, natpmp, by_igd = await asyncio.gather(
            _try(RouterMapping(gw, client, ports[0], 60, ("pcp",)), 1.5, gw, "pcp"),
            _try(RouterMapping(gw, client, ports[1], 60, ("nat-pmp",)), 1.5, gw, "nat-pmp"),
            by_upnp())
    protocol = ("pcp" if pcp else "nat-pmp" if natpmp else "upnp" if by_igd else None)
    mapped = pcp or natpmp or by_igd
    _known[gw] = (time.monotonic(), protocol)
    return RouterReport(gw, pcp is not None, natpmp is not None, by_igd is not None,
                        f"{mapped[0]}:{mapped[1]}" if mapped else None, protocol)


def warm(addresses: tuple[str, ...] | None = None,
         found: tuple[str, str] | None = None) -> None:
    """Learn, in the background, how the router maps ports (once per process, again
    after ``RECHECK`` seconds if it did not); ``found``: the ``route()`` already known."""
    found = found or route(addresses)
    if found is None or not _stale(found[0]) or _warming:
        return
    task = asyncio.get_running_loop().create_task(_warm(*found))
    _warming.add(task)
    task.add_done_callback(_warming.discard)


async def _warm(gw: str, client: str) -> None:
    if await probe(gw, client) is None:
        _known[gw] = (time.monotonic(), None)
