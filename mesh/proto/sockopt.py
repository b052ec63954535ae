"""UDP socket options for datagrams that carry SCTP packets sized by path MTU discovery.

Owns two settings, shared by the TURN relay (signaling/turn_server.py) and the
peers' ICE sockets (mesh/transport): the only module of mesh.proto that takes a
socket, and it does no I/O on it, only sets options:

- DF (Linux ``IP_MTU_DISCOVER`` / ``IPV6_MTU_DISCOVER`` = ``PMTUDISC_DO``): a
  datagram too large for a link is dropped, never fragmented, so a probe that
  gets through proves the size;
- large buffers: bursts of 16 KiB datagrams overflow the ~200 KiB default
  receive buffer, and every drop halves a sender's congestion window.
"""

from __future__ import annotations

import contextlib
import socket
import sys

BUFFER = 4 * 1024 * 1024
_IP_MTU_DISCOVER, _IPV6_MTU_DISCOVER = 10, 23  # Linux <netinet/in.h>
_PMTUDISC_DONT, _PMTUDISC_DO = 0, 2


def set_dont_fragment(sock: socket.socket, on: bool = True) -> bool:
    """Set (or clear) DF on a UDP socket; False where the platform cannot."""
    if not sys.platform.startswith("linux") or sock.type != socket.SOCK_DGRAM:
        return False
    value = _PMTUDISC_DO if on else _PMTUDISC_DONT
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, value)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, value)
    except OSError:
        return False
    return True


def prepare_datagram_socket(sock: socket.socket) -> bool:
    """DF on and large buffers (the kernel caps them at net.core.rmem_max/wmem_max).

    False if DF could not be set (not a UDP socket, or not Linux).
    """
    if not set_dont_fragment(sock):
        return False
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
    return True


# -- UDP segmentation offload (Linux): many equal datagrams in one system call -----------
SOL_UDP = 17
UDP_SEGMENT, UDP_GRO = 103, 104  # Linux <linux/udp.h>
GSO_MAX_BYTES = 65000
"""Payload bytes per sendmsg (the kernel's limit is 64 KiB less the headers)."""
GSO_MAX_SEGMENTS = 64
GSO_MAX_SEGMENT = 2048
"""Larger datagrams go one per call: measured on loopback, 16 KiB packets moved
400 MB/s one by one and 310 MB/s in runs; 1189-byte packets cost the sender
about a quarter less CPU in runs (benchmarks/cpu.py, MESH_UDP_OFFLOAD=on/off)."""


def gso_supported(sock: socket.socket) -> bool:
    """Whether ``sendmsg`` may carry a ``UDP_SEGMENT`` size on this socket (Linux 4.18+)."""
    if not sys.platform.startswith("linux") or sock.type != socket.SOCK_DGRAM:
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)  # 0: no default size, per call only
    except OSError:
        return False
    return True


def set_gro(sock: socket.socket, on: bool) -> bool:
    """Let the kernel hand over runs of datagrams as one buffer (Linux 5.0+)."""
    if not sys.platform.startswith("linux") or sock.type != socket.SOCK_DGRAM:
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1 if on else 0)
    except OSError:
        return False
    return True
