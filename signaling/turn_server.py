"""asyncio glue for the embedded STUN/TURN server (core: turn.py).

Listens on UDP and TCP ``port`` (default 3478) and, for NAT mapping tests
(``mesh netcheck``), answers STUN Binding on UDP ``port + 1`` too. Each
allocation gets a UDP relay socket on ``relay_host``. One periodic timer
expires allocations, permissions and channels. Relayed datagrams leave with
DF set (sockopt.py), so a datagram too large for a leg is dropped
rather than fragmented: a peer's path MTU probe through the relay then
measures the whole path.

Every UDP socket is read in batches (``_Drain``): each readiness drains the
socket until it would block and the core's outputs for the whole batch are
dispatched together. asyncio's datagram transport hands over one datagram per
event-loop turn, which made the relay, not the peers, the limit of a relayed
path. A relayed datagram the kernel cannot take at once is dropped, as a
router would.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from mesh.errors import AddressInUse
from mesh.proto import sockopt, stun
from mesh.proto.limits import ConnectionCounter

from .policy import RelayPolicy
from .turn import ClientKey, Output, Release, ToClient, ToPeer, TurnConfig, TurnCore

log = logging.getLogger("mesh.turn")

@contextlib.contextmanager
def _naming(host: str, port: int, proto: str) -> Iterator[None]:
    """Turn "address in use" into an error that names the address and the flag."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
        raise AddressInUse(f"the STUN/TURN port {host}:{port}/{proto} is taken; use "
                           "--stun-port (0 picks a free one) or --no-turn") from exc


BATCH = 256
"""Datagrams read per readiness at most (then other sockets get their turn)."""


class _Drain:
    """Reads one UDP socket until it would block, per readiness; one dispatch per batch."""

    def __init__(self, sock: socket.socket, server: TurnServer,
                 handle: Callable[[bytes, tuple[str, int], float], list[Output]]) -> None:
        self.sock = sock
        self._server = server
        self._handle = handle
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._read)

    def _read(self) -> None:
        sock, handle = self.sock, self._handle
        now = time.time()
        out: list[Output] = []
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # an ICMP error surfacing on the socket
            out += handle(data, (addr[0], addr[1]), now)
        if out:
            self._server.dispatch(out)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: TurnServer, name: str = "udp") -> None:
        self.server = server
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.drain: _Drain | None = None

    def take_over(self) -> None:
        """Read in batches from here on (a duplicate descriptor: asyncio's stays its)."""
        assert self.transport is not None
        raw = self.transport.get_extra_info("socket")
        sock = socket.socket(raw.family, socket.SOCK_DGRAM, fileno=os.dup(raw.fileno()))
        sock.setblocking(False)
        cast(Any, self.transport).pause_reading()  # (a selector transport has it)
        core, name = self.server.core, self.name
        self.drain = _Drain(sock, self.server,
                            lambda data, addr, now: core.from_client((name, addr), data, now))

    def close(self) -> None:
        if self.drain is not None:
            self.drain.close()
            self.drain = None
        if self.transport is not None:
            self.transport.close()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.server.dispatch(self.server.core.from_client((self.name, (addr[0], addr[1])),
                                                          data, time.time()))

    def error_received(self, exc: Exception) -> None:
        pass


