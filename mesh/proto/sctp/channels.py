"""WebRTC data channels over an SCTP association (RFC 8831, DCEP of RFC 8832). Sans-I/O.

A channel is a stream id pair. The DTLS client opens channels on even ids, the
server on odd ones (RFC 8832 6). Opening sends DATA_CHANNEL_OPEN (PPID 50) on
the stream::

    u8 message type 0x03 | u8 channel type | u16 priority | u32 reliability
    | u16 label length | u16 protocol length | label | protocol

(channel type: 0x00 reliable, 0x01 partially reliable by retransmissions,
0x02 by lifetime in ms; 0x80 added for unordered), answered by
DATA_CHANNEL_ACK (a single 0x02). The opener may send at once; until the ACK
arrives its messages go ordered, so none can overtake the OPEN (8832 6.6).
User messages: PPID 51 text (UTF-8), 53 binary, 56/57 an empty text/binary
message (sent as one zero byte). Closing resets the channel's outgoing stream
(RFC 6525, reconfig.py) once everything queued on it is sent; the peer resets
its own in turn, and the channel is closed when both directions are.

The same ``receive_datagram``/``datagrams_to_send``/``next_event``/
``get_timer`` shape as the association, which it drives.
"""

from __future__ import annotations

from collections import deque
from struct import pack, unpack_from

from .association import Association
from .events import BufferedLow, Closed, Delivered, Established, PacketSize, StreamsReset

PPID_DCEP, PPID_TEXT, PPID_BINARY, PPID_TEXT_EMPTY, PPID_BINARY_EMPTY = 50, 51, 53, 56, 57
OPEN, ACK = 0x03, 0x02
UNORDERED = 0x80
REXMIT, TIMED = 0x01, 0x02
MAX_LABEL = 1024


class ChannelError(Exception):
    """A channel operation the channel's state does not allow."""


class Channel:
    __slots__ = ("acked", "id", "in_reset", "label", "max_lifetime", "max_retransmits",
                 "ordered", "out_reset", "protocol", "state")

    def __init__(self, cid: int, label: str, protocol: str, ordered: bool,
                 max_retransmits: int | None, max_lifetime: float | None) -> None:
        self.id = cid
        self.label = label
        self.protocol = protocol
        self.ordered = ordered
        self.max_retransmits = max_retransmits
        self.max_lifetime = max_lifetime
        """Seconds a message may take before it is abandoned."""
        self.state = "open"
        self.acked = False
        self.out_reset = False
        self.in_reset = False


class Ready:
    """The association is up: channels can open."""


class Opened:
    """The peer opened ``channel``."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel


class Message:
    __slots__ = ("channel_id", "data")

    def __init__(self, channel_id: int, data: bytes | str) -> None:
        self.channel_id = channel_id
        self.data = data


class ChannelClosed:
    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id


class Low:
    """``channel_id``'s buffered amount fell to its threshold."""

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id


class Ended:
    """The association ended; every channel is closed."""

    def __init__(self, reason: str, by_peer: bool = False) -> None:
        self.reason = reason
        self.by_peer = by_peer


Event = Ready | Opened | Message | ChannelClosed | Low | PacketSize | Ended


def encode_open(label: str, protocol: str, ordered: bool, max_retransmits: int | None,
                max_lifetime: float | None) -> bytes:
    kind, value = 0, 0
    if max_retransmits is not None:
        kind, value = REXMIT, max_retransmits
    elif max_lifetime is not None:
        kind, value = TIMED, int(max_lifetime * 1000)
    if not ordered:
        kind |= UNORDERED
    lb, pb = label.encode(), protocol.encode()
    return pack("!BBHIHH", OPEN, kind, 0, value, len(lb), len(pb)) + lb + pb


