"""Packetization-layer path MTU discovery for SCTP over DTLS (RFC 8899), sans-I/O.

Owns the search for the largest SCTP packet a path carries, and the wire
format of the capability and the probe; fastpath.py sends and receives them.

Wire format:

- capability, in INIT and INIT-ACK: parameter ``CAP_TYPE`` (0x8D5E; its two
  high bits ``10`` tell an endpoint that does not know it to skip it and go
  on, RFC 9260 section 3.2.1), value ``u32``: the largest SCTP packet this
  endpoint accepts. Only a peer that sent it is ever probed, so a stock
  peer (aiortc reads 1500 bytes per datagram, browsers about 1200) never
  sees a packet over the base size.
- probe: one SCTP packet of exactly the probed size: a HEARTBEAT chunk whose
  Heartbeat Info parameter is ``b"MPLP" | u32 size | 8 random bytes``, then a
  PAD chunk (RFC 4820, type 0x84) of zeros filling the rest. A peer answers
  any HEARTBEAT with a HEARTBEAT-ACK that echoes the info (RFC 9260 section
  8.3), so answering takes no code; an ack whose info matches the probe in
  flight confirms the size. The probe travels with DF set on the UDP socket,
  so a size only counts if the path carries it unfragmented.

Search: the candidate sizes, largest first (a loopback or jumbo-frame path
confirms 16 KiB at once; an Ethernet path falls through to 1400), each tried
``MAX_PROBES`` times; the first size acknowledged is taken and the search
ends. 16384 is the top: the largest DTLS record plaintext. A black hole (the
data stops being acknowledged at a size once confirmed) drops back to the
base; ``restart`` searches again later.
"""

from __future__ import annotations

import secrets
from struct import pack, unpack_from

from google_crc32c import value as crc32c

CAP_TYPE = 0x8D5E
BASE = 1189
"""aiortc's packet size: fits the minimum IPv6 MTU after UDP and DTLS."""
LOCAL_MAX = 16384
"""The largest DTLS record plaintext (RFC 9147)."""
CANDIDATES = (16384, 8192, 4096, 1400)
MAX_PROBES = 2
PROBE_TIMEOUT = 0.5
RAISE_INTERVAL = 600.0
"""RFC 8899's PMTU_RAISE_TIMER: search again this long after settling below the top."""

MAGIC = b"MPLP"
HEARTBEAT, PAD, HB_INFO = 4, 0x84, 1
_HEADER = 12
_HB_CHUNK = 4 + 4 + 16  # chunk header, parameter header, info


def user_data_max(packet_size: int) -> int:
    """The most user data one DATA chunk can carry in a packet of this size."""
    return (packet_size - _HEADER - 16) // 4 * 4


def capability(max_packet: int = LOCAL_MAX) -> tuple[int, bytes]:
    """The INIT/INIT-ACK parameter announcing the largest packet we accept."""
    return CAP_TYPE, pack("!L", max_packet)


def peer_capability(params: list[tuple[int, bytes]]) -> int | None:
    """The peer's largest accepted packet, or None if it did not say (a stock peer)."""
    for kind, value in params:
        if kind == CAP_TYPE and len(value) == 4:
            size: int = unpack_from("!L", value)[0]
            return size if size >= BASE else None
    return None


def probe_info(size: int) -> bytes:
    return MAGIC + pack("!L", size) + secrets.token_bytes(8)


def probe_packet(src_port: int, dst_port: int, tag: int, size: int, info: bytes) -> bytes:
    """An SCTP packet of exactly ``size`` bytes: HEARTBEAT(info) + PAD."""
    if size % 4 or size < _HEADER + _HB_CHUNK + 4 or len(info) != 16:
        raise ValueError(f"cannot build a {size}-byte probe")
    hb = pack("!BBHHH", HEARTBEAT, 0, _HB_CHUNK, HB_INFO, 4 + len(info)) + info
    pad_len = size - _HEADER - _HB_CHUNK
    pad = pack("!BBH", PAD, 0, pad_len) + bytes(pad_len - 4)
    header = pack("!HHL", src_port, dst_port, tag)
    checksum = crc32c(header + b"\x00\x00\x00\x00" + hb + pad)
    return header + pack("<L", checksum) + hb + pad


class Search:
    """Which packet size to use on one path, and which probe to send next."""

    def __init__(self, peer_max: int, local_max: int = LOCAL_MAX,
                 candidates: tuple[int, ...] = CANDIDATES, base: int = BASE) -> None:
        top = min(peer_max, local_max)
        self.base = base
        self.sizes = sorted((s for s in candidates if base < s <= top), reverse=True)
        self.current = base
        self.probes_sent = 0
        self._index = 0
        self._attempts = 0
        self._outstanding: bytes | None = None

    @property
    def done(self) -> bool:
        """No probe left to send until ``restart``."""
        return self._outstanding is None and (
            self._index >= len(self.sizes) or self.sizes[self._index] <= self.current)

    @property
    def at_top(self) -> bool:
        return not self.sizes or self.current >= self.sizes[0]

    def probe(self) -> tuple[int, bytes] | None:
        """The next probe to send: ``(size, info)``, or None when the search is over."""
        if self._outstanding is not None:
            raise RuntimeError("a probe is already in flight")
        if self.done:
            return None
        size = self.sizes[self._index]
        self._outstanding = probe_info(size)
        self._attempts += 1
        self.probes_sent += 1
        return size, self._outstanding

    def acked(self, info: bytes) -> bool:
        """A HEARTBEAT-ACK echoed ``info``; True if it confirmed the probe in flight."""
        if self._outstanding is None or info != self._outstanding:
            return False
        self.current = unpack_from("!L", info, 4)[0]
        self._outstanding = None
        self._index = len(self.sizes)
        self._attempts = 0
        return True

    def timed_out(self) -> None:
        """The probe in flight got no answer in time."""
        self._outstanding = None
        if self._attempts >= MAX_PROBES:
            self._index += 1
            self._attempts = 0

    def black_hole(self) -> bool:
        """Data stopped getting through at the current size: back to the base."""
        if self.current <= self.base:
            return False
        self.current = self.base
        self._outstanding = None
        self._index = len(self.sizes)
        return True

    def restart(self) -> None:
        """Search again from the top (after ``RAISE_INTERVAL``)."""
        self._outstanding = None
        self._index = 0
        self._attempts = 0