class TurnServer:
    """STUN + TURN over UDP and TCP around one ``TurnCore``."""

    def __init__(self, config: TurnConfig, policy: RelayPolicy, host: str, port: int,
                 relay_host: str, *, tcp_per_address: int = 16, tcp_total: int = 1024,
                 tcp_allocate_within: float = 10.0, tcp_idle_check: float = 60.0) -> None:
        self.config = config
        self.tcp_per_address = tcp_per_address
        """TURN-over-TCP connections one IP address may hold open."""
        self.tcp_total = tcp_total
        self.tcp_allocate_within = tcp_allocate_within
        """Seconds a TCP client has to hold an allocation (authenticated) before it
        is closed; one whose allocation has gone is closed at the next idle check."""
        self.tcp_idle_check = tcp_idle_check
        self._tcp_conns = ConnectionCounter(tcp_per_address)
        """TURN-over-TCP connections per client address."""
        self.host, self.port, self.relay_host = host, port, relay_host
        self.core = TurnCore(config, policy, self._bind_relay)
        self._udp: _Udp | None = None
        self._alt: _Udp | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_clients: dict[str, asyncio.StreamWriter] = {}
        self._relays: dict[int, _Drain] = {}
        self._ids = itertools.count(1)
        self._timer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # UDP and TCP share one port number. With port 0 the kernel picks a free UDP
        # port, whose number may be taken on TCP (an ephemeral connection): try again.
        wanted = self.port
        for attempt in range(20):
            try:
                await self._bind(wanted)
                break
            except (OSError, AddressInUse):
                await self._unbind()
                if wanted != 0 or attempt == 19:
                    raise
        self._timer = asyncio.create_task(self._tick())

    async def _bind(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        with _naming(self.host, port, "udp"):
            _, self._udp = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, port))
        assert self._udp.transport is not None
        self.port = self._udp.transport.get_extra_info("sockname")[1]
        self.core.service_ports = {self.port, self.port + 1}
        sockopt.prepare_datagram_socket(self._udp.transport.get_extra_info("socket"))
        self._udp.take_over()
        # the second port only lets `mesh netcheck` tell cone from symmetric NAT
        with contextlib.suppress(OSError):
            _, self._alt = await loop.create_datagram_endpoint(
                lambda: _Udp(self, "udp-alt"), local_addr=(self.host, self.port + 1))
        with _naming(self.host, self.port, "tcp"):
            self._tcp = await asyncio.start_server(self._on_tcp, self.host, self.port)

    async def _unbind(self) -> None:
        for proto in (self._udp, self._alt):
            if proto:
                proto.close()
        self._udp = self._alt = None

    async def stop(self) -> None:
        if self._timer:
            self._timer.cancel()
        for proto in (self._udp, self._alt):
            if proto:
                proto.close()
        if self._tcp:
            self._tcp.close()
        for w in list(self._tcp_clients.values()):
            w.close()
        for drain in self._relays.values():
            drain.close()
        self._relays.clear()

    @property
    def alt_port(self) -> int | None:
        return self.port + 1 if self._alt else None

    def _bind_relay(self) -> int | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.relay_host, 0))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        sockopt.prepare_datagram_socket(sock)
        port = int(sock.getsockname()[1])
        core = self.core
        self._relays[port] = _Drain(
            sock, self, lambda data, addr, now: core.from_peer(port, addr, data, now))
        return port

    def dispatch(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, ToClient):
                transport, addr = out.client
                if transport in ("udp", "udp-alt"):
                    proto = self._udp if transport == "udp" else self._alt
                    if proto and proto.transport:
                        proto.transport.sendto(out.data, addr)
                else:
                    writer = self._tcp_clients.get(transport)
                    if writer is not None and not writer.is_closing():
                        writer.write(out.data)
            elif isinstance(out, ToPeer):
                relay = self._relays.get(out.relay_port)
                if relay is not None:
                    with contextlib.suppress(OSError):  # a full buffer: dropped, as a router
                        relay.sock.sendto(out.data, out.peer)
            elif isinstance(out, Release):
                relay = self._relays.pop(out.relay_port, None)
                if relay is not None:
                    relay.close()

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = f"tcp:{next(self._ids)}"
        peer = writer.get_extra_info("peername")
        ip = str(peer[0])
        if len(self._tcp_clients) >= self.tcp_total or not self._tcp_conns.acquire(ip):
            writer.close()  # over the caps: closed before anything is read or held
            return
        client: ClientKey = (name, (peer[0], peer[1]))
        self._tcp_clients[name] = writer
        framer = stun.StreamFramer()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.tcp_allocate_within
        try:
            while True:
                allocated = client in self.core.allocations
                wait = self.tcp_idle_check if allocated else deadline - loop.time()
                try:
                    async with asyncio.timeout(max(0.0, wait)):
                        data = await reader.read(65536)
                except TimeoutError:
                    if allocated and client in self.core.allocations:
                        continue  # quiet, but it holds an allocation: keep it
                    break  # never authenticated in time, or its allocation is gone
                if not data:
                    break
                for frame in framer.feed(data):
                    self.dispatch(self.core.from_client(client, frame, time.time()))
                if writer.transport.get_write_buffer_size() > 1 << 20:
                    await writer.drain()
        except (stun.StunError, ConnectionError, OSError):
            pass
        finally:
            self._tcp_clients.pop(name, None)
            self._tcp_conns.release(ip)
            self.dispatch(self.core.client_gone(client))
            writer.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.dispatch(self.core.expire(time.time()))