class DataChannels:
    def __init__(self, *, client: bool, now: float, discover: bool = True,
                 max_message: int = 256 * 1024, window: int = 4 * 1024 * 1024,
                 initial_tsn: int | None = None, remote_port: int = 5000,
                 tag: int | None = None) -> None:
        """``initial_tsn`` and ``tag`` are random unless given (tests that need two
        identical associations: the compiled core's objects cannot be deep-copied)."""
        self.client = client
        self.association = Association(client=client, now=now, discover=discover,
                                       max_message=max_message, window=window,
                                       initial_tsn=initial_tsn, remote_port=remote_port,
                                       tag=tag)
        self.channels: dict[int, Channel] = {}
        self.ready = False
        self._next_id = 0 if client else 1
        self._events: deque[Event] = deque()

    # -- driving ------------------------------------------------------------------------
    def set_window(self, window: int) -> None:
        """The receive window (a connection not yet admitted gets a small one)."""
        self.association.set_window(window)

    def start(self, now: float) -> None:
        self.association.start(now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        self.association.receive_datagram(data, now)

    def handle_timer(self, now: float) -> None:
        self.association.handle_timer(now)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        return self.association.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        return self.association.get_timer()

    def next_event(self) -> Event | None:
        while not self._events:
            event = self.association.next_event()
            if event is None:
                return None
            self._translate(event)
        return self._events.popleft()

    # -- channels -----------------------------------------------------------------------
    def open(self, label: str, *, protocol: str = "", ordered: bool = True,
             max_retransmits: int | None = None, max_lifetime: float | None = None) -> int:
        """Open a channel; its id. Messages may be sent at once."""
        if not self.ready:
            raise ChannelError("the association is not up")
        cid = self._next_id
        while cid in self.channels:
            cid += 2
        if cid > 65534:
            raise ChannelError("no stream id left for another channel")
        self._next_id = cid + 2
        channel = Channel(cid, label, protocol, ordered, max_retransmits, max_lifetime)
        self.channels[cid] = channel
        self.association.send(cid, PPID_DCEP, encode_open(label, protocol, ordered,
                                                          max_retransmits, max_lifetime))
        return cid

    def send(self, cid: int, data: bytes | str) -> None:
        channel = self.channels.get(cid)
        if channel is None or channel.state != "open":
            raise ChannelError(f"channel {cid} is not open")
        if isinstance(data, str):
            raw = data.encode("utf-8")
            ppid = PPID_TEXT if raw else PPID_TEXT_EMPTY
        else:
            raw = data
            ppid = PPID_BINARY if raw else PPID_BINARY_EMPTY
        if not raw:
            raw = b"\x00"
        ordered = channel.ordered or not channel.acked
        self.association.send(cid, ppid, raw, ordered=ordered,
                              max_retransmits=channel.max_retransmits,
                              lifetime=channel.max_lifetime)

    def buffered(self, cid: int) -> int:
        stream = self.association.sender.streams.get(cid)
        return stream.buffered if stream is not None else 0

    def set_threshold(self, cid: int, threshold: int) -> None:
        self.association.sender.stream(cid).threshold = threshold

    def close(self, cid: int) -> None:
        channel = self.channels.get(cid)
        if channel is None or channel.state != "open":
            return
        channel.state = "closing"
        self.association.reset_streams([cid])

    def abort(self, reason: str) -> None:
        self.association.abort(reason)

    # -- events -------------------------------------------------------------------------
    def _translate(self, event: object) -> None:
        if isinstance(event, Delivered):
            self._deliver(event.message.stream_id, event.message.ppid, event.message.data)
        elif isinstance(event, BufferedLow):
            if event.stream_id in self.channels:
                self._events.append(Low(event.stream_id))
        elif isinstance(event, StreamsReset):
            for sid in event.streams:
                self._reset(sid, event.incoming)
        elif isinstance(event, PacketSize):
            self._events.append(event)
        elif isinstance(event, Established):
            self.ready = True
            self._events.append(Ready())
        elif isinstance(event, Closed):
            self.ready = False
            for cid in list(self.channels):
                self._events.append(ChannelClosed(cid))
            self.channels.clear()
            self._events.append(Ended(event.reason, event.by_peer))

    def _deliver(self, sid: int, ppid: int, data: bytes) -> None:
        if ppid == PPID_DCEP:
            self._dcep(sid, data)
            return
        channel = self.channels.get(sid)
        if channel is None or channel.in_reset:
            return  # data on a stream no channel is open on: dropped
        channel.acked = True  # data from the peer implies it saw our OPEN (8832 6.6)
        if ppid == PPID_TEXT:
            self._events.append(Message(sid, data.decode("utf-8", "replace")))
        elif ppid == PPID_TEXT_EMPTY:
            self._events.append(Message(sid, ""))
        elif ppid == PPID_BINARY_EMPTY:
            self._events.append(Message(sid, b""))
        else:
            self._events.append(Message(sid, data))

    def _dcep(self, sid: int, data: bytes) -> None:
        if data[:1] == bytes([ACK]):
            channel = self.channels.get(sid)
            if channel is not None:
                channel.acked = True
            return
        if data[:1] != bytes([OPEN]) or len(data) < 12 or sid in self.channels:
            return
        kind, _, value, llen, plen = unpack_from("!BHIHH", data, 1)
        if 12 + llen + plen > len(data) or llen > MAX_LABEL or plen > MAX_LABEL:
            return
        label = data[12:12 + llen].decode("utf-8", "replace")
        protocol = data[12 + llen:12 + llen + plen].decode("utf-8", "replace")
        reliability = kind & 0x7F
        channel = Channel(sid, label, protocol, not kind & UNORDERED,
                          value if reliability == REXMIT else None,
                          value / 1000 if reliability == TIMED else None)
        channel.acked = True
        self.channels[sid] = channel
        self.association.send(sid, PPID_DCEP, bytes([ACK]))
        self._events.append(Opened(channel))

    def _reset(self, sid: int, incoming: bool) -> None:
        channel = self.channels.get(sid)
        if channel is None:
            return
        if incoming:
            channel.in_reset = True
            if channel.state == "open":  # the peer closed it: close ours too
                channel.state = "closing"
                self.association.reset_streams([sid])
        else:
            channel.out_reset = True
        if channel.in_reset and channel.out_reset:
            channel.state = "closed"
            del self.channels[sid]
            self._events.append(ChannelClosed(sid))
