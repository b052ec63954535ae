"""The selected candidate pair's socket, read and written in batches.

asyncio's datagram transport reads one datagram per event-loop turn, which
caps a 1400-byte path far below what the core can do. Once ICE has chosen a
pair, ``Wire`` takes over reading its UDP socket with public calls only (the
transport's ``pause_reading``, the loop's ``add_reader`` on a duplicate of the
socket's descriptor): each readiness drains the socket until it
would block (at most ``BATCH`` datagrams), hands DTLS datagrams to
``receive`` and everything else (STUN consent checks, TURN responses) to the
asyncio protocol that owned the socket, exactly as asyncio would have, then
calls ``done`` once, so the core takes one acknowledgement decision per batch.

Sending: straight ``sendto`` on the socket; whenever the kernel buffer is
full, or the transport already holds a backlog, the transport's own
``sendto`` queues it, so order is kept. A relayed pair is framed as TURN
ChannelData on the channel aioice bound (_private.py), falling back to
aioice's path whenever aioice has a binding to make or refresh. TURN over
TCP is left to aioice entirely.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from mesh.proto import sockopt

from . import _private

BATCH = 512
MAX_DATAGRAM = 65536


class Wire:
    def __init__(self, pair: Any, receive: Callable[[bytes], None],
                 done: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._pair = pair
        self._receive = receive
        self._done = done
        self.remote: tuple[str, int] = pair.remote_addr
        self._protocol = pair.protocol
        self._transport = pair.protocol.transport
        self._turn = _private.turn_client(self._transport)
        self.relayed = self._turn is not None
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        outer = _private.turn_socket_transport(self._turn) if self._turn else self._transport
        self._outer = outer
        self._raw = outer.get_extra_info("socket")
        if self._raw is not None and self._raw.type == socket.SOCK_DGRAM:
            # a socket object of our own on a duplicate descriptor: asyncio's stays its
            self._sock = socket.socket(self._raw.family, socket.SOCK_DGRAM,
                                       fileno=os.dup(self._raw.fileno()))
            self._sock.setblocking(False)
        self._connected = self._sock is not None and _connected(self._sock)

    # -- options --------------------------------------------------------------------
    def prepare(self) -> bool:
        """DF and large buffers; False where probes could not prove a size."""
        if self._raw is not None and self._raw.type == socket.SOCK_STREAM:
            return True  # TURN over TCP: the relay's own UDP socket sets DF
        return self._sock is not None and sockopt.prepare_datagram_socket(self._sock)

    def dont_fragment(self, on: bool) -> None:
        if self._sock is not None:
            sockopt.set_dont_fragment(self._sock, on)

    # -- reading --------------------------------------------------------------------
    def take_over(self) -> None:
        """Read the socket here from now on (a no-op for TURN over TCP)."""
        if self._sock is None or self._fd is not None or self._outer.is_closing():
            return
        self._outer.pause_reading()
        fd = self._sock.fileno()
        self._loop.add_reader(fd, self._readable)
        self._fd = fd

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        receive = self._receive
        turn = self._turn
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # an ICMP error surfacing on the socket: nothing to read
            if not data:
                continue
            first = data[0]
            if turn is None:
                if 19 < first < 64:
                    receive(data)
                else:
                    self._protocol.datagram_received(data, addr)
            elif 0x40 <= first < 0x80 and len(data) >= 4:
                channel, length = struct.unpack_from("!HH", data, 0)
                if turn.channel_to_peer.get(channel) == self.remote and len(data) >= 4 + length:
                    payload = data[4:4 + length]
                    if payload and 19 < payload[0] < 64:
                        receive(payload)
                        continue
                turn.datagram_received(data, addr)
            else:
                turn.datagram_received(data, addr)
        self._done()

    # -- sending --------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        sock = self._sock
        if self._turn is not None:
            self._send_relayed(data)
            return
        if sock is None or self._transport.get_write_buffer_size():
            self._transport.sendto(data, self.remote)
            return
        try:
            sock.sendto(data, self.remote)
        except (BlockingIOError, InterruptedError):
            self._transport.sendto(data, self.remote)
        except OSError:
            pass  # EMSGSIZE for a probe over the local MTU, a route gone: a lost datagram

    def _send_relayed(self, data: bytes) -> None:
        turn = self._turn
        channel = _private.turn_channel(turn, self.remote)
        if channel is None:
            self._transport.sendto(data, self.remote)  # aioice binds or refreshes first
            return
        frame = struct.pack("!HH", channel, len(data)) + data
        sock = self._sock
        if sock is None:  # TURN over TCP: ChannelData padded to 4 bytes (RFC 8656 12.5)
            self._outer.write(frame + b"\x00" * (-len(frame) % 4))
            return
        if self._outer.get_write_buffer_size():
            self._outer.sendto(frame)
            return
        try:
            if self._connected:
                sock.send(frame)
            else:
                self._outer.sendto(frame)
        except (BlockingIOError, InterruptedError):
            self._outer.sendto(frame)
        except OSError:
            pass

    def close(self) -> None:
        """Stop reading; the transport reads again if it is still open."""
        if self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._fd = None
            if not self._outer.is_closing():
                with contextlib.suppress(Exception):
                    self._outer.resume_reading()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
