"""Byte streams the node and HTTP layers move data through: one interface, two kinds.

``Duplex`` is what every consumer sees: ``read``, ``write``, ``write_eof``,
``close``, ``abort`` and ``wait_reset``. Two kinds implement it:

- ``TcpDuplex``: a local TCP connection (asyncio streams);
- ``Stream``: one tunnelled connection, carried by one data channel in the
  stream protocol of mesh/proto/stream.py (binary messages are bytes; text
  messages are ``ok``/``credit``/``fin``/``error``).

``splice(a, b)`` connects two duplexes until both directions have ended, with
TCP half-close carried across: EOF on one side becomes ``write_eof`` on the other.

Flow control of a ``Stream``: ``write`` sends only while the peer has granted
credit and the channel's ``bufferedAmount`` is under ``HIGH_WATER``, so a slow
network pauses the writer instead of growing a queue; ``read`` grants credit as
bytes leave, so a slow local reader pauses the peer. A received ``error``, or
the channel closing before both sides sent ``fin``, resets the stream: ``read``
and ``write`` raise ``ConnectionResetError`` and ``wait_reset`` returns, so the
splice aborts the other side at once (RST) and no client waits on a dead stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from mesh.errors import ProtocolError
from mesh.proto import stream as sp

from .channel import Channel

log = logging.getLogger("mesh.tunnel")

HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


class StreamReset(ConnectionResetError):
    """The far side of a ``Stream`` reset it; the message is its reason."""


class Duplex(Protocol):
    """A bidirectional byte stream with half-close."""

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` once the far side finished writing."""
        ...

    async def write(self, data: bytes) -> None:
        """Send ``data``, waiting while the far side is not keeping up."""
        ...

    async def write_eof(self) -> None:
        """No more bytes from this side (TCP half-close)."""
        ...

    def close(self) -> None:
        """End the stream gracefully."""
        ...

    def abort(self, reason: str) -> None:
        """End the stream at once (TCP RST), telling the far side why where it can."""
        ...

    async def wait_reset(self) -> str:
        """Return (with the reason) once the far side reset the stream."""
        ...


