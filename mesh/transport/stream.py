"""Tunnelled connections: ``Stream``, a ``Duplex`` (duplex.py) carried by a data channel.

One stream is one TCP connection, carried by one data channel at a time in the
stream protocol of mesh/proto/stream.py (binary messages are bytes; text
messages are ``ok``/``credit``/``fin``/``error``/``resume``). A resumable stream
(an id and a resume timeout) moves to a new channel when the peer connection
is lost or replaced, and resends what the peer lacks (mesh/proto/resume.py).

Flow control of a ``Stream``: ``write`` sends only while the peer has granted
credit and the channel's ``bufferedAmount`` is under ``HIGH_WATER``, so a slow
network pauses the writer instead of growing a queue; ``read`` grants credit as
bytes leave, so a slow local reader pauses the peer. A received ``error``, or
the channel closing before both sides sent ``fin`` (an unresumable stream, or a
resumable one whose peer did not come back in time), resets the stream: ``read``
and ``write`` raise ``ConnectionResetError`` and ``wait_reset`` returns, so the
splice aborts the other side at once (RST) and no client waits on a dead stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.errors import ProtocolError
from mesh.proto import resume as rs
from mesh.proto import stream as sp

from .channel import Channel
from .duplex import StreamReset

log = logging.getLogger("mesh.tunnel")

HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


@dataclass
class Counters:
    """Bytes moved, shared by all streams of a peer."""

    bytes_in: int = 0
    """Bytes received from the peer (handed to local readers)."""
    bytes_out: int = 0
    """Bytes sent to the peer."""
    streams_open: int = 0
    streams_total: int = 0
    window_budget: sp.WindowBudget = field(default_factory=sp.WindowBudget)
    """Receive-window growth shared by the peer's streams (mesh/proto/stream.py)."""


