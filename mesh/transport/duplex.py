"""Local byte streams and how two of them are joined: ``Duplex``, ``TcpDuplex``,
``Tapped`` and ``splice``.

``Duplex`` is what every consumer sees: ``read``, ``write``, ``write_eof``,
``close``, ``abort`` and ``wait_reset``. ``TcpDuplex`` is a local TCP
connection (asyncio streams); a tunnelled one is ``Stream`` (stream.py).
``splice(a, b)`` connects two duplexes until both directions have ended, with
TCP half-close carried across: EOF on one side becomes ``write_eof`` on the
other; a reset on either side aborts both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from mesh.proto import stream as sp

log = logging.getLogger("mesh.tunnel")


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

