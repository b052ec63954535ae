"""The bridge between one TCP connection and one data channel.

Speaks the stream protocol of streamproto.py. Two pumps per stream:

- upstream: read the local socket only while the peer has granted credit and
  the channel's ``bufferedAmount`` is under ``HIGH_WATER`` (so a slow network
  pauses the socket reader instead of growing a queue); EOF becomes ``fin``.
- downstream: write received bytes to the local socket, await ``drain()``
  (so a slow local reader pauses the peer through withheld credit), grant
  credit as bytes leave; ``fin`` becomes ``write_eof()`` (TCP half-close).

A local reset or a failed dial sends ``error`` and aborts; a received
``error``, or the channel closing before both sides sent ``fin``, aborts the
local socket at once (RST), so a client never waits on a dead stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from aiortc import RTCDataChannel
from aiortc.exceptions import InvalidStateError

from mesh.errors import ProtocolError
from mesh.proto import stream as sp

log = logging.getLogger("mesh.tunnel")

HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


@dataclass
class Counters:
    """Bytes moved, shared by all streams of a peer."""

    bytes_in: int = 0
    """Bytes received from the peer (written to local sockets)."""
    bytes_out: int = 0
    """Bytes sent to the peer (read from local sockets)."""
    streams_open: int = 0
    streams_total: int = 0
    window_budget: sp.WindowBudget = field(default_factory=sp.WindowBudget)
    """Receive-window growth shared by the peer's streams (streamproto.py)."""


_FIN = object()


class Stream:
    """One tunnelled TCP connection."""

    def __init__(self, channel: RTCDataChannel, counters: Counters,
                 idle_timeout: float = 0.0) -> None:
        self.channel = channel
        self.idle_timeout = idle_timeout
        self.last_activity = time.monotonic()
        self.counters = counters
        self.flow = sp.Flow(max_window=sp.MAX_WINDOW, budget=counters.window_budget)
        self.opened = asyncio.Event()
        self.reset_reason: str | None = None
        self._inbox: asyncio.Queue[bytes | object] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._fin_received = False
        self._fin_sent = False
        self._reset = asyncio.Event()
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("message", self._on_message)
        channel.on("close", self._on_close)
        channel.on("bufferedamountlow", self._wake.set)
        self._channel_open = asyncio.Event()
        if channel.readyState == "open":
            self._channel_open.set()
        channel.on("open", self._channel_open.set)

    # -- events from aiortc -------------------------------------------------
    def _on_message(self, message: bytes | str) -> None:
        try:
            if isinstance(message, bytes):
                self.flow.received(len(message))
                self.last_activity = time.monotonic()
                self._inbox.put_nowait(message)
                return
            ctl = sp.parse(message)
        except ProtocolError as exc:
            self._abort(f"protocol error: {exc}", send=True)
            return
        match ctl:
            case sp.Ok():
                self.opened.set()
            case sp.Credit(n):
                try:
                    self.flow.granted(n)
                except ProtocolError as exc:
                    self._abort(str(exc), send=True)
                self._wake.set()
            case sp.Fin():
                self._fin_received = True
                self._inbox.put_nowait(_FIN)
            case sp.Reset(reason):
                self._abort(reason or "reset by peer", send=False)

    def _on_close(self) -> None:
        if not (self._fin_received and self._fin_sent):
            self._abort("tunnel closed", send=False)

    def _abort(self, reason: str, send: bool) -> None:
        if self.reset_reason is not None:
            return
        self.reset_reason = reason
        log.info("stream %s reset: %s", self.channel.id, reason)
        self._reset.set()
        if send:
            self._send_ctl(sp.Reset(reason))
        self._inbox.put_nowait(_FIN)
        self._wake.set()
        self.opened.set()
        self._channel_open.set()

    def _send_ctl(self, msg: sp.Control) -> None:
        self._send(sp.encode(msg))

    def _send(self, data: bytes | str) -> bool:
        if self.channel.readyState != "open":
            return False
        try:
            self.channel.send(data)
        except (InvalidStateError, ValueError, ConnectionError):
            return False
        return True

    # -- API ------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """Refuse or reset the stream (e.g. the service refused the connection)."""
        self._abort(reason, send=True)
        self.channel.close()

    def accept(self) -> None:
        """Sharer side: tell the connector the service accepted the connection."""
        self._send_ctl(sp.Ok())

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Bridge until both directions are finished or the stream is reset."""
        self.counters.streams_open += 1
        self.counters.streams_total += 1
        up = asyncio.create_task(self._upstream(reader))
        down = asyncio.create_task(self._downstream(writer))
        reset = asyncio.create_task(self._reset.wait())
        pending = {up, down}
        try:
            tick = self.idle_timeout / 4 if self.idle_timeout > 0 else None
            while pending:
                done, _ = await asyncio.wait(pending | {reset}, timeout=tick,
                                             return_when=asyncio.FIRST_COMPLETED)
                if reset in done:
                    break
                pending -= done
                if tick and time.monotonic() - self.last_activity > self.idle_timeout:
                    self._abort(f"idle for {self.idle_timeout:g} s", send=True)
                    break
        finally:
            for task in (up, down, reset):
                task.cancel()
            self.counters.streams_open -= 1
            self.flow.close()
            if self.reset_reason is not None:
                writer.transport.abort()
            else:
                writer.close()
            self.channel.close()

    async def _upstream(self, reader: asyncio.StreamReader) -> None:
        ch = self.channel
        await self._channel_open.wait()
        while self.reset_reason is None:
            if self.flow.send_credit <= 0 or ch.bufferedAmount > HIGH_WATER:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                data = await reader.read(min(sp.CHUNK, self.flow.send_credit))
            except (ConnectionError, OSError):
                self._abort("connection reset", send=True)
                return
            if self.reset_reason is not None:
                return
            if not data:
                self._fin_sent = True
                self._send_ctl(sp.Fin())
                return
            self.flow.sent(len(data))
            self.last_activity = time.monotonic()
            self.counters.bytes_out += len(data)
            if not self._send(data):
                self._abort("tunnel closed", send=False)
                return

    async def _downstream(self, writer: asyncio.StreamWriter) -> None:
        while True:
            item = await self._inbox.get()
            if item is _FIN:
                if self.reset_reason is None and writer.can_write_eof():
                    with contextlib.suppress(ConnectionError, OSError):
                        writer.write_eof()
                return
            assert isinstance(item, bytes)
            try:
                writer.write(item)
                await writer.drain()
            except (ConnectionError, OSError):
                self._abort("connection reset", send=True)
                return
            self.counters.bytes_in += len(item)
            grant = self.flow.consumed(len(item), time.monotonic())
            if grant:
                self._send_ctl(sp.Credit(grant))
