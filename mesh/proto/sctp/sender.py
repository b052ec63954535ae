"""The sending half of an SCTP association: queues, TSNs, congestion control, retransmission.

Owns RFC 9260 section 6.1 (transmission), 6.3 (RTO), 7.2 (slow start,
congestion avoidance, fast retransmit and recovery, T3 expiry), 6.2.1
(processing a SACK) and RFC 3758's sending side (abandoning messages by
retransmission count or lifetime, FORWARD-TSN).

Messages wait per stream and streams take turns message by message; a
message's fragments get consecutive TSNs at their first transmission, sized
for the current packet size. In-flight chunks live in one list in TSN order
(``_flight`` from ``_head``), so a SACK's cumulative and gap acknowledgements
reach a chunk by its offset, not by a search.

``burst_cap``: how much slow start may grow the window per SACK. RFC 9260
says one MTU; a peer running this code acknowledges per receive batch rather
than per second packet, so with such a peer (it announced the mesh capability)
up to four MTUs are allowed, as RFC 3465 allows L = 2 and Linux counts every
segment acknowledged.

Sans-I/O, written for mypyc.
"""

from __future__ import annotations

from collections import deque

from .chunks import FLAG_BEGIN, FLAG_END, FLAG_UNORDERED, DataChunk, SackChunk
from .receiver import MOD, after

RTO_INITIAL = 1.0
RTO_MIN = 0.2
RTO_MAX = 60.0
MAX_BURST = 16
"""New packets sent at once beyond what is in flight."""


class OutMessage:
    __slots__ = ("abandoned", "data", "expiry", "max_retransmits", "offset", "ordered",
                 "ppid", "ssn", "stream_id")

    def __init__(self, stream_id: int, ppid: int, data: bytes, ordered: bool, ssn: int,
                 max_retransmits: int | None, expiry: float | None) -> None:
        self.stream_id = stream_id
        self.ppid = ppid
        self.data = data
        self.ordered = ordered
        self.ssn = ssn
        self.max_retransmits = max_retransmits
        self.expiry = expiry
        self.offset = 0
        """Bytes of ``data`` already cut into chunks."""
        self.abandoned = False


class InFlight:
    __slots__ = ("acked", "encoded", "in_flight", "message", "misses", "retransmit",
                 "sent_count", "sent_time", "size", "tsn")

    def __init__(self, tsn: int, encoded: bytes, size: int, message: OutMessage,
                 now: float) -> None:
        self.tsn = tsn
        self.encoded = encoded
        self.size = size
        self.message = message
        self.sent_time = now
        self.sent_count = 1
        self.acked = False
        self.in_flight = True
        self.misses = 0
        self.retransmit = False


class OutStream:
    __slots__ = ("buffered", "next_ssn", "queue", "sid", "threshold")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.queue: deque[OutMessage] = deque()
        self.next_ssn = 0
        self.buffered = 0
        """Bytes queued and not yet sent once (the data channel's bufferedAmount)."""
        self.threshold = 0