class Stream:
    """One tunnelled connection on one data channel, or, when resumable, on a succession
    of them: a stream with an id (``sid``) and a ``resume_timeout`` outlives its channel.
    When the channel closes without FINs or an error both ways (the peer connection was
    lost, or is being replaced), the stream waits, reads and writes paused, until
    ``resume(channel)`` binds a new one and the peers have exchanged ``resume``
    (mesh/proto/resume.py), or until ``resume_timeout`` seconds have passed (then it
    resets, as an unresumable stream does at once)."""

    def __init__(self, channel: Channel, counters: Counters,
                 on_end: Callable[[], None] | None = None, *, sid: str | None = None,
                 resume_timeout: float = 0.0,
                 on_resumed: Callable[[Stream, float], None] | None = None,
                 opened_here: bool = True) -> None:
        self.channel: Channel | None = None
        self._on_end = on_end
        self.counters = counters
        self.sid = sid
        self.resume_timeout = resume_timeout if sid else 0.0
        self.retained = rs.Retained() if self.resume_timeout > 0 else None
        """Bytes sent and not yet consumed by the peer (resumable streams only)."""
        self.on_resumed = on_resumed
        """``on_resumed(stream, gap_s)`` once a resume completed (its owner may change)."""
        self.flow = sp.Flow(max_window=sp.MAX_WINDOW, budget=counters.window_budget)
        self.last_activity = time.monotonic()
        self.reset_reason: str | None = None
        self.reset_remotely = False
        """The reset came from the far side (its reason is worth showing)."""
        self.accepted = asyncio.Event()
        """Set when the sharer says the service took the connection (``ok``)."""
        self.waiting_since: float | None = None
        """monotonic() when the stream lost its channel (None: it has one)."""
        self._inbox: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._open = asyncio.Event()
        self._live = asyncio.Event()
        """Set while bound to a channel both sides agree on (not waiting, not syncing)."""
        self._reset = asyncio.Event()
        self._syncing = False
        self._timer: asyncio.TimerHandle | None = None
        self._fin_received = False
        self._fin_sent = False
        self._ok_sent = False
        self._heard = not opened_here
        """A message came from the peer (a stream it opened: its open did)."""
        self._peer_ended = False
        """The peer closed the stream on purpose (``end``): no resume is coming."""
        self._ended = False
        self._listeners: list[tuple[str, Callable[..., None]]] = []
        counters.streams_open += 1
        counters.streams_total += 1
        self._bind(channel)
        self._live.set()

    @property
    def waiting(self) -> bool:
        return self.waiting_since is not None

    @property
    def held_bytes(self) -> int:
        """Bytes this stream holds for its peer or its reader (kept for a resume)."""
        return (self.retained.size if self.retained else 0) + sum(map(len, self._inbox))

    # -- channels -----------------------------------------------------------------
    def _bind(self, channel: Channel) -> None:
        self.channel = channel
        channel.bufferedAmountLowThreshold = LOW_WATER
        self._listeners = [("message", self._on_message), ("close", self._on_close),
                           ("bufferedamountlow", self._writable.set),
                           ("open", self._on_open)]
        for event, callback in self._listeners:
            channel.on(event, callback)
        if channel.readyState == "open":
            self._on_open()

    def _unbind(self) -> Channel | None:
        channel, self.channel = self.channel, None
        if channel is not None:
            for event, callback in self._listeners:
                channel.remove_listener(event, callback)
        self._listeners = []
        return channel

    def _on_open(self) -> None:
        self._open.set()
        if self._syncing and self.channel is not None:
            self._send(sp.encode(self.flow.resume_message(self._fin_received, self._ok_sent,
                                                          new=not self._heard)))

    def adopt(self, peer: sp.Resume) -> None:
        """A stream the sharer never saw open (its open was lost with the connection):
        opened now by the connector's ``resume`` (``new``) on this stream's channel."""
        self._live.clear()
        self._syncing = True
        self.waiting_since = time.monotonic()
        self._on_open()  # our resume: nothing received yet
        self._resumed(peer)

    def resume(self, channel: Channel) -> bool:
        """Carry on over ``channel`` (a ``tcp-resume`` channel): send ``resume``; the
        peer's ``resume`` completes it. A stream still bound to an older channel leaves
        it (a move to a better path). False if the stream has ended."""
        if self._ended or self.reset_reason is not None or self.retained is None:
            channel.close()
            return False
        old = self._unbind()
        if old is not None:
            old.close()
        self._live.clear()
        self._syncing = True
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        self._bind(channel)
        return True

    def _wait(self) -> None:
        """The channel is gone but the stream may resume: pause, start the clock."""
        self._unbind()
        self._live.clear()
        self._syncing = False
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        if self._timer is None:
            left = self.waiting_since + self.resume_timeout - time.monotonic()
            self._timer = asyncio.get_running_loop().call_later(max(0.0, left), self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.waiting and not self._live.is_set():
            self._reset_now(f"the peer did not come back within {self.resume_timeout:g} s",
                            send=False)
            self.close()

    def _resumed(self, peer: sp.Resume) -> None:
        assert self.retained is not None
        self.flow.resumed(peer)
        for chunk in self.retained.since(peer.rx):
            self._send(chunk)
        if self._fin_sent and not peer.fin:
            self._send(sp.encode(sp.Fin()))
        if peer.ok:
            self.accepted.set()
        gap = time.monotonic() - (self.waiting_since or time.monotonic())
        self._syncing = False
        self.waiting_since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._live.set()
        self._writable.set()
        if self.on_resumed is not None:
            self.on_resumed(self, gap)

    # -- events from the channel ------------------------------------------------
    def _on_message(self, message: bytes | str) -> None:
        self._heard = True
        try:
            if isinstance(message, bytes):
                self.flow.received(len(message))
                self.last_activity = time.monotonic()
                self._inbox.append(message)
                self._readable.set()
                return
            ctl = sp.parse(message)
            match ctl:
                case sp.Ok():
                    self.accepted.set()
                case sp.Credit(n, ack):
                    self.flow.granted(n)
                    if ack is not None and self.retained is not None:
                        self.retained.ack(ack)
                    self._writable.set()
                case sp.Fin():
                    self._fin_received = True
                    self._readable.set()
                case sp.Reset(reason):
                    self._reset_now(reason or "reset by peer", send=False)
                case sp.End():
                    self._peer_ended = True
                case sp.Resume():
                    if not self._syncing:
                        raise ProtocolError("resume outside a resumed channel")
                    self._resumed(ctl)
        except ProtocolError as exc:
            self._reset_now(f"protocol error: {exc}", send=True)

    def _on_close(self) -> None:
        if self._fin_received and self._fin_sent and not self._syncing:
            self._end()
        elif (self.retained is not None and self.reset_reason is None and not self._ended
              and not self._peer_ended):
            self._wait()
        else:
            self._reset_now("tunnel closed", send=False)
            self._end()

    def _reset_now(self, reason: str, send: bool) -> None:
        if self.reset_reason is not None:
            return
        self.reset_reason = reason
        self.reset_remotely = not send
        log.info("stream %s reset: %s", self.sid or (self.channel and self.channel.id), reason)
        if send:
            self._send(sp.encode(sp.Reset(reason)))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for event in (self._reset, self._readable, self._writable, self._open, self.accepted,
                      self._live):
            event.set()

    def _send(self, data: bytes | str) -> bool:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return False
        try:
            channel.send(data)
        except (ValueError, ConnectionError):
            return False
        return True

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.counters.streams_open -= 1
            self.flow.close()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._on_end is not None:
                self._on_end()

    def _check(self) -> None:
        if self.reset_reason is not None:
            raise StreamReset(self.reset_reason)

    def rehome(self, counters: Counters) -> None:
        """Count this stream with ``counters`` from now on (it moved to another peer)."""
        if counters is not self.counters and not self._ended:
            self.counters.streams_open -= 1
            counters.streams_open += 1
            self.counters = counters

    # -- Duplex ------------------------------------------------------------------
    async def read(self, n: int) -> bytes:
        while not self._inbox:
            self._check()
            if self._fin_received:
                return b""
            self._readable.clear()
            await self._readable.wait()
        self._check()
        data = self._inbox.popleft()
        if len(data) > n:
            self._inbox.appendleft(data[n:])
            data = data[:n]
        self.counters.bytes_in += len(data)
        self.last_activity = time.monotonic()
        grant = self.flow.consumed(len(data), self.last_activity)
        if grant:
            ack = self.flow.consumed_total if self.retained is not None else None
            self._send(sp.encode(sp.Credit(grant, ack)))
        return data

    async def write(self, data: bytes) -> None:
        await self._open.wait()
        view = memoryview(data)
        while view:
            self._check()
            if not self._live.is_set():
                await self._live.wait()
                continue
            credit = self.flow.send_credit
            channel = self.channel
            if credit <= 0 or channel is None or channel.bufferedAmount > HIGH_WATER:
                self._writable.clear()
                await self._writable.wait()
                continue
            size = min(len(view), sp.CHUNK, credit)
            chunk = bytes(view[:size])
            self.flow.sent(size)
            if self.retained is not None:
                self.retained.add(chunk)
            self.counters.bytes_out += size
            self.last_activity = time.monotonic()
            if not self._send(chunk) and self.retained is None:
                self._reset_now("tunnel closed", send=False)
                self._check()
            view = view[size:]

    async def write_eof(self) -> None:
        await self._open.wait()
        self._check()
        if not self._fin_sent:
            self._fin_sent = True
            if self._live.is_set():
                self._send(sp.encode(sp.Fin()))  # else the resume sends it

    def close(self) -> None:
        if self.retained is not None and self.reset_reason is None and not (
                self._fin_sent and self._fin_received):
            self._send(sp.encode(sp.End()))  # on purpose: the peer is not to wait
        self._end()
        channel = self._unbind()
        if channel is not None:
            channel.close()

    def abort(self, reason: str) -> None:
        self._reset_now(reason, send=True)
        self.close()

    async def wait_reset(self) -> str:
        await self._reset.wait()
        return self.reset_reason or ""

    # -- the sharer's answer to a new stream -------------------------------------
    def accept(self) -> None:
        """The service took the connection: tell the connector (``ok``)."""
        self._ok_sent = True
        self._send(sp.encode(sp.Ok()))