class TcpDuplex:
    """A local TCP connection as a ``Duplex``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self, n: int) -> bytes:
        return await self.reader.read(n)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def write_eof(self) -> None:
        if self.writer.can_write_eof() and not self.writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError):
                self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()

    def abort(self, reason: str) -> None:
        self.writer.transport.abort()

    async def wait_reset(self) -> str:
        await asyncio.Event().wait()  # a local reset shows as a read or write error
        return ""

    def peer(self) -> str:
        addr = self.writer.get_extra_info("peername")
        return str(addr[0]) if isinstance(addr, tuple) else "unknown"


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
    """One tunnelled connection on one data channel."""

    def __init__(self, channel: Channel, counters: Counters,
                 on_end: Callable[[], None] | None = None) -> None:
        self.channel = channel
        self._on_end = on_end
        self.counters = counters
        self.flow = sp.Flow(max_window=sp.MAX_WINDOW, budget=counters.window_budget)
        self.last_activity = time.monotonic()
        self.reset_reason: str | None = None
        self.reset_remotely = False
        """The reset came from the far side (its reason is worth showing)."""
        self.accepted = asyncio.Event()
        """Set when the sharer says the service took the connection (``ok``)."""
        self._inbox: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._open = asyncio.Event()
        self._reset = asyncio.Event()
        self._fin_received = False
        self._fin_sent = False
        self._ended = False
        counters.streams_open += 1
        counters.streams_total += 1
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("message", self._on_message)
        channel.on("close", self._on_close)
        channel.on("bufferedamountlow", self._writable.set)
        channel.on("open", self._open.set)
        if channel.readyState == "open":
            self._open.set()

    # -- events from the channel ------------------------------------------------
    def _on_message(self, message: bytes | str) -> None:
        try:
            if isinstance(message, bytes):
                self.flow.received(len(message))
                self.last_activity = time.monotonic()
                self._inbox.append(message)
                self._readable.set()
                return
            ctl = sp.parse(message)
        except ProtocolError as exc:
            self._reset_now(f"protocol error: {exc}", send=True)
            return
        match ctl:
            case sp.Ok():
                self.accepted.set()
            case sp.Credit(n):
                try:
                    self.flow.granted(n)
                except ProtocolError as exc:
                    self._reset_now(str(exc), send=True)
                self._writable.set()
            case sp.Fin():
                self._fin_received = True
                self._readable.set()
            case sp.Reset(reason):
                self._reset_now(reason or "reset by peer", send=False)

    def _on_close(self) -> None:
        if not (self._fin_received and self._fin_sent):
            self._reset_now("tunnel closed", send=False)
        self._end()

    def _reset_now(self, reason: str, send: bool) -> None:
        if self.reset_reason is not None:
            return
        self.reset_reason = reason
        self.reset_remotely = not send
        log.info("stream %s reset: %s", self.channel.id, reason)
        if send:
            self._send(sp.encode(sp.Reset(reason)))
        for event in (self._reset, self._readable, self._writable, self._open, self.accepted):
            event.set()

    def _send(self, data: bytes | str) -> bool:
        if self.channel.readyState != "open":
            return False
        try:
            self.channel.send(data)
        except (ValueError, ConnectionError):
            return False
        return True

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.counters.streams_open -= 1
            self.flow.close()
            if self._on_end is not None:
                self._on_end()

    def _check(self) -> None:
        if self.reset_reason is not None:
            raise StreamReset(self.reset_reason)

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
            self._send(sp.encode(sp.Credit(grant)))
        return data

    async def write(self, data: bytes) -> None:
        await self._open.wait()
        view = memoryview(data)
        while view:
            self._check()
            credit = self.flow.send_credit
            if credit <= 0 or self.channel.bufferedAmount > HIGH_WATER:
                self._writable.clear()
                await self._writable.wait()
                continue
            size = min(len(view), sp.CHUNK, credit)
            self.flow.sent(size)
            self.counters.bytes_out += size
            self.last_activity = time.monotonic()
            if not self._send(bytes(view[:size])):
                self._reset_now("tunnel closed", send=False)
                self._check()
            view = view[size:]

    async def write_eof(self) -> None:
        await self._open.wait()
        self._check()
        if not self._fin_sent:
            self._fin_sent = True
            self._send(sp.encode(sp.Fin()))

    def close(self) -> None:
        self._end()
        self.channel.close()

    def abort(self, reason: str) -> None:
        self._reset_now(reason, send=True)
        self.close()

    async def wait_reset(self) -> str:
        await self._reset.wait()
        return self.reset_reason or ""

    # -- the sharer's answer to a new stream -------------------------------------
    def accept(self) -> None:
        """The service took the connection: tell the connector (``ok``)."""
        self._send(sp.encode(sp.Ok()))


class Tapped:
    """A ``Duplex`` that first returns ``first`` (bytes a parser already read past, such
    as the start of a WebSocket after an HTTP head), and hands every byte read to ``tap``
    (the inspector's capture)."""

    def __init__(self, io: Duplex, first: bytes, tap: Callable[[bytes], None] | None) -> None:
        self.io, self.first, self.tap = io, first, tap

    async def read(self, n: int) -> bytes:
        if self.first:
            data, self.first = self.first, b""
        else:
            data = await self.io.read(n)
        if data and self.tap is not None:
            self.tap(data)
        return data

    async def write(self, data: bytes) -> None:
        await self.io.write(data)

    async def write_eof(self) -> None:
        await self.io.write_eof()

    def close(self) -> None:
        self.io.close()

    def abort(self, reason: str) -> None:
        self.io.abort(reason)

    async def wait_reset(self) -> str:
        return await self.io.wait_reset()


async def splice(a: Duplex, b: Duplex, *, idle_timeout: float = 0.0,
                 chunk: int = sp.CHUNK) -> str | None:
    """Move bytes both ways until both directions ended; return the reset reason, if any.

    A read or write error, a reset from either far side, or ``idle_timeout`` seconds
    without a byte in either direction (0: never) aborts both sides.
    """
    last = [time.monotonic()]

    async def pump(src: Duplex, dst: Duplex) -> None:
        while data := await src.read(chunk):
            last[0] = time.monotonic()
            await dst.write(data)
        await dst.write_eof()

    pumps = {asyncio.ensure_future(pump(a, b)), asyncio.ensure_future(pump(b, a))}
    resets = {asyncio.ensure_future(a.wait_reset()), asyncio.ensure_future(b.wait_reset())}
    reason: str | None = None
    tick = idle_timeout / 4 if idle_timeout > 0 else None
    try:
        while pumps and reason is None:
            done, _ = await asyncio.wait(pumps | resets, timeout=tick,
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in resets:
                    reason = task.result() or "reset"
                    continue
                pumps.discard(task)
                exc = task.exception()
                if isinstance(exc, StreamReset):
                    reason = str(exc)
                elif isinstance(exc, ConnectionError | OSError):
                    reason = "connection reset"
                elif exc is not None:
                    reason = f"internal error: {type(exc).__name__}"
                    log.warning("splice failed", exc_info=exc)
            if tick and time.monotonic() - last[0] > idle_timeout:
                reason = f"idle for {idle_timeout:g} s"
    finally:
        for task in pumps | resets:
            task.cancel()
        await asyncio.gather(*pumps, *resets, return_exceptions=True)
        if reason is not None:
            a.abort(reason)
            b.abort(reason)
        else:
            a.close()
            b.close()
    return reason


def describe(exc: BaseException) -> str:
    """A short reason for a failed dial, as the connector is told."""
    if isinstance(exc, ConnectionRefusedError):
        return "service refused the connection"
    return f"service unreachable: {getattr(exc, 'strerror', None) or 'timeout'}"

