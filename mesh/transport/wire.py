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
``sendto`` queues it, so order is kept. ``send_many`` takes a turn's
datagrams at once: on Linux, runs of equal size go out as one ``sendmsg``
with UDP segmentation offload (mesh/proto/udpbatch.py), and the socket reads
with UDP GRO, so a run arrives as one buffer, split here; where the kernel
refuses either, datagrams go one by one as before. A relayed pair is framed as TURN
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

from mesh.proto import sockopt, udpbatch

from . import _private

BATCH = 512
MAX_DATAGRAM = 65536


class Wire:
    def __init__(self, pair: Any, receive: Callable[[bytes], None],
                 done: Callable[[], None], offload: bool = True) -> None:
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
        self._offload = offload
        self._gso = False
        self._gro = False

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
        if self._offload:
            self._gso = sockopt.gso_supported(self._sock) and (
                self._turn is None or self._connected)
            self._gro = sockopt.set_gro(self._sock, True)
        fd = self._sock.fileno()
        self._loop.add_reader(fd, self._readable)
        self._fd = fd

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        gro = self._gro
        for _ in range(BATCH):
            try:
                if gro:
                    data, ancillary, _flags, addr = sock.recvmsg(MAX_DATAGRAM, _GRO_SPACE)
                else:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # an ICMP error surfacing on the socket: nothing to read
            if not data:
                continue
            if gro and ancillary:
                for datagram in udpbatch.split(data, _segment(ancillary)):
                    self._dispatch(datagram, addr)
            else:
                self._dispatch(data, addr)
        self._done()

    def _dispatch(self, data: bytes, addr: Any) -> None:
        turn = self._turn
        first = data[0]
        if turn is None:
            if 19 < first < 64:
                self._receive(data)
            else:
                self._protocol.datagram_received(data, addr)
        elif 0x40 <= first < 0x80 and len(data) >= 4:
            channel, length = struct.unpack_from("!HH", data, 0)
            # any channel this allocation bound (as aioice would deliver it): the two
            # ends' nominated pairs may differ, so the peer's data can come from another
            # of its candidates than the one this side sends to; DTLS authenticates it
            if channel in turn.channel_to_peer and len(data) >= 4 + length:
                payload = data[4:4 + length]
                if payload and 19 < payload[0] < 64:
                    self._receive(payload)
                    return
            turn.datagram_received(data, addr)
        else:
            turn.datagram_received(data, addr)

    # -- sending --------------------------------------------------------------------
    def send_many(self, datagrams: list[bytes]) -> None:
        """A turn's datagrams, in order; runs of equal size in one call where possible."""
        if not self._gso or len(datagrams) < 2:
            for datagram in datagrams:
                self.send(datagram)
            return
        for size, run in udpbatch.runs(datagrams, sockopt.GSO_MAX_BYTES,
                                       sockopt.GSO_MAX_SEGMENTS):
            if len(run) == 1 or size > sockopt.GSO_MAX_SEGMENT or not self._send_run(size, run):
                for datagram in run:
                    self.send(datagram)

    def _send_run(self, size: int, run: list[bytes]) -> bool:
        """One ``sendmsg`` for ``run``; False to send it datagram by datagram instead."""
        sock = self._sock
        if sock is None:
            return False
        turn = self._turn
        if turn is not None:
            channel = _private.turn_channel(turn, self.remote)
            if channel is None or self._outer.get_write_buffer_size():
                return False
            header = struct.pack("!H", channel)
            run = [header + struct.pack("!H", len(d)) + d for d in run]
            size += 4
        elif self._transport.get_write_buffer_size():
            return False
        control = [(sockopt.SOL_UDP, sockopt.UDP_SEGMENT, struct.pack("=H", size))]
        try:
            if turn is not None:
                sock.sendmsg([b"".join(run)], control)
            else:
                sock.sendmsg([b"".join(run)], control, 0, self.remote)
        except (BlockingIOError, InterruptedError):
            return False  # one by one: the transport queues what the kernel cannot take
        except OSError:
            self._gso = False  # EIO, EINVAL: no offload on this route; as before from now on
            return False
        return True

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
            if self._gro and self._sock is not None:  # asyncio reads one datagram per call
                sockopt.set_gro(self._sock, False)
                self._gro = False
            if not self._outer.is_closing():
                with contextlib.suppress(Exception):
                    self._outer.resume_reading()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_GRO_SPACE = socket.CMSG_SPACE(4)


def _segment(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The segment size of a coalesced read (0: not coalesced)."""
    for level, kind, value in ancillary:
        if level == sockopt.SOL_UDP and kind == sockopt.UDP_GRO and len(value) >= 4:
            return int(struct.unpack_from("=i", value)[0])  # the kernel puts an int
    return 0


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
