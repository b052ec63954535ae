# This module works on aiortc's private state (name-mangled attributes, the
# SSL object, the ICE queue), which its type hints do not describe:
# mypy: disable-error-code="attr-defined,union-attr,misc,arg-type,operator"
"""A faster data plane on aiortc's SCTP and DTLS that still speaks plain WebRTC.

Owns the tuning mesh applies to the peer connections it makes
(``TunedPeerConnection``); aiortc itself is left as shipped, so a stock
peer connection in the same process is unaffected. On the wire this is
still SCTP (RFC 9260) over DTLS (RFC 8261); a stock peer (aiortc, a
browser) interoperates. What changes, each a place the profile put the
per-packet cost:

- delayed SACK (RFC 9260 section 6.2): one SACK for every second DATA packet,
  or as soon as the receive queue runs dry; at once on a gap or a duplicate;
  a ``SACK_DELAY`` timer bounds the wait (the RFC allows 200 ms);
- transmit does not walk the whole sent queue when nothing awaits
  retransmission; the burst limit is ``MAX_BURST`` packets, not 4;
- reassembly only looks for a finished message when one can have finished
  (a last fragment, an unordered chunk or a chunk filling a gap);
- in-order arrivals skip the sort-and-filter bookkeeping of received TSNs;
- the DTLS transport takes datagrams straight off the ICE queue and, once
  the handshake is done, reads and writes whole 16 KiB records (aiortc
  stops at 1500 bytes);
- packetization-layer path MTU discovery (plpmtud.py): with a peer that
  announces it, packets grow to the largest size the path carries with DF
  set (16 KiB on loopback), congestion control counts in that size, and a
  black hole drops back to the 1189-byte base. ``IceSettings.plpmtud`` off
  (``MESH_PLPMTUD=off``) keeps the base size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    SCTP_DATA_UNORDERED,
    SCTP_TSN_MODULO,
    DataChunk,
    HeartbeatAckChunk,
    InitChunk,
    RTCSctpTransport,
    parse_packet,
)
from aiortc.utils import uint32_gt, uint32_gte
from OpenSSL import SSL

from mesh.proto import plpmtud, sockopt

log = logging.getLogger("mesh.fastpath")

SACK_EVERY = 2
SACK_DELAY = 0.02
MAX_BURST = 8
RECEIVE_WINDOW = 4 * 1024 * 1024
BLACK_HOLE_T3 = 2
"""Consecutive retransmission timeouts at a probed size that count as a black hole."""


class TunedPeerConnection(RTCPeerConnection):
    """An RTCPeerConnection whose SCTP and DTLS transports are the tuned ones."""

    def __init__(self, *args: Any, plpmtud: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mesh_plpmtud = plpmtud

    def _RTCPeerConnection__createSctpTransport(self) -> None:
        super()._RTCPeerConnection__createSctpTransport()
        tune(self.sctp, self._mesh_plpmtud)


def _supported() -> bool:
    import aioice
    import aiortc

    ok = aiortc.__version__.startswith("1.16.") and aioice.__version__.startswith("0.13.")
    if not ok:
        log.warning("aiortc %s / aioice %s: data plane tuning is written for aiortc 1.16 "
                    "and aioice 0.13; using them as shipped", aiortc.__version__,
                    aioice.__version__)
    return ok


SUPPORTED = _supported()


def tune(sctp: RTCSctpTransport, discover: bool = True) -> None:
    """Turn a fresh (not yet started) aiortc SCTP transport into the tuned one."""
    if not SUPPORTED:
        return
    dtls = sctp.transport
    if type(dtls) is RTCDtlsTransport:
        dtls.__class__ = TunedDtlsTransport
        dtls._mesh_rx_pending = 0
    if type(sctp) is RTCSctpTransport:
        sctp.__class__ = TunedSctpTransport
        sctp._mesh_setup(discover)


def watch_packet_size(pc: RTCPeerConnection, report: Callable[[int], None]) -> None:
    """Call ``report(size)`` now if the packet size already grew, and whenever it changes."""
    sctp = pc.sctp
    if not isinstance(sctp, TunedSctpTransport):
        return
    if sctp.packet_size > plpmtud.BASE:
        report(sctp.packet_size)
    sctp.on("packetsize", report)


def _sockets(connection: Any) -> list[socket.socket]:
    """The OS sockets under an aioice connection (for a relay candidate: the one to the
    TURN server)."""
    found = []
    for protocol in list(getattr(connection, "_protocols", [])):
        transport = getattr(protocol, "transport", None)
        inner = getattr(transport, "_TurnTransport__inner_protocol", None)
        if inner is not None:
            transport = getattr(inner, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            found.append(sock)
    return found


def prepare_for_probes(connection: Any) -> bool:
    """DF and large buffers on the connection's UDP sockets.

    False if there is no socket where a probe would measure the path unfragmented.
    """
    ready = False
    for sock in _sockets(connection):
        if sock.type == socket.SOCK_STREAM:
            ready = True  # TURN over TCP: a stream to the server, whose relay sets DF
        elif sockopt.prepare_datagram_socket(sock):
            ready = True
    return ready


def allow_fragments(connection: Any) -> None:
    """Clear DF: chunks already cut at a size the path lost may go out in IP fragments."""
    for sock in _sockets(connection):
        sockopt.set_dont_fragment(sock, False)


class TunedDtlsTransport(RTCDtlsTransport):
    """Whole records once the handshake is done, datagrams straight off the ICE queue."""

    _mesh_rx_pending: int

    async def _recv_next(self) -> None:
        if not self._RTCDtlsTransport__handshake_done:
            await super()._recv_next()
            return
        connection = self.transport._connection
        queue: asyncio.Queue[tuple[bytes, int] | None] = connection._queue
        if not connection._nominated:
            raise ConnectionError("Cannot receive data, not connected")
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            item = await queue.get()
        if item is None:
            raise ConnectionError("Connection lost while receiving data")
        data = item[0]
        self._mesh_rx_pending = queue.qsize()
        self._RTCDtlsTransport__rx_bytes += len(data)
        self._RTCDtlsTransport__rx_packets += 1
        if not data or not 19 < data[0] < 64:
            return  # mesh negotiates no media: anything but DTLS is dropped
        self._ssl.bio_write(data)
        try:
            plain = self._ssl.recv(65536)
        except SSL.ZeroReturnError:
            raise ConnectionError from None
        except SSL.Error:
            plain = b""
        await self._write_ssl()
        if plain and self._data_receiver:
            await self._data_receiver._handle_data(plain)

    async def _write_ssl(self) -> None:
        try:
            data = self._ssl.bio_read(65536 if self._RTCDtlsTransport__handshake_done else 1500)
        except SSL.Error:
            return
        if data:
            if not _send_now(self.transport._connection, data):
                await self.transport._send(data)
            self._RTCDtlsTransport__tx_bytes += len(data)
            self._RTCDtlsTransport__tx_packets += 1


def _send_now(connection: Any, data: bytes) -> bool:
    """Hand a datagram to the selected pair's socket without aioice's coroutine chain.

    Direct pairs go straight to the UDP transport; relayed ones are framed as
    ChannelData on the bound channel exactly as aioice would, which otherwise
    spawns a task per datagram. False (the caller takes aioice's path) whenever
    aioice has something to do first: no pair yet, a channel to bind or refresh.
    """
    pair = connection._nominated.get(1)
    if pair is None:
        return False
    transport = pair.protocol.transport
    inner = getattr(transport, "_TurnTransport__inner_protocol", None)
    if inner is None:
        transport.sendto(data, pair.remote_addr)
        return True
    addr = pair.remote_addr
    channel = inner.peer_to_channel.get(addr)
    if (channel is None or addr in inner.peer_connect_waiters
            or transport._TurnTransport__close_task is not None
            or inner.transport.is_closing()
            or time.time() > inner.channel_refresh_at.get(channel, 0)):
        return False
    inner._send(struct.pack("!HH", channel, len(data)) + data)
    return True


class TunedSctpTransport(RTCSctpTransport):
    """aiortc's SCTP association with the changes listed at the top of this module."""

    def _mesh_setup(self, discover: bool) -> None:
        self._mesh_plpmtud = discover
        self._advertised_rwnd = RECEIVE_WINDOW
        self._mesh_packet = plpmtud.BASE
        self._mesh_user_max = plpmtud.user_data_max(plpmtud.BASE)
        self._mesh_peer_max: int | None = None
        self._mesh_search: plpmtud.Search | None = None
        self._mesh_probe: tuple[plpmtud.Search, asyncio.Future[None]] | None = None
        self._mesh_task: asyncio.Task[None] | None = None
        self._mesh_rtx = False
        self._mesh_unsacked = 0
        self._mesh_sack_timer: asyncio.TimerHandle | None = None
        self._mesh_sack_task: asyncio.Task[None] | None = None
        self._mesh_t3_run = 0

    # -- PLPMTUD -------------------------------------------------------------------
    @property
    def packet_size(self) -> int:
        """The largest SCTP packet currently sent on this association."""
        return self._mesh_packet

    def _set_extensions(self, params: list[tuple[int, bytes]]) -> None:
        super()._set_extensions(params)
        if self._mesh_plpmtud:
            params.append(plpmtud.capability())

    def _get_extensions(self, params: list[tuple[int, bytes]]) -> None:
        super()._get_extensions(params)
        self._mesh_peer_max = plpmtud.peer_capability(params)

    def _set_state(self, state: Any) -> None:
        super()._set_state(state)
        if state == self.State.ESTABLISHED and self._mesh_task is None:
            if self._mesh_plpmtud and self._mesh_peer_max:
                self._mesh_search = plpmtud.Search(self._mesh_peer_max)
                self._mesh_task = asyncio.ensure_future(self._mesh_discover())
        elif state == self.State.CLOSED:
            if self._mesh_task is not None:
                self._mesh_task.cancel()
            if self._mesh_sack_timer is not None:
                self._mesh_sack_timer.cancel()
                self._mesh_sack_timer = None

    def _mesh_use(self, size: int) -> None:
        old = self._mesh_user_max
        self._mesh_packet = size
        self._mesh_user_max = plpmtud.user_data_max(size)
        # keep the congestion window's size in packets
        self._cwnd = max(self._mesh_user_max, self._cwnd * self._mesh_user_max // old)
        log.info("SCTP packets now up to %d bytes", size)
        self.emit("packetsize", size)

    async def _mesh_discover(self, delay: float = 0.0) -> None:
        """Search for the packet size after ``delay``, and again every ``RAISE_INTERVAL``
        until it is at the top."""
        search = self._mesh_search
        assert search is not None
        connection = self.transport.transport._connection
        established = self.State.ESTABLISHED
        while True:
            if delay:
                await asyncio.sleep(delay)
                search.restart()
            delay = plpmtud.RAISE_INTERVAL
            # DF (again: a black hole clears it)
            if not prepare_for_probes(connection):
                return  # without DF a probe would only show that fragments get through
            while self._association_state == established and (probes := search.round()):
                before = search.current
                settled: asyncio.Future[None] = self._loop.create_future()
                self._mesh_probe = (search, settled)
                try:
                    for size, info in probes:
                        await self.transport._send_data(plpmtud.probe_packet(
                            self._local_port, self._remote_port,
                            self._remote_verification_tag, size, info))
                    await asyncio.wait_for(settled, plpmtud.PROBE_TIMEOUT)
                except (TimeoutError, ConnectionError, SSL.Error):
                    search.timed_out()
                finally:
                    self._mesh_probe = None
                if search.current != before:
                    self._mesh_use(search.current)
            if search.at_top or self._association_state != established:
                return

    def _mesh_black_hole(self) -> None:
        if self._mesh_search is None or not self._mesh_search.black_hole():
            return
        log.info("no data acknowledged at %d-byte packets: back to %d",
                 self._mesh_packet, plpmtud.BASE)
        self._mesh_use(plpmtud.BASE)
        allow_fragments(self.transport.transport._connection)
        if self._mesh_task is None or self._mesh_task.done():
            self._mesh_task = asyncio.ensure_future(self._mesh_discover(plpmtud.RAISE_INTERVAL))

    async def _receive_chunk(self, chunk: Any) -> None:
        if type(chunk) is HeartbeatAckChunk and self._mesh_probe is not None:
            search, settled = self._mesh_probe
            for kind, value in chunk.params:
                if kind == plpmtud.HB_INFO and search.acked(value):
                    if not search.waiting and not settled.done():
                        settled.set_result(None)
                    return
        await super()._receive_chunk(chunk)

    # -- receive ---------------------------------------------------------------------
    async def _handle_data(self, data: bytes) -> None:
        try:
            _, _, verification_tag, chunks = parse_packet(data)
        except ValueError:
            return
        if any(isinstance(c, InitChunk) for c in chunks):
            if len(chunks) != 1:
                return
            expected_tag = 0
        else:
            expected_tag = self._local_verification_tag
        if verification_tag != expected_tag:
            return
        has_data = False
        for chunk in chunks:
            if type(chunk) is DataChunk:
                has_data = True
            await self._receive_chunk(chunk)
        if not self._sack_needed:
            return
        if has_data:
            self._mesh_unsacked += 1
        if (not has_data or self._mesh_unsacked >= SACK_EVERY or self._sack_misordered
                or self._sack_duplicates or not self.transport._mesh_rx_pending):
            await self._send_sack()
        elif self._mesh_sack_timer is None:
            self._mesh_sack_timer = self._loop.call_later(SACK_DELAY, self._mesh_sack_due)

    def _mesh_sack_due(self) -> None:
        self._mesh_sack_timer = None
        if self._sack_needed and self._association_state == self.State.ESTABLISHED:
            self._mesh_sack_task = asyncio.ensure_future(self._send_sack())

    async def _send_sack(self) -> None:
        self._mesh_unsacked = 0
        if self._mesh_sack_timer is not None:
            self._mesh_sack_timer.cancel()
            self._mesh_sack_timer = None
        with contextlib.suppress(ConnectionError):
            await super()._send_sack()

    def _mark_received(self, tsn: int) -> bool:
        last = self._last_received_tsn
        if (last is not None and not self._sack_misordered
                and tsn == (last + 1) % SCTP_TSN_MODULO):
            self._last_received_tsn = tsn
            if self._sack_duplicates:
                self._sack_duplicates = [x for x in self._sack_duplicates if uint32_gt(x, tsn)]
            return False
        result: bool = super()._mark_received(tsn)
        return result

    async def _receive_data_chunk(self, chunk: DataChunk) -> None:
        self._sack_needed = True
        if self._mark_received(chunk.tsn):
            return
        stream = self._get_inbound_stream(chunk.stream_id)
        tail = stream.reassembly
        in_order = not tail or uint32_gt(chunk.tsn, tail[-1].tsn)
        stream.add_chunk(chunk)
        self._advertised_rwnd -= len(chunk.user_data)
        if chunk.flags & (SCTP_DATA_LAST_FRAG | SCTP_DATA_UNORDERED) or not in_order:
            for message in stream.pop_messages():
                self._advertised_rwnd += len(message[2])
                await self._receive(*message)
        await self._reset_deferred_streams()

    # -- send --------------------------------------------------------------------------
    async def _send(self, stream_id: int, pp_id: int, user_data: bytes,
                    expiry: float | None = None, max_retransmits: int | None = None,
                    ordered: bool = True) -> None:
        stream_seq = self._outbound_stream_seq.get(stream_id, 0) if ordered else 0
        size = self._mesh_user_max
        fragments = math.ceil(len(user_data) / size)
        flags0 = 0 if ordered else SCTP_DATA_UNORDERED
        queue = self._outbound_queue
        for fragment in range(fragments):
            chunk = DataChunk()
            flags = flags0
            if fragment == 0:
                flags |= SCTP_DATA_FIRST_FRAG
            if fragment == fragments - 1:
                flags |= SCTP_DATA_LAST_FRAG
            chunk.flags = flags
            chunk.tsn = self._local_tsn
            chunk.stream_id = stream_id
            chunk.stream_seq = stream_seq
            chunk.protocol = pp_id
            chunk.user_data = user_data[fragment * size:(fragment + 1) * size]
            chunk._abandoned = False
            chunk._acked = False
            chunk._book_size = len(chunk.user_data)
            chunk._expiry = expiry
            chunk._in_flight = False
            chunk._max_retransmits = max_retransmits
            chunk._misses = 0
            chunk._retransmit = False
            chunk._sent_count = 0
            chunk._sent_time = None
            self._local_tsn = (self._local_tsn + 1) % SCTP_TSN_MODULO
            queue.append(chunk)
        if ordered:
            self._outbound_stream_seq[stream_id] = (stream_seq + 1) % 65536
        await self._transmit()

    async def _transmit(self) -> None:
        if self._forward_tsn_chunk is not None:
            await self._send_chunk(self._forward_tsn_chunk)
            self._forward_tsn_chunk = None
            if not self._t3_handle:
                self._t3_start()
        burst = (2 if self._fast_recovery_exit is not None else MAX_BURST) * self._mesh_user_max
        cwnd = min(self._flight_size + burst, self._cwnd)
        if self._mesh_rtx:
            earliest = True
            for chunk in self._sent_queue:
                if chunk._retransmit:
                    if self._fast_recovery_transmit:
                        self._fast_recovery_transmit = False
                    elif self._flight_size >= cwnd:
                        return
                    self._flight_size_increase(chunk)
                    chunk._misses = 0
                    chunk._retransmit = False
                    chunk._sent_count += 1
                    await self._send_chunk(chunk)
                    if earliest:
                        self._t3_restart()
                earliest = False
            self._mesh_rtx = False
        queue, sent = self._outbound_queue, self._sent_queue
        now = time.time()
        while queue and self._flight_size < cwnd:
            chunk = queue.popleft()
            sent.append(chunk)
            self._flight_size_increase(chunk)
            chunk._sent_count += 1
            chunk._sent_time = now
            await self._send_chunk(chunk)
            if not self._t3_handle:
                self._t3_start()

    async def _receive_sack_chunk(self, chunk: Any) -> None:
        # aiortc's, with congestion control counted in the current packet size and
        # a note when chunks are struck for retransmission
        if uint32_gt(self._last_sacked_tsn, chunk.cumulative_tsn):
            return
        mtu = self._mesh_user_max
        received_time = time.time()
        if chunk.cumulative_tsn != self._last_sacked_tsn:
            self._mesh_t3_run = 0
        self._last_sacked_tsn = chunk.cumulative_tsn
        cwnd_fully_utilized = self._flight_size >= self._cwnd
        done = 0
        done_bytes = 0
        sent = self._sent_queue
        while sent and uint32_gte(self._last_sacked_tsn, sent[0].tsn):
            schunk = sent.popleft()
            done += 1
            if not schunk._acked:
                done_bytes += schunk._book_size
            self._flight_size_decrease(schunk)
            if done == 1 and schunk._sent_count == 1:
                self._update_rto(received_time - schunk._sent_time)

        loss = False
        if chunk.gaps:
            seen = set()
            highest_seen_tsn = chunk.cumulative_tsn
            for gap in chunk.gaps:
                for pos in range(gap[0], gap[1] + 1):
                    highest_seen_tsn = (chunk.cumulative_tsn + pos) % SCTP_TSN_MODULO
                    seen.add(highest_seen_tsn)
            highest_newly_acked = chunk.cumulative_tsn
            for schunk in sent:
                if uint32_gt(schunk.tsn, highest_seen_tsn):
                    break
                if schunk.tsn in seen:
                    if not schunk._acked:
                        done_bytes += schunk._book_size
                        schunk._acked = True
                        highest_newly_acked = schunk.tsn
                    self._flight_size_decrease(schunk)
            for schunk in sent:
                if uint32_gt(schunk.tsn, highest_newly_acked):
                    break
                if schunk.tsn not in seen:
                    schunk._misses += 1
                    if schunk._misses == 3:
                        schunk._misses = 0
                        if not self._maybe_abandon(schunk):
                            schunk._retransmit = True
                            self._mesh_rtx = True
                        schunk._acked = False
                        self._flight_size_decrease(schunk)
                        loss = True

        if self._fast_recovery_exit is None:
            if done and cwnd_fully_utilized:
                if self._cwnd <= self._ssthresh:
                    self._cwnd += min(done_bytes, mtu)
                else:
                    self._partial_bytes_acked += done_bytes
                    if self._partial_bytes_acked >= self._cwnd:
                        self._partial_bytes_acked -= self._cwnd
                        self._cwnd += mtu
            if loss:
                self._ssthresh = max(self._cwnd // 2, 4 * mtu)
                self._cwnd = self._ssthresh
                self._partial_bytes_acked = 0
                self._fast_recovery_exit = sent[-1].tsn
                self._fast_recovery_transmit = True
        elif uint32_gte(chunk.cumulative_tsn, self._fast_recovery_exit):
            self._fast_recovery_exit = None

        if not sent:
            self._t3_cancel()
        elif done:
            self._t3_restart()
        self._update_advanced_peer_ack_point()
        await self._data_channel_flush()
        await self._transmit()

    def _t3_expired(self) -> None:
        super()._t3_expired()
        self._mesh_rtx = True
        mtu = self._mesh_user_max
        self._cwnd = mtu
        self._ssthresh = max(self._ssthresh, 4 * mtu)
        if self._mesh_packet > plpmtud.BASE:
            self._mesh_t3_run += 1
            if self._mesh_t3_run >= BLACK_HOLE_T3:
                self._mesh_black_hole()
