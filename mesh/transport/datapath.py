"""The asyncio glue of the SCTP/data-channel core (mesh/proto/sctp): records in, records out.

``DataPath`` opens each DTLS record into an SCTP packet for the core
(``receive``), and on ``flush`` seals what the core has to send and hands it
to the wire, turns the core's events into ``Channel`` state and events, and
keeps one ``loop.call_at`` for the core's next timer. A batch of datagrams
read together is received first and flushed once (wire.py calls ``flush``
after each socket drain); anything else (a send from above, a datagram that
came through aioice) schedules one flush for the end of the loop turn, so
many sends in one turn go out together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh.proto import plpmtud
from mesh.proto.sctp import channels as ch
from mesh.proto.sctp.events import PacketSize

from .channel import Channel, ChannelClosedError
from .dtls import Records

log = logging.getLogger("mesh.datapath")


class DataPath:
    def __init__(self, *, on_channel: Callable[[Channel], None], on_ready: Callable[[], None],
                 on_end: Callable[[str, bool], None],
                 on_packet_size: Callable[[int, bool], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._core: ch.DataChannels | None = None
        self._records: Records | None = None
        self._send: Callable[[list[bytes]], None] = _nowhere
        self.peer_max_message = 0
        """The peer's a=max-message-size; 0: no limit."""
        self._on_channel = on_channel
        self._on_ready = on_ready
        self._on_end = on_end
        self._on_packet_size = on_packet_size
        self.channels: dict[int, Channel] = {}
        self.window = 4 * 1024 * 1024
        """The receive window the association announces (``set_window``)."""
        self.held = 0
        """Bytes the channels hold for want of a listener (channel.py bounds it)."""
        self._pending: list[Channel] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._scheduled: asyncio.Handle | None = None
        self.packet_size = plpmtud.BASE
        self.largest = 0
        """The largest SCTP packet sent so far."""
        self.ended: str | None = None

    @property
    def core(self) -> ch.DataChannels:
        assert self._core is not None, "the data path has not started"
        return self._core

    @property
    def started(self) -> bool:
        return self._core is not None

    # -- driving ----------------------------------------------------------------------
    def start(self, *, client: bool, discover: bool, records: Records,
              send: Callable[[list[bytes]], None], remote_port: int,
              peer_max_message: int) -> None:
        """DTLS is up: run the association (channels opened so far open with it).
        ``send`` takes each flush's records together (wire.py batches them)."""
        self._core = ch.DataChannels(client=client, now=self._loop.time(), discover=discover,
                                     remote_port=remote_port, window=self.window)
        self._records, self._send = records, send
        self.peer_max_message = peer_max_message
        self._core.start(self._loop.time())
        for datagram in records.backlog:
            self.receive(datagram)
        records.backlog.clear()
        self.flush()

    def set_window(self, window: int) -> None:
        self.window = window
        if self._core is not None:
            self._core.set_window(window)
            self.later()

    def receive(self, datagram: bytes) -> None:
        """One datagram from the selected pair; flushed by the caller (or ``later``)."""
        records = self._records
        if records is None or self.ended is not None or not 19 < datagram[0] < 64:
            return  # mesh negotiates no media: anything but DTLS is dropped
        plain = records.open(datagram)
        if records.closed:
            if self._core is not None:  # what arrived before the close_notify counts
                while (event := self._core.next_event()) is not None and self.ended is None:
                    self._event(event)
            self._end("the peer closed the connection", by_peer=True)
            return
        if plain:
            now = self._loop.time()
            for packet in plain:
                self.core.receive_datagram(packet, now)

    def later(self) -> None:
        """Flush at the end of this loop turn (once, however often asked)."""
        if self._scheduled is None:
            self._scheduled = self._loop.call_soon(self._flush_scheduled)

    def _flush_scheduled(self) -> None:
        self._scheduled = None
        self.flush()

    def flush(self) -> None:
        core, records, send = self._core, self._records, self._send
        if core is None or records is None:
            return
        seal = records.seal
        now = self._loop.time()
        for _ in range(4):  # events may queue more (a DCEP ACK, a channel's close)
            packets = core.datagrams_to_send(now)
            if packets:
                self.largest = max(self.largest, *map(len, packets))
                send([record for packet in packets if (record := seal(packet))])
            handled = False
            while (event := core.next_event()) is not None:
                handled = True
                self._event(event)
            if not handled:
                break
        self._arm(core.get_timer())

    def _arm(self, when: float | None) -> None:
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = None if when is None else self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        self.core.handle_timer(self._loop.time())
        self.flush()

    # -- channels ---------------------------------------------------------------------
    def open_channel(self, label: str, *, protocol: str = "", ordered: bool = True,
                     max_retransmits: int | None = None,
                     max_packet_life_time: float | None = None) -> Channel:
        channel = Channel(self, label, protocol=protocol, ordered=ordered,
                          max_retransmits=max_retransmits,
                          max_packet_life_time=max_packet_life_time)
        if self._core is not None and self._core.ready:
            self._open_now(channel)
            self.later()
        else:
            self._pending.append(channel)
        return channel

    def _open_now(self, channel: Channel) -> None:
        try:
            cid = self.core.open(channel.label, protocol=channel.protocol,
                                 ordered=channel.ordered,
                                 max_retransmits=channel.max_retransmits,
                                 max_lifetime=channel.max_packet_life_time)
        except ch.ChannelError as exc:
            log.info("data channel %r not opened: %s", channel.label, exc)
            self._closed(channel)
            return
        channel.id = cid
        self.channels[cid] = channel
        if channel.bufferedAmountLowThreshold:
            self.core.set_threshold(cid, channel.bufferedAmountLowThreshold)
        channel.readyState = "open"
        self._emit(channel, "open")

    def send(self, channel: Channel, data: bytes | str) -> None:
        if channel.id is None or self.ended is not None:
            raise ChannelClosedError("the connection is closed")
        size = len(data) if isinstance(data, bytes) else len(data.encode())
        if self.peer_max_message and size > self.peer_max_message:
            raise ValueError(f"a {size}-byte message is over the peer's maximum of "
                             f"{self.peer_max_message} bytes")
        try:
            self.core.send(channel.id, data)
        except ch.ChannelError as exc:  # the peer began closing it
            if channel.readyState == "open":
                channel.readyState = "closing"
            raise ChannelClosedError(str(exc)) from None
        self.later()

    def buffered(self, channel: Channel) -> int:
        if channel.id is None or self._core is None:
            return 0
        return self._core.buffered(channel.id)

    def set_threshold(self, channel: Channel, value: int) -> None:
        if channel.id is not None and self.ended is None and self._core is not None:
            self.core.set_threshold(channel.id, value)

    def close_channel(self, channel: Channel) -> None:
        if channel.id is None:
            if channel in self._pending:
                self._pending.remove(channel)
            self._closed(channel)
            return
        channel.readyState = "closing"
        self.core.close(channel.id)
        self.later()

    def abort(self, reason: str) -> None:
        """ABORT the association (sent at once) and close every channel. What the
        channels already queued goes first (a stream's last ``error`` tells its peer not
        to wait for a resume)."""
        if self.ended is None and self._core is not None:
            self.flush()
            self._core.abort(reason)
            self.flush()
        self._end(reason)

    # -- events -----------------------------------------------------------------------
    def _event(self, event: object) -> None:
        if isinstance(event, ch.Message):
            channel = self.channels.get(event.channel_id)
            if channel is not None:
                self._emit(channel, "message", event.data)
        elif isinstance(event, ch.Low):
            channel = self.channels.get(event.channel_id)
            if channel is not None:
                self._emit(channel, "bufferedamountlow")
        elif isinstance(event, ch.Opened):
            channel = Channel(self, event.channel.label, protocol=event.channel.protocol,
                              ordered=event.channel.ordered,
                              max_retransmits=event.channel.max_retransmits,
                              max_packet_life_time=event.channel.max_lifetime)
            channel.id = event.channel.id
            channel.readyState = "open"
            self.channels[event.channel.id] = channel
            self._on_channel(channel)
        elif isinstance(event, ch.ChannelClosed):
            closed = self.channels.pop(event.channel_id, None)
            if closed is not None:
                self._closed(closed)
        elif isinstance(event, PacketSize):
            self.packet_size = event.size
            self._on_packet_size(event.size, event.dont_fragment)
        elif isinstance(event, ch.Ready):
            pending, self._pending = self._pending, []
            for channel in pending:
                self._open_now(channel)
            self._on_ready()
        elif isinstance(event, ch.Ended):
            self._end(event.reason, event.by_peer)

    def _end(self, reason: str, by_peer: bool = False) -> None:
        if self.ended is not None:
            return
        self.ended = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        channels = list(self.channels.values()) + self._pending
        self.channels.clear()
        self._pending = []
        for channel in channels:
            self._closed(channel)
        self._on_end(reason, by_peer)

    def _closed(self, channel: Channel) -> None:
        if channel.readyState != "closed":
            channel.readyState = "closed"
            self._emit(channel, "close")

    @staticmethod
    def _emit(channel: Channel, event: str, *args: object) -> None:
        try:
            channel.emit(event, *args)
        except Exception as exc:  # a listener's bug must not wedge the data plane
            log.error("data channel %r: %s listener failed: %r", channel.label, event, exc)


def _nowhere(data: list[bytes]) -> None:
    pass
