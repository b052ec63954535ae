"""Router port mapping for ICE sockets: the asyncio glue around mesh/proto/portmap.py.

``RouterMapping`` asks the IPv4 default gateway (read from ``/proc/net/route``) for a
UDP mapping of one local port, PCP first and NAT-PMP second (the ``Lease`` machine),
from a socket of its own on port 5351's far side: the router's answers never reach the
ICE socket. It keeps the mapping refreshed at half its lifetime and releases it
(lifetime 0) on ``close``. For NAT-PMP, whose MAP answer carries no address, it asks
the router's external address once. A datagram that is not a valid answer to our
request is counted and dropped (``PortmapError``): anyone on the LAN can send one.

``router_known(gateway)`` is what this process learnt about the router: True (it maps),
False (it does not), None (not asked yet). An ICE gathering waits for a mapping only
when the router is known to map, and then at most ``GRANT_WAIT`` seconds: a router that
never answers, or answers garbage, delays no connection. ``warm()`` asks once, in the
background, at process start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from pathlib import Path

from mesh.proto import portmap as pm

log = logging.getLogger("mesh.portmap")

ROUTES = Path("/proc/net/route")
GRANT_WAIT = 0.25
"""Seconds a gathering waits for a router known to map (it answers in milliseconds)."""
LIFETIME = 1200
"""Seconds asked for; refreshed at half, so a crashed process leaves 20 minutes at most."""
RECHECK = 300.0
"""A router that did not map is asked again after this many seconds."""

_known: dict[str, tuple[float, bool]] = {}
_warming: set[asyncio.Task[None]] = set()


def gateway() -> str | None:
    try:
        return pm.default_gateway(ROUTES.read_text())
    except OSError:
        return None


def router_known(gw: str) -> bool | None:
    entry = _known.get(gw)
    if entry is None or (not entry[1] and time.monotonic() - entry[0] > RECHECK):
        return None
    return entry[1]


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

    def __init__(self, gw: str, client_ip: str, port: int, lifetime: int = LIFETIME) -> None:
        self.gateway, self.client_ip, self.port, self.lifetime = gw, client_ip, port, lifetime
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
                               lifetime=self.lifetime)
        self._task = asyncio.create_task(self._drive())

    async def wait(self, timeout: float) -> tuple[str, int] | None:
        """The mapped (external address, port) once granted, within ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), timeout)
        return self.external

    def _settle(self, external: tuple[str, int] | None, reason: str | None) -> None:
        self.external, self.reason = external, reason
        _known[self.gateway] = (time.monotonic(), external is not None)
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


async def probe(gw: str, timeout: float = 1.5) -> RouterMapping | None:
    """Map a throwaway port and release it: what the router offers (netcheck, warm)."""
    client = source_address(gw)
    if client is None:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((client, 0))
        mapping = RouterMapping(gw, client, sock.getsockname()[1], lifetime=60)
        await mapping.start()
        await mapping.wait(timeout)
        mapping.close()
    return mapping


def usable(gw: str, addresses: tuple[str, ...] | None) -> bool:
    """Whether ICE gathers on the address we reach ``gw`` from (``addresses`` None: on
    every address). A process held to loopback never talks to the router."""
    return addresses is None or source_address(gw) in addresses


def warm(addresses: tuple[str, ...] | None = None) -> None:
    """Learn, in the background, whether the router maps ports (once per process)."""
    gw = gateway()
    if gw is None or gw in _known or _warming or not usable(gw, addresses):
        return
    task = asyncio.get_running_loop().create_task(_warm(gw))
    _warming.add(task)
    task.add_done_callback(_warming.discard)


async def _warm(gw: str) -> None:
    result = await probe(gw)
    if result is None or not result.settled.is_set():
        _known[gw] = (time.monotonic(), False)
