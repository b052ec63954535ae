"""UDP flows over a ``udp`` data channel: the asyncio glue of mesh/proto/datagram.py.

- ``ConnectorUdp``: the local UDP socket of ``mesh connect``. Each client
  address is a flow; its datagrams go out as DATA frames on the current peer
  connection's ``udp`` channel, and the replies come back to that address.
- ``SharerUdp``: one per admitted peer of a UDP share. Each flow gets its own
  connected socket toward the service (so the service sees distinct clients),
  opened on the flow's first datagram.

Sockets are read by the loop in batches of up to ``BATCH`` datagrams per
wake-up (asyncio's datagram transport reads one per turn of the loop).

Datagrams are never queued behind a slow path: when the channel already holds
``QUEUE_MAX`` bytes unsent, or there is no open channel, the datagram is dropped
and counted, as a router would; one flow's traffic never waits for another's.
Frames travel on an unordered channel with no retransmission (``open_channel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

from mesh.proto import datagram as dg

from .channel import Channel, ChannelClosedError

log = logging.getLogger("mesh.udp")

QUEUE_MAX = 256 * 1024
"""Bytes a ``udp`` channel may hold unsent before datagrams are dropped instead."""
BATCH = 64
"""Datagrams read from one socket per wake-up of the loop."""
RCVBUF = 1 << 20
"""Receive buffer asked for on every socket (the kernel caps it at rmem_max)."""

Warn = Callable[[str], None]


def open_channel(peer: Any) -> Channel:
    """The connector's ``udp`` channel on ``peer``: unordered, never retransmitted."""
    channel: Channel = peer.open_channel("udp", ordered=False, max_retransmits=0)
    return channel


class _Flows:
    """A flow table, its counters, its idle timer and the channel frames go out on."""

    def __init__(self, idle: float, max_flows: int, warn: Warn) -> None:
        self.counters = dg.UdpCounters()
        self.table: dg.FlowTable[Any, Any] = dg.FlowTable(idle, max_flows, self.counters)
        self.warn = warn
        self.channel: Channel | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def snapshot(self) -> dict[str, object]:
        return self.counters.as_dict(len(self.table))

    def attach(self, channel: Channel) -> None:
        """Send on ``channel`` from now on and take the frames that arrive on it."""
        channel.on("message", self._on_message)
        self.channel = channel

    def send(self, frame: bytes, size: int) -> bool:
        """Put ``frame`` on the channel, or drop it (counted); True if sent."""
        channel = self.channel
        if channel is None or channel.readyState != "open":
            self.counters.drop(True, "no path")
            return False
        if channel.bufferedAmount > QUEUE_MAX:
            self.counters.drop(True, "queue full")
            return False
        try:
            channel.send(frame)
        except ChannelClosedError:
            self.counters.drop(True, "no path")
            return False
        except ValueError:
            self.counters.drop(True, "over the message limit")
            return False
        self.counters.datagrams_out += 1
        self.counters.bytes_out += size
        return True

    def arm(self) -> None:
        if self._timer is None and (when := self.table.deadline()) is not None:
            self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        for entry in self.table.expire(self._loop.time()):
            self.ended(entry)
            self.send_close(entry.flow, dg.IDLE)
        self.arm()

    def send_close(self, flow: int, reason: int) -> None:
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            with contextlib.suppress(ChannelClosedError, ValueError):
                channel.send(dg.encode_close(flow, reason))

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for entry in self.table:
            self.table.remove(entry)
            self.ended(entry)

    def _on_message(self, message: bytes | str) -> None:
        try:
            frame = dg.decode(message)
        except dg.DatagramError as exc:
            log.debug("udp: %s", exc)
            self.counters.drop(False, "malformed")
            return
        self.frame(frame)

    # -- per side ---------------------------------------------------------------------
    def frame(self, frame: dg.Data | dg.Close) -> None:
        raise NotImplementedError

    def ended(self, entry: dg.Flow[Any, Any]) -> None:
        """``entry`` left the table (idle, closed by the peer, or stop)."""


class _Socket:
    """A non-blocking UDP socket the loop reads in batches."""

    def __init__(self, sock: socket.socket, on_datagram: Callable[[bytes, Any], None],
                 on_error: Callable[[OSError], None]) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock = sock
        self._on_datagram = on_datagram
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._read)
        self.closed = False

    def _read(self) -> None:
        recvfrom, deliver = self.sock.recvfrom, self._on_datagram
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable, on a connected socket
                self._on_error(exc)
                return
            deliver(data, addr)
            if self.closed:
                return

    def send(self, data: bytes, addr: Any = None) -> bool:
        try:
            if addr is None:
                self.sock.send(data)
            else:
                self.sock.sendto(data, addr)
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):
                self._on_error(exc)
            return False
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


