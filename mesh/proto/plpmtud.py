"""Packetization-layer path MTU discovery for SCTP over DTLS (RFC 8899), sans-I/O.

Owns the search for the largest SCTP packet a path carries, and the wire
format of the capability and the probe; mesh/proto/sctp/pathmtu.py drives them.

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

Search: every candidate size at once, in rounds of up to ``MAX_PROBES``
(a loopback or jumbo-frame path confirms 16 KiB in one round trip; an
Ethernet path confirms 1400 and finds the larger sizes gone within one
``PROBE_TIMEOUT``); the largest size acknowledged is taken. 16384 is the top:
the largest DTLS record plaintext. A black hole (the data stops being
acknowledged at a size once confirmed) drops back to the base; ``restart``
searches again later.
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
    """Which packet size to use on one path, and which probes to send next.

    Probes go out in rounds: every candidate above the current size that has not
    failed ``MAX_PROBES`` rounds yet, all at once (RFC 8899 allows several probes
    in flight). A round ends when every probe of it is acknowledged or at
    ``PROBE_TIMEOUT`` (``timed_out``); the largest size acknowledged in it
    becomes current, at once. One round settles a healthy path (0.5 s on an
    Ethernet path, an RTT on loopback) where probing one size after another took
    ``MAX_PROBES * PROBE_TIMEOUT`` for each size too large.
    """

    def __init__(self, peer_max: int, local_max: int = LOCAL_MAX,
                 candidates: tuple[int, ...] = CANDIDATES, base: int = BASE) -> None:
        top = min(peer_max, local_max)
        self.base = base
        self.sizes = sorted((s for s in candidates if base < s <= top), reverse=True)
        self.current = base
        self.probes_sent = 0
        self._failures: dict[int, int] = {}
        self._outstanding: dict[bytes, int] = {}
        self._acked: list[int] = []

    @property
    def open(self) -> list[int]:
        """Sizes still worth probing: above the current one, not failed too often."""
        return [s for s in self.sizes
                if s > self.current and self._failures.get(s, 0) < MAX_PROBES]

    @property
    def done(self) -> bool:
        """No probe in flight and none left to send until ``restart``."""
        return not self._outstanding and not self.open

    @property
    def at_top(self) -> bool:
        return not self.sizes or self.current >= self.sizes[0]

    def round(self) -> list[tuple[int, bytes]]:
        """The probes of the next round (largest first): ``[(size, info), ...]``;
        empty when the search is over."""
        if self._outstanding:
            raise RuntimeError("a round of probes is still in flight")
        probes = [(size, probe_info(size)) for size in self.open]
        self._outstanding = {info: size for size, info in probes}
        self._acked = []
        self.probes_sent += len(probes)
        return probes

    def acked(self, info: bytes) -> bool:
        """A HEARTBEAT-ACK echoed ``info``; True if it confirmed a probe of this round.
        The round ends early once every probe of it is confirmed."""
        size = self._outstanding.pop(info, None)
        if size is None:
            return False
        self._acked.append(size)
        if not self._outstanding:
            self._settle()
        return True

    @property
    def waiting(self) -> bool:
        """Probes of the current round are still unanswered."""
        return bool(self._outstanding)

    def timed_out(self) -> None:
        """``PROBE_TIMEOUT`` passed: the round's unanswered probes count as failed."""
        for size in self._outstanding.values():
            self._failures[size] = self._failures.get(size, 0) + 1
        self._outstanding = {}
        self._settle()

    def _settle(self) -> None:
        if self._acked:
            self.current = max(self.current, *self._acked)
        self._acked = []

    def black_hole(self) -> bool:
        """Data stopped getting through at the current size: back to the base."""
        if self.current <= self.base:
            return False
        self._failures = {s: MAX_PROBES for s in self.sizes}  # until restart
        self.current = self.base
        self._outstanding = {}
        return True

    def restart(self) -> None:
        """Search again from the top (after ``RAISE_INTERVAL``)."""
        self._outstanding = {}
        self._failures = {}
