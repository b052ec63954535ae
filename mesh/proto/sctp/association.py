"""One SCTP association over DTLS, as WebRTC uses it (RFC 8261, RFC 9260). Sans-I/O.

Driven the aioquic way: ``receive_datagram(data, now)`` for each DTLS record's
plaintext, ``handle_timer(now)``; read ``datagrams_to_send(now)``,
``next_event()``, ``get_timer()``. The glue feeds every datagram of one
socket read before asking for output, so the acknowledgement decision is taken
once per batch: at once for two or more DATA packets or anything out of order,
after ``SACK_DELAY`` for a lone packet (RFC 9260 6.2 allows 200 ms).

Owns the lifecycle (INIT, INIT-ACK with a signed state cookie, COOKIE-ECHO,
COOKIE-ACK; an INIT that collides with ours is answered as RFC 9260 5.2.1
says, which is how browsers open; SHUTDOWN; ABORT), verification tags, the
chunks that are not DATA or SACK (HEARTBEAT, FORWARD-TSN, RE-CONFIG of RFC 6525
for stream resets, ERROR, unknown chunks by the rule of their two high bits).
Data travels through ``sender`` and ``receiver``; path MTU discovery is
pathmtu.py, data channels channels.py.

A peer that breaks the protocol or a limit gets an ABORT with a cause and the
association ends with ``Closed``; nothing a peer sends raises out of here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from struct import pack, unpack_from

from .. import plpmtud
from . import chunks as c
from .events import BufferedLow, Closed, Delivered, Established, Event, PacketSize
from .pathmtu import PathMtu
from .receiver import Receiver, Violation
from .reconfig import Resets
from .sender import Sender

SACK_DELAY = 0.02
T1 = 1.0
MAX_INIT_RETRANSMITS = 8
MAX_RETRANSMITS = 10
"""Consecutive T3 expiries after which the peer is unreachable (Association.Max.Retrans)."""
BLACK_HOLE_T3 = 2
STREAMS = 65535
COOKIE_LIFETIME = 60.0
SUPPORTED = bytes([c.RECONFIG, c.FORWARD_TSN])

CLOSED, COOKIE_WAIT, COOKIE_ECHOED, ESTABLISHED, SHUTDOWN_SENT, SHUTDOWN_ACK_SENT = range(6)


class Association:
    def __init__(self, *, client: bool, now: float, port: int = 5000,
                 remote_port: int = 5000, window: int = 4 * 1024 * 1024,
                 max_message: int = 256 * 1024, discover: bool = True,
                 initial_tsn: int | None = None, tag: int | None = None) -> None:
        if max_message > window:
            raise ValueError("a message must fit in the receive window")
        self.client = client
        self.state = CLOSED
        self.port, self.remote_port = port, remote_port
        self.window = window
        self.max_message = max_message
        self.discover = discover
        self.tag = (secrets.randbits(32) if tag is None else tag) or 1
        self.peer_tag = 0
        self.initial_tsn = secrets.randbits(32) if initial_tsn is None else initial_tsn
        self.packet_size = plpmtud.BASE
        self.peer_max_packet: int | None = None
        self.reconfig_supported = False
        self.sender = Sender(self.initial_tsn, plpmtud.user_data_max(plpmtud.BASE), window)
        self.receiver: Receiver | None = None
        self._cookie_key = secrets.token_bytes(16)
        self._control: list[bytes] = []
        self._events: deque[Event] = deque()
        self._t1: float | None = None
        self._t1_chunk: bytes | None = None
        self._t1_count = 0
        self._sack_at: float | None = None
        self._t3_run = 0
        self._pmtu: PathMtu | None = None
        self._raw: list[bytes] = []
        """Whole packets to send as they are (INIT, INIT-ACK, path MTU probes)."""
        self.resets = Resets(self.initial_tsn)
        self._over = False
        self._now = now

    # -- inputs ---------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """The DTLS client opens the association (the server waits for its INIT)."""
        if self.client and self.state == CLOSED:
            self.state = COOKIE_WAIT
            self._arm_t1(self._init_chunk(c.INIT), now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        self._now = now
        if self._over:
            return
        try:
            src, dst, tag, chunks = c.parse_packet(data)
        except c.ParseError as exc:
            if self.state == ESTABLISHED:
                self.abort(f"malformed packet: {exc}", c.CAUSE_PROTOCOL_VIOLATION)
            return
        if dst != self.port or src != self.remote_port or not chunks:
            return
        first = chunks[0]
        if first.kind == c.INIT:
            if tag != 0 or len(chunks) != 1:
                return
        elif first.kind == c.ABORT:
            if tag != self.tag and not (isinstance(first, c.ValueChunk) and first.flags & 1
                                        and tag == self.peer_tag):
                return
        elif tag != self.tag:
            return
        data_seen = False
        try:
            for chunk in chunks:
                if isinstance(chunk, c.DataChunk):
                    data_seen = True
                if not self._chunk(chunk, now):
                    break
        except (Violation, c.ParseError) as broken:  # (not "exc": mypyc gives a name
            self.abort(str(broken), c.CAUSE_PROTOCOL_VIOLATION)  # one type per function)
            return
        receiver = self.receiver
        if receiver is None:
            return
        if data_seen:
            receiver.data_packets += 1
        for message in receiver.delivered:
            self._events.append(Delivered(message))
        receiver.delivered.clear()
        self._events += self.resets.check(receiver)

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._over:
            return
        if self._t1 is not None and now >= self._t1:
            self._t1_count += 1
            if self._t1_count > MAX_INIT_RETRANSMITS or self._t1_chunk is None:
                self._close("the peer did not answer the association set-up")
                return
            self._send_t1_chunk()
            self._t1 = now + T1 * min(2 ** self._t1_count, 60)
        sender = self.sender
        if sender.t3 is not None and now >= sender.t3 and self.state >= ESTABLISHED and (
                sender.expire(now)):
            self._t3_run += 1
            if self._t3_run > MAX_RETRANSMITS:
                self.abort("the peer stopped acknowledging", c.CAUSE_USER_ABORT)
                return
            if self._pmtu is not None and self._t3_run >= BLACK_HOLE_T3:
                self._pmtu.black_hole(now)
        if self._pmtu is not None:
            self._pmtu.timer(now)
            self._apply_pmtu()
        again = self.resets.timer(now, self.sender.rto)
        if again is not None:
            self._control.append(again)

    # -- outputs --------------------------------------------------------------------------
    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times = [self._t1, self._sack_at, self.sender.t3, self.resets.retry_at]
        if self._pmtu is not None:
            times += [self._pmtu.probe_at, self._pmtu.raise_at]
        found = [t for t in times if t is not None]
        return min(found) if found else None

    def set_window(self, window: int) -> None:
        """Receive window from now on (announced in the next SACK); not below the
        largest message, which must fit in it."""
        self.window = max(window, self.max_message)
        if self.receiver is not None:
            self.receiver.window = self.window

    def datagrams_to_send(self, now: float) -> list[bytes]:
        self._now = now
        control, self._control = self._control, []
        out: list[bytes] = []
        if self.state >= ESTABLISHED:
            receiver = self.receiver
            if receiver is not None and receiver.sack_needed:
                if receiver.data_packets >= 2 or receiver.out_of_order or (
                        self._sack_at is not None and now >= self._sack_at) or (
                        receiver.data_packets == 0):
                    control.append(receiver.sack().encode())
                    self._sack_at = None
                elif self._sack_at is None:
                    self._sack_at = now + SACK_DELAY
            request = self.resets.request(now, self.sender)
            if request is not None:
                control.append(request)
            if self.sender.forward_needed:
                self.sender.forward_needed = False
                control.append(c.ForwardTsnChunk(self.sender.advanced,
                                                 self.sender.forward_streams()).encode())
        room = self.packet_size - c.HEADER
        packet: list[bytes] = []
        used = 0
        for chunk in control:
            if used + len(chunk) > room and packet:
                out.append(self._packet(packet))
                packet, used = [], 0
            packet.append(chunk)
            used += len(chunk)
        if self.state == ESTABLISHED:
            data = self.sender.collect(now, room)
            if data and used + len(data[0][0]) <= room:
                packet += data.pop(0)
            if packet:
                out.append(self._packet(packet))
                packet = []
            out += [self._packet(p) for p in data]
            for sid in self.sender.low:
                self._events.append(BufferedLow(sid))
            self.sender.low.clear()
        if packet:
            out.append(self._packet(packet))
        out += self._raw
        self._raw = []
        return out

    # -- the API for channels.py ---------------------------------------------------------
    def send(self, sid: int, ppid: int, data: bytes, *, ordered: bool = True,
             max_retransmits: int | None = None, lifetime: float | None = None) -> None:
        expiry = self._now + lifetime if lifetime is not None else None
        self.sender.enqueue(sid, ppid, data, ordered, max_retransmits, expiry)

    def reset_streams(self, streams: list[int]) -> None:
        """Reset our outgoing ``streams`` (a data channel closing), once sent out."""
        self.resets.ask(streams)

    def abort(self, reason: str, code: int = c.CAUSE_USER_ABORT) -> None:
        if self._over:
            return
        if self.peer_tag:
            info = reason.encode()[:200]
            self._control.append(c.value_chunk(c.ABORT, [(code, info)]).encode())
        self._close(reason)

    def shutdown(self) -> None:
        if self.state == ESTABLISHED and self.receiver is not None:
            self.state = SHUTDOWN_SENT
            self._control.append(c.ShutdownChunk(self.receiver.cumulative).encode())

    # -- chunks ---------------------------------------------------------------------------
    def _chunk(self, chunk: c.Chunk, now: float) -> bool:
        """Handle one chunk; False: stop processing this packet."""
        kind = chunk.kind
        receiver = self.receiver
        if isinstance(chunk, c.DataChunk):
            if receiver is None or self.state not in (ESTABLISHED, SHUTDOWN_SENT):
                return False
            if not chunk.user_data:
                raise Violation("a DATA chunk without user data")
            receiver.receive(chunk)
        elif isinstance(chunk, c.SackChunk):
            if self.state >= ESTABLISHED:
                self.sender.on_sack(chunk, now)
                self._t3_run = 0
        elif isinstance(chunk, c.InitChunk):
            if kind == c.INIT:
                self._on_init(chunk)
            elif self.state == COOKIE_WAIT:
                self._on_init_ack(chunk, now)
        elif isinstance(chunk, c.ForwardTsnChunk):
            if receiver is not None:
                receiver.forward(chunk.new_cumulative_tsn, chunk.streams)
        elif isinstance(chunk, c.ShutdownChunk):
            if self.state == ESTABLISHED:
                self.state = SHUTDOWN_ACK_SENT
                self._control.append(c.ValueChunk(c.SHUTDOWN_ACK, 0, b"").encode())
        elif isinstance(chunk, c.ValueChunk):
            return self._value(chunk, now)
        elif isinstance(chunk, c.Unknown):
            top = kind >> 6
            if top & 1:
                self._control.append(c.value_chunk(
                    c.ERROR, [(c.CAUSE_UNRECOGNIZED_CHUNK, chunk.raw)]).encode())
            return top >= 2
        return True

    def _value(self, chunk: c.ValueChunk, now: float) -> bool:
        kind = chunk.kind
        if kind == c.COOKIE_ECHO:
            self._on_cookie(chunk.value, now)
        elif kind == c.COOKIE_ACK:
            if self.state == COOKIE_ECHOED:
                self._t1 = None
                self._establish(now)
        elif kind == c.HEARTBEAT:
            self._control.append(c.ValueChunk(c.HEARTBEAT_ACK, 0, chunk.value).encode())
        elif kind == c.HEARTBEAT_ACK:
            if self._pmtu is not None:
                self._pmtu.heartbeat_ack(chunk.value, now)
                self._apply_pmtu()
        elif kind == c.ABORT:
            causes = c.parse_params(chunk.value, 0) if len(chunk.value) >= 4 else []
            text = causes[0][1][:200].decode("utf-8", "replace") if causes else ""
            self._close(f"the peer aborted the association{': ' + text if text else ''}",
                        by_peer=True)
            return False
        elif kind == c.SHUTDOWN_ACK:
            self._control.append(c.ValueChunk(c.SHUTDOWN_COMPLETE, 0, b"").encode())
            self._close("shut down")
            return False
        elif kind == c.SHUTDOWN_COMPLETE:
            if self.state == SHUTDOWN_ACK_SENT:
                self._close("shut down by the peer", by_peer=True)
            return False
        elif kind == c.RECONFIG and self.state == ESTABLISHED and self.receiver is not None:
            control, events = self.resets.receive(c.parse_params(chunk.value, 0),
                                                  self.receiver, self.sender)
            self._control += control
            self._events += events
        return True

    def _init_chunk(self, kind: int, cookie: bytes | None = None) -> bytes:
        params = [(c.PARAM_SUPPORTED_EXTENSIONS, SUPPORTED),
                  (c.PARAM_FORWARD_TSN_SUPPORTED, b"")]
        if self.discover:
            params.append(plpmtud.capability())
        if cookie is not None:
            params.insert(0, (c.PARAM_STATE_COOKIE, cookie))
        return c.InitChunk(kind, self.tag, self.window, STREAMS, STREAMS, self.initial_tsn,
                           params).encode()

    def _capabilities(self, init: c.InitChunk) -> bytes:
        extensions = init.param(c.PARAM_SUPPORTED_EXTENSIONS) or b""
        peer_max = plpmtud.peer_capability(init.params) or 0
        return pack("!BI", 1 if c.RECONFIG in extensions else 0, peer_max)

    def _on_init(self, init: c.InitChunk) -> None:
        if init.initiate_tag == 0 or self.state == ESTABLISHED:
            return
        body = pack("!IIIIId", self.tag, init.initiate_tag, self.initial_tsn,
                    init.initial_tsn, init.a_rwnd, self._now) + self._capabilities(init)
        cookie = body + hmac.new(self._cookie_key, body, hashlib.sha256).digest()
        self.peer_tag = init.initiate_tag  # INIT-ACK carries the peer's tag
        self._emit_raw(self._init_chunk(c.INIT_ACK, cookie), init.initiate_tag)

    def _on_init_ack(self, ack: c.InitChunk, now: float) -> None:
        cookie = ack.param(c.PARAM_STATE_COOKIE)
        if cookie is None or ack.initiate_tag == 0:
            return
        self._adopt(ack.initiate_tag, ack.initial_tsn, ack.a_rwnd, self._capabilities(ack))
        self.state = COOKIE_ECHOED
        self._arm_t1(c.ValueChunk(c.COOKIE_ECHO, 0, cookie).encode(), now)

    def _on_cookie(self, cookie: bytes, now: float) -> None:
        size = 28 + 5
        if len(cookie) != size + 32:
            return
        body, mac = cookie[:size], cookie[size:]
        if not hmac.compare_digest(mac, hmac.new(self._cookie_key, body,
                                                 hashlib.sha256).digest()):
            return
        ours, peer_tag, _, peer_tsn, peer_rwnd, made = unpack_from("!IIIIId", body, 0)
        if ours != self.tag or now - made > COOKIE_LIFETIME:
            return
        if self.state != ESTABLISHED:
            self._adopt(peer_tag, peer_tsn, peer_rwnd, body[28:])
            self._t1 = None
            self._establish(now)
        self._control.append(c.ValueChunk(c.COOKIE_ACK, 0, b"").encode())

    def _adopt(self, peer_tag: int, peer_tsn: int, peer_rwnd: int, caps: bytes) -> None:
        self.peer_tag = peer_tag
        self.receiver = Receiver(peer_tsn, self.window, self.max_message)
        self.sender.peer_rwnd = peer_rwnd
        self.sender.ssthresh = peer_rwnd
        self.resets.peer_initial_tsn = peer_tsn
        reconfig, peer_max = unpack_from("!BI", caps, 0)
        self.reconfig_supported = bool(reconfig)
        self.peer_max_packet = peer_max or None

    def _establish(self, now: float) -> None:
        self.state = ESTABLISHED
        self._events.append(Established())
        if self.discover and self.peer_max_packet:
            self.sender.burst_cap = 4  # a mesh peer acknowledges per batch (sender.py)
            self._pmtu = PathMtu(self.peer_max_packet, self.port, self.remote_port,
                                 self.peer_tag)
            self._pmtu.begin(now)
            self._apply_pmtu()

    # -- path MTU ---------------------------------------------------------------------------
    def _apply_pmtu(self) -> None:
        pmtu = self._pmtu
        assert pmtu is not None
        if self.state != ESTABLISHED:
            pmtu.probes.clear()
        self._raw += pmtu.probes
        pmtu.probes.clear()
        for size, dont_fragment in pmtu.changes:
            old = self.sender.user_data_max
            self.packet_size = size
            new = plpmtud.user_data_max(size)
            self.sender.user_data_max = new
            self.sender.cwnd = max(new, self.sender.cwnd * new // old)
            self._events.append(PacketSize(size, dont_fragment))
        pmtu.changes.clear()

    # -- helpers ----------------------------------------------------------------------------
    def _arm_t1(self, chunk: bytes, now: float) -> None:
        self._t1_chunk = chunk
        self._t1_count = 0
        self._t1 = now + T1
        self._send_t1_chunk()

    def _send_t1_chunk(self) -> None:
        chunk = self._t1_chunk
        assert chunk is not None
        if chunk[0] == c.INIT:
            self._emit_raw(chunk, 0)  # an INIT travels with tag 0
        else:
            self._control.append(chunk)

    def _emit_raw(self, chunk: bytes, tag: int) -> None:
        self._raw.append(c.serialize_packet(self.port, self.remote_port, tag, [chunk]))

    def _packet(self, chunks: list[bytes]) -> bytes:
        return c.serialize_packet(self.port, self.remote_port, self.peer_tag, chunks)

    def _close(self, reason: str, by_peer: bool = False) -> None:
        if self._over:
            return
        self._over = True
        self.state = CLOSED
        self._t1 = self._sack_at = None
        if self._pmtu is not None:
            self._pmtu.stop()
        self.sender.t3 = None
        self.resets.retry_at = None
        self._events.append(Closed(reason, by_peer))