class ConnectorUdp(_Flows):
    """``mesh connect``'s UDP listener: client addresses are flows."""

    def __init__(self, idle: float, max_flows: int, warn: Warn) -> None:
        super().__init__(idle, max_flows, warn)
        self.socket: _Socket | None = None

    async def listen(self, host: str, port: int) -> int:
        """Bind ``host:port`` (OSError as the socket gives it); the port bound."""
        infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.bind(addr)
        except OSError:
            sock.close()
            raise
        self.socket = _Socket(sock, self._from_client, self._client_error)
        return int(sock.getsockname()[1])

    def close(self) -> None:
        self.stop()
        if self.socket is not None:
            self.socket.close()

    def _from_client(self, data: bytes, addr: Any) -> None:
        now = self._loop.time()
        entry = self.table.get(addr)
        if entry is None:
            entry = self.table.open(addr, None, now)
            if entry is None:
                self.counters.drop(True, "too many flows")
                self.warn(f"too many UDP clients at once (--max-flows "
                          f"{self.table.max_flows}); dropping datagrams of new ones")
                return
            self.arm()
        else:
            self.table.touch(entry, now)
        self.send(dg.encode_data(entry.flow, data), len(data))

    def _client_error(self, exc: OSError) -> None:
        log.debug("udp listener: %r", exc)  # a client went away (ICMP): its flow idles out

    def frame(self, frame: dg.Data | dg.Close) -> None:
        entry = self.table.by_flow(frame.flow)
        if entry is None or self.socket is None:
            self.counters.drop(False, "unknown flow")
            return
        if isinstance(frame, dg.Close):
            self.table.remove(entry)
            if frame.reason == dg.REFUSED:
                self.counters.flows_refused += 1
            if frame.reason != dg.IDLE:
                self.warn(f"the sharer ended a UDP flow: {frame.why}")
            return
        self.table.touch(entry, self._loop.time())
        if self.socket.send(frame.payload, entry.key):
            self.counters.datagrams_in += 1
            self.counters.bytes_in += len(frame.payload)
        else:
            self.counters.drop(False, "local socket full")


class SharerUdp(_Flows):
    """One admitted peer's UDP flows toward ``host:port``: a connected socket each."""

    def __init__(self, host: str, port: int, idle: float, max_flows: int, warn: Warn) -> None:
        super().__init__(idle, max_flows, warn)
        self.host, self.port = host, port
        self._service: tuple[int, Any] | None = None
        """(family, address) of the service, resolved once, before the first datagram
        when it can be (an address literal at once; a name as the channel opens)."""
        self._resolving: list[dg.Data] = []
        self._task: asyncio.Task[None] | None = None
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            self._start_resolving()
        else:
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            self._service = (family, (host, port))

    def close(self) -> None:
        self.stop()
        if self._task is not None:
            self._task.cancel()

    def frame(self, frame: dg.Data | dg.Close) -> None:
        entry = self.table.by_flow(frame.flow)
        if isinstance(frame, dg.Close):
            if entry is not None:
                self.table.remove(entry)
                self.ended(entry)
            return
        if self._service is None:  # datagrams wait for the lookup, a few
            if len(self._resolving) < BATCH:
                self._resolving.append(frame)
            else:
                self.counters.drop(False, "resolving the service")
            self._start_resolving()
            return
        now = self._loop.time()
        if entry is None:
            entry = self._open(frame.flow, now)
            if entry is None:
                return
        else:
            self.table.touch(entry, now)
        if entry.value.send(frame.payload):
            self.counters.datagrams_in += 1
            self.counters.bytes_in += len(frame.payload)
        else:
            self.counters.drop(False, "service socket full")

    def _start_resolving(self) -> None:
        """Look the service's address up, once at a time."""
        if self._task is not None:
            return

        async def resolve() -> None:
            try:
                infos = await self._loop.getaddrinfo(self.host, self.port,
                                                     type=socket.SOCK_DGRAM)
            except OSError as exc:
                self._task = None
                self.counters.drop(False, "service unreachable")
                self._resolving.clear()
                self.warn(f"cannot resolve {self.host}: {exc}")
                return
            self._service = (infos[0][0], infos[0][4])
            waiting, self._resolving = self._resolving, []
            for early in waiting:
                self.frame(early)

        self._task = self._loop.create_task(resolve())

    def _open(self, flow: int, now: float) -> dg.Flow[Any, Any] | None:
        assert self._service is not None
        family, address = self._service
        if len(self.table) >= self.table.max_flows:
            self.counters.flows_refused += 1
            self.counters.drop(False, "too many flows")
            self.send_close(flow, dg.REFUSED)
            self.warn(f"a peer has too many UDP flows (--max-flows {self.table.max_flows}); "
                      "refusing new ones")
            return None
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            self.counters.drop(False, "no socket")
            self.send_close(flow, dg.NO_SOCKET)
            self.warn(f"cannot open a UDP socket for a flow: {exc.strerror}")
            return None
        service = _Socket(sock, lambda data, _addr: self._reply(flow, data), self._unreachable)
        try:
            sock.connect(address)
        except OSError as exc:
            service.close()
            self.counters.drop(False, "service unreachable")
            self.send_close(flow, dg.UNREACHABLE)
            self.warn(f"cannot reach UDP {self.host}:{self.port}: {exc.strerror}")
            return None
        entry = self.table.open(flow, service, now, flow)
        assert entry is not None
        self.arm()
        return entry

    def _reply(self, flow: int, data: bytes) -> None:
        """A datagram from the service on ``flow``'s socket (a closed socket reads nothing
        more, so the flow in the table is the socket's own)."""
        entry = self.table.by_flow(flow)
        if entry is None:
            return
        self.table.touch(entry, self._loop.time())
        self.send(dg.encode_data(flow, data), len(data))

    def _unreachable(self, exc: OSError) -> None:
        """ICMP said nothing listens there: that datagram is lost; the flow stays (the
        service may be restarting), as a UDP client's socket would."""
        self.counters.drop(False, "service unreachable")
        self.warn(f"nothing answers on UDP {self.host}:{self.port} ({exc.strerror})")

    def ended(self, entry: dg.Flow[Any, Any]) -> None:
        entry.value.close()