class Sender:
    def __init__(self, initial_tsn: int, user_data_max: int, peer_rwnd: int) -> None:
        self.next_tsn = initial_tsn
        self.cumulative = (initial_tsn - 1) % MOD
        """The peer's cumulative TSN acknowledged."""
        self.advanced = self.cumulative
        """Advanced.Peer.Ack.Point (RFC 3758): past abandoned chunks too."""
        self.user_data_max = user_data_max
        self.peer_rwnd = peer_rwnd
        self.cwnd = min(4 * user_data_max, max(2 * user_data_max, 4380))
        self.ssthresh = peer_rwnd
        self.partial_bytes_acked = 0
        self.flight_size = 0
        self.fast_recovery_exit: int | None = None
        self.burst_cap = 1
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        self.t3: float | None = None
        self.streams: dict[int, OutStream] = {}
        self._turns: deque[int] = deque()
        """Streams with queued messages, in the order they get their next turn."""
        self._waiting: set[int] = set()
        """The streams in ``_turns``."""
        self._current: OutMessage | None = None
        """A message whose fragments are being sent (they take consecutive TSNs)."""
        self._flight: list[InFlight] = []
        self._head = 0
        self._rtx: list[InFlight] = []
        self.forward_needed = False
        self.low: list[int] = []
        """Streams whose buffered amount fell to their threshold (events to emit)."""

    # -- queueing -----------------------------------------------------------------------------
    def stream(self, sid: int) -> OutStream:
        stream = self.streams.get(sid)
        if stream is None:
            stream = self.streams[sid] = OutStream(sid)
        return stream

    def enqueue(self, sid: int, ppid: int, data: bytes, ordered: bool,
                max_retransmits: int | None = None, expiry: float | None = None) -> None:
        stream = self.stream(sid)
        ssn = 0
        if ordered:
            ssn = stream.next_ssn
            stream.next_ssn = (ssn + 1) % 65536
        if sid not in self._waiting and (self._current is None
                                         or self._current.stream_id != sid):
            self._turn(sid)
        stream.queue.append(OutMessage(sid, ppid, data, ordered, ssn, max_retransmits, expiry))
        stream.buffered += len(data)

    def _turn(self, sid: int) -> None:
        self._turns.append(sid)
        self._waiting.add(sid)

    def reset_stream(self, sid: int) -> None:
        """Our outgoing stream ``sid`` was reset: its sequence numbers start over."""
        self.stream(sid).next_ssn = 0

    @property
    def outstanding(self) -> int:
        return len(self._flight) - self._head

    def queued(self) -> bool:
        return bool(self._turns) or self._current is not None or bool(self._rtx)

    # -- transmission ---------------------------------------------------------------------------
    def collect(self, now: float, room: int) -> list[list[bytes]]:
        """DATA chunks to send now, packed into packets of at most ``room`` bytes of
        chunks each: retransmissions first, then new data as the windows allow."""
        packets: list[list[bytes]] = []
        packet: list[bytes] = []
        used = 0
        cap = min(self.cwnd, self.flight_size + MAX_BURST * self.user_data_max)
        for chunk in self._rtx:
            if not chunk.retransmit or chunk.acked or chunk.message.abandoned:
                chunk.retransmit = False
                continue
            if self.flight_size >= cap and packets:
                break
            chunk.retransmit = False
            chunk.sent_count += 1
            chunk.sent_time = now
            chunk.in_flight = True
            self.flight_size += chunk.size
            size = len(chunk.encoded)
            if used + size > room and packet:
                packets.append(packet)
                packet, used = [], 0
            packet.append(chunk.encoded)
            used += size
        self._rtx = [c for c in self._rtx if c.retransmit]
        while self.flight_size < cap and (
                self.flight_size < self.peer_rwnd or self.flight_size == 0):  # 6.1 rule B
            fresh = self._next_chunk(now)
            if fresh is None:
                break
            size = len(fresh.encoded)
            if used + size > room and packet:
                packets.append(packet)
                packet, used = [], 0
            packet.append(fresh.encoded)
            used += size
        if packet:
            packets.append(packet)
        if packets and self.t3 is None:
            self.t3 = now + self.rto
        return packets

    def _next_chunk(self, now: float) -> InFlight | None:
        message = self._current
        while message is None:
            if not self._turns:
                return None
            sid = self._turns.popleft()
            self._waiting.discard(sid)
            stream = self.streams[sid]
            if not stream.queue:
                continue
            candidate = stream.queue.popleft()
            if candidate.expiry is not None and now > candidate.expiry:
                self._unbuffer(stream, len(candidate.data))  # never sent: just dropped
                continue
            message = self._current = candidate
            if stream.queue:
                self._turn(sid)
        data = message.data
        start = message.offset
        end = min(len(data), start + self.user_data_max)
        flags = 0 if message.ordered else FLAG_UNORDERED
        if start == 0:
            flags |= FLAG_BEGIN
        if end == len(data):
            flags |= FLAG_END
            self._current = None
            stream = self.streams[message.stream_id]
            if stream.queue and message.stream_id not in self._waiting:
                self._turn(message.stream_id)
        message.offset = end
        tsn = self.next_tsn
        self.next_tsn = (tsn + 1) % MOD
        piece = data[start:end] if start or end != len(data) else data
        encoded = DataChunk(flags, tsn, message.stream_id, message.ssn, message.ppid,
                            piece).encode()
        chunk = InFlight(tsn, encoded, end - start, message, now)
        self._flight.append(chunk)
        self.flight_size += chunk.size
        self._unbuffer(self.streams[message.stream_id], end - start)
        return chunk

    def _unbuffer(self, stream: OutStream, size: int) -> None:
        before = stream.buffered
        stream.buffered -= size
        if before > stream.threshold >= stream.buffered:
            self.low.append(stream.sid)

    # -- acknowledgements ---------------------------------------------------------------------
    def on_sack(self, sack: SackChunk, now: float) -> None:
        cum = sack.cumulative_tsn
        if after(self.cumulative, cum):
            return  # an old SACK, overtaken by a newer one
        flight, head = self._flight, self._head
        mtu = self.user_data_max
        full = self.flight_size >= self.cwnd
        acked = 0
        cum_advanced = cum != self.cumulative
        sample: InFlight | None = None
        """The latest chunk newly acknowledged that was sent once (Karn's rule): the RTT
        sample, unless it was abandoned (acknowledged by FORWARD-TSN, not by arriving)."""
        first_tsn = flight[head].tsn if head < len(flight) else self.next_tsn
        if not after(first_tsn, cum):
            count = min((cum - first_tsn) % MOD + 1, len(flight) - head)
            for i in range(head, head + count):
                chunk = flight[i]
                if not chunk.acked:
                    sample = chunk if chunk.sent_count == 1 else sample
                    acked += self._ack(chunk)
            head += count
        self.cumulative = cum
        if after(cum, self.advanced):
            self.advanced = cum
        highest_new = cum
        if sack.gaps and head < len(flight):
            base = flight[head].tsn
            for start, end in sack.gaps:
                for off in range(start, end + 1):
                    index = head + (cum + off - base) % MOD
                    if index >= len(flight):
                        break
                    chunk = flight[index]
                    if not chunk.acked:
                        sample = chunk if chunk.sent_count == 1 else sample
                        acked += self._ack(chunk)
                        highest_new = chunk.tsn
            self._misses(head, highest_new, now)
        if sample is not None and not sample.message.abandoned:
            self._measure(now - sample.sent_time)
        if head > 512 and head * 2 > len(flight):
            del flight[:head]
            head = 0
        self._head = head
        self.peer_rwnd = sack.a_rwnd
        self._grow(acked, full, mtu)
        if self.fast_recovery_exit is not None and not after(self.fast_recovery_exit, cum):
            self.fast_recovery_exit = None
        if self.outstanding == 0:
            self.t3 = None
        elif cum_advanced:
            self.t3 = now + self.rto
        self._forward()

    def _ack(self, chunk: InFlight) -> int:
        """Mark ``chunk`` acknowledged; the bytes it newly acknowledges."""
        chunk.acked = True
        if chunk.in_flight:
            chunk.in_flight = False
            self.flight_size -= chunk.size
        return chunk.size

    def _measure(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(RTO_MAX, max(RTO_MIN, self.srtt + 4 * self.rttvar))

    def _grow(self, acked: int, full: bool, mtu: int) -> None:
        if not acked or not full or self.fast_recovery_exit is not None:
            return
        if self.cwnd <= self.ssthresh:
            self.cwnd += min(acked, self.burst_cap * mtu)
        else:
            self.partial_bytes_acked += acked
            if self.partial_bytes_acked >= self.cwnd:
                self.partial_bytes_acked -= self.cwnd
                self.cwnd += mtu

    def _misses(self, head: int, highest_new: int, now: float) -> None:
        """Miss indications for chunks below the highest TSN newly acknowledged; the
        third one marks a chunk for fast retransmit (RFC 9260 section 7.2.4)."""
        loss = False
        flight = self._flight
        for i in range(head, len(flight)):
            chunk = flight[i]
            if after(chunk.tsn, highest_new):
                break
            if chunk.acked or chunk.retransmit:
                continue
            chunk.misses += 1
            if chunk.misses >= 3:
                chunk.misses = 0
                loss = True
                self._mark(chunk, now)
        if loss and self.fast_recovery_exit is None:
            self.ssthresh = max(self.cwnd // 2, 4 * self.user_data_max)
            self.cwnd = self.ssthresh
            self.partial_bytes_acked = 0
            self.fast_recovery_exit = (self.next_tsn - 1) % MOD

    def _mark(self, chunk: InFlight, now: float) -> None:
        """Send ``chunk`` again, unless its message's policy abandons it."""
        if chunk.in_flight:
            chunk.in_flight = False
            self.flight_size -= chunk.size
        message = chunk.message
        if message.abandoned or (message.max_retransmits is not None
                                 and chunk.sent_count > message.max_retransmits):
            self._abandon(message)
            return
        if message.expiry is not None and now > message.expiry:
            self._abandon(message)
            return
        if not chunk.retransmit:
            chunk.retransmit = True
            self._rtx.append(chunk)

    def _abandon(self, message: OutMessage) -> None:
        if message.abandoned:
            return
        message.abandoned = True
        if message is self._current:  # its remaining fragments are never sent
            self._current = None
            stream = self.streams[message.stream_id]
            self._unbuffer(stream, len(message.data) - message.offset)
            if stream.queue and message.stream_id not in self._waiting:
                self._turn(message.stream_id)
        for i in range(self._head, len(self._flight)):
            chunk = self._flight[i]
            if chunk.message is message and chunk.in_flight:
                chunk.in_flight = False
                self.flight_size -= chunk.size
        self.forward_needed = True

    def _forward(self) -> None:
        """Move the Advanced.Peer.Ack.Point over abandoned chunks (RFC 3758 3.5 C1)."""
        flight = self._flight
        index = self._head + (self.advanced - self.cumulative) % MOD
        while index < len(flight):
            chunk = flight[index]
            if not chunk.message.abandoned:
                break
            self.advanced = chunk.tsn
            index += 1
        if after(self.advanced, self.cumulative):
            self.forward_needed = True

    def forward_streams(self) -> list[tuple[int, int]]:
        """For FORWARD-TSN: the last ordered SSN skipped on each stream."""
        skipped: dict[int, int] = {}
        count = (self.advanced - self.cumulative) % MOD
        for i in range(self._head, min(len(self._flight), self._head + count)):
            message = self._flight[i].message
            if message.ordered:
                skipped[message.stream_id] = message.ssn
        return sorted(skipped.items())

    # -- timers ---------------------------------------------------------------------------------
    def expire(self, now: float) -> bool:
        """T3-rtx expired (RFC 9260 6.3.3): every unacknowledged chunk goes again, the
        window falls to one MTU. Returns whether anything was outstanding."""
        self.t3 = None
        if self.outstanding == 0:
            return False
        mtu = self.user_data_max
        self.ssthresh = max(self.cwnd // 2, 4 * mtu)
        self.cwnd = mtu
        self.partial_bytes_acked = 0
        self.fast_recovery_exit = None
        for i in range(self._head, len(self._flight)):
            chunk = self._flight[i]
            if not chunk.acked:
                self._mark(chunk, now)
        self.rto = min(RTO_MAX, self.rto * 2)
        self._forward()
        self.t3 = now + self.rto if self.outstanding else None
        return True
