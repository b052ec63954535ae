"""Router port mapping, sans-I/O: the PCP (RFC 6887) MAP and NAT-PMP (RFC 6886) codecs,
and the lease machine that asks, refreshes before expiry and releases.

The router's answers are remote input (anyone on the LAN can send a datagram to the
client's port): every decoder checks sizes, versions, opcodes and, for PCP, that the
12-byte nonce is the one we sent; anything else is ``PortmapError``.

PCP MAP request (60 bytes; integers big-endian)::

    version u8 = 2 | R=0,opcode u8 = 1 | reserved u16 | lifetime u32 | client IP 16 |
    nonce 12 | protocol u8 (17 = UDP) | reserved 3 | internal port u16 |
    suggested external port u16 | suggested external IP 16

PCP response: version 2 | R=1,opcode | reserved u8 | result u8 | lifetime u32 |
epoch u32 | reserved 12 | the MAP fields again (assigned port and IP) | options.

NAT-PMP: external address request ``0, 0`` -> ``0, 128, result u16, epoch u32,
IPv4``; UDP map request ``0, 1, 0 u16, internal u16, suggested u16, lifetime u32`` ->
``0, 129, result u16, epoch u32, internal u16, external u16, lifetime u32``.

Addresses are 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from mesh.errors import ProtocolError

PCP_PORT = 5351
"""PCP and NAT-PMP both listen here on the default gateway."""
PCP_VERSION = 2
MAP = 1
UDP = 17
NATPMP_VERSION = 0
NATPMP_MAP_UDP = 1

PCP_RESULTS = {0: "success", 1: "unsupported version", 2: "not authorized",
               3: "malformed request", 4: "unsupported opcode", 5: "unsupported option",
               6: "malformed option", 7: "network failure", 8: "no resources",
               9: "unsupported protocol", 10: "user over quota",
               11: "cannot provide the external address", 12: "address mismatch",
               13: "excessive remote peers"}
NATPMP_RESULTS = {0: "success", 1: "unsupported version", 2: "not authorized",
                  3: "network failure", 4: "out of resources", 5: "unsupported opcode"}

_PCP_HEAD = struct.Struct("!BBHI16s")
_PCP_MAP = struct.Struct("!12sB3xHH16s")
_PCP_RESPONSE = struct.Struct("!BBBBII12x")
_NATPMP_MAP = struct.Struct("!BBHHHI")
_NATPMP_MAPPED = struct.Struct("!BBHIHHI")
_NATPMP_ADDRESS = struct.Struct("!BBHI4s")


class PortmapError(ProtocolError):
    """A router's answer that does not parse, or is not the answer to our request."""


@dataclass(frozen=True)
class Mapping:
    """A mapping the router granted (or refused: ``result`` non-zero)."""

    protocol: str
    """``pcp`` or ``nat-pmp``."""
    result: int
    internal_port: int
    external_port: int
    external_ip: str | None
    lifetime: int
    """Seconds the mapping lasts (0: released)."""
    epoch: int

    @property
    def ok(self) -> bool:
        return self.result == 0

    @property
    def reason(self) -> str:
        table = PCP_RESULTS if self.protocol == "pcp" else NATPMP_RESULTS
        return table.get(self.result, f"result {self.result}")


def _address16(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{addr}").packed
    return addr.packed


def _from16(raw: bytes) -> str | None:
    addr = ipaddress.IPv6Address(raw)
    if addr.ipv4_mapped is not None:
        return None if int(addr.ipv4_mapped) == 0 else str(addr.ipv4_mapped)
    return None if int(addr) == 0 else str(addr)


def pcp_map_request(client_ip: str, internal_port: int, lifetime: int, nonce: bytes,
                    suggested_port: int = 0, suggested_ip: str = "0.0.0.0") -> bytes:
    """A PCP MAP request for UDP ``internal_port`` (lifetime 0 releases it)."""
    if len(nonce) != 12:
        raise ValueError("a PCP nonce is 12 bytes")
    return (_PCP_HEAD.pack(PCP_VERSION, MAP, 0, lifetime, _address16(client_ip))
            + _PCP_MAP.pack(nonce, UDP, internal_port, suggested_port,
                            _address16(suggested_ip)))


def pcp_map_response(data: bytes, nonce: bytes) -> Mapping:
    """The router's answer to our MAP request with ``nonce``."""
    if len(data) < 60 or len(data) > 1100 or len(data) % 4:
        raise PortmapError(f"a {len(data)}-byte PCP answer")
    version, op, _, result, lifetime, epoch = _PCP_RESPONSE.unpack_from(data)
    if version != PCP_VERSION:
        if version == NATPMP_VERSION:
            raise PortmapError("the router speaks NAT-PMP, not PCP")
        raise PortmapError(f"PCP version {version}")
    if op != 0x80 | MAP:
        raise PortmapError(f"PCP opcode {op:#x} is not a MAP response")
    got_nonce, protocol, internal, external, ip = _PCP_MAP.unpack_from(data, 24)
    if got_nonce != nonce:
        raise PortmapError("the PCP answer is not for our request (nonce)")
    if protocol != UDP:
        raise PortmapError(f"PCP answer for protocol {protocol}")
    _check_options(data[60:])
    return Mapping("pcp", result, internal, external, _from16(ip), lifetime, epoch)


def _check_options(raw: bytes) -> None:
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise PortmapError("a PCP option is truncated")
        length = struct.unpack_from("!H", raw, pos + 2)[0]
        pos += 4 + length + (-length % 4)
        if pos > len(raw):
            raise PortmapError("a PCP option is truncated")


def natpmp_address_request() -> bytes:
    return bytes([NATPMP_VERSION, 0])


def natpmp_address_response(data: bytes) -> tuple[int, str]:
    """(result, the router's external IPv4 address)."""
    if len(data) != _NATPMP_ADDRESS.size:
        raise PortmapError(f"a {len(data)}-byte NAT-PMP address answer")
    version, op, result, _epoch, ip = _NATPMP_ADDRESS.unpack(data)
    if version != NATPMP_VERSION or op != 128:
        raise PortmapError(f"NAT-PMP version {version}, opcode {op}")
    return result, str(ipaddress.IPv4Address(ip))


def natpmp_map_request(internal_port: int, lifetime: int, suggested_port: int = 0) -> bytes:
    return _NATPMP_MAP.pack(NATPMP_VERSION, NATPMP_MAP_UDP, 0, internal_port, suggested_port,
                            lifetime)


def natpmp_map_response(data: bytes, internal_port: int) -> Mapping:
    if len(data) != _NATPMP_MAPPED.size:
        raise PortmapError(f"a {len(data)}-byte NAT-PMP map answer")
    version, op, result, epoch, internal, external, lifetime = _NATPMP_MAPPED.unpack(data)
    if version != NATPMP_VERSION or op != 128 + NATPMP_MAP_UDP:
        raise PortmapError(f"NAT-PMP version {version}, opcode {op}")
    if internal != internal_port:
        raise PortmapError(f"the NAT-PMP answer is for port {internal}, not {internal_port}")
    return Mapping("nat-pmp", result, internal, external, None, lifetime, epoch)


# -- the lease ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    """Send ``data`` to the gateway's port 5351."""

    data: bytes


@dataclass(frozen=True)
class Granted:
    mapping: Mapping


@dataclass(frozen=True)
class Unavailable:
    reason: str


Command = Send | Granted | Unavailable


class Lease:
    """Ask for a UDP mapping (PCP, then NAT-PMP), refresh it at half its lifetime, release
    it. Each protocol is asked ``TRIES`` times ``WAIT`` seconds apart, so a router that never
    answers costs at most ``2 * TRIES * WAIT`` seconds in the background."""

    TRIES = 2
    WAIT = 0.25
    LIFETIME = 7200

    def __init__(self, client_ip: str, port: int, nonce: bytes, now: float,
                 lifetime: int | None = None,
                 protocols: tuple[str, ...] = ("pcp", "nat-pmp")) -> None:
        self.client_ip, self.port, self.nonce = client_ip, port, nonce
        if lifetime is not None:
            self.LIFETIME = lifetime
        self.protocols = protocols
        """The protocols to ask, in order (a subset of ``pcp``, ``nat-pmp``)."""
        self.protocol = protocols[0]
        self.tries = 0
        self.mapping: Mapping | None = None
        self.expires = 0.0
        self.done = False
        self._deadline = now
        self._out: list[Command] = []
        self._ask(now)

    def _request(self, lifetime: int) -> bytes:
        if self.protocol == "pcp":
            return pcp_map_request(self.client_ip, self.port, lifetime, self.nonce)
        return natpmp_map_request(self.port, lifetime)

    def _ask(self, now: float) -> None:
        self.tries += 1
        self._out.append(Send(self._request(self.LIFETIME)))
        self._deadline = now + self.WAIT

    def commands(self) -> list[Command]:
        out, self._out = self._out, []
        return out

    def timer(self) -> float | None:
        return None if self.done else self._deadline

    def on_timer(self, now: float) -> None:
        if self.done or now < self._deadline:
            return
        if self.mapping is not None:  # time to refresh, and again until it expires
            if now >= self.expires:
                self.done = True
                self.mapping = None
                self._out.append(Unavailable("the router stopped answering; the mapping "
                                             "expired"))
                return
            self._out.append(Send(self._request(self.LIFETIME)))
            self._deadline = min(self.expires, now + max(self.WAIT, (self.expires - now) / 4))
            return
        if self.tries < self.TRIES:
            self._ask(now)
        elif self._fall_back(now):
            return
        else:
            self.done = True
            names = " or ".join(p.upper() for p in self.protocols)
            self._out.append(Unavailable(f"no {names} answer from the router"))

    def _fall_back(self, now: float) -> bool:
        """Move from PCP to NAT-PMP, if this lease may."""
        if self.protocol != "pcp" or "nat-pmp" not in self.protocols:
            return False
        self.protocol, self.tries = "nat-pmp", 0
        self._ask(now)
        return True

    def on_datagram(self, data: bytes, now: float) -> None:
        """An answer from the gateway; ``PortmapError`` for one that is not ours."""
        if self.done:
            return
        if self.protocol == "pcp" and data[:1] == b"\x00" and len(data) in (8, 12, 16):
            if not self._fall_back(now):  # a NAT-PMP router answering PCP
                self.done = True
                self._out.append(Unavailable("the router speaks NAT-PMP, not PCP"))
            return
        mapping = (pcp_map_response(data, self.nonce) if self.protocol == "pcp"
                   else natpmp_map_response(data, self.port))
        if not mapping.ok:
            if mapping.result in (1, 4) and self._fall_back(now):  # try NAT-PMP
                return
            self.done = True
            self._out.append(Unavailable(f"the router refused: {mapping.reason}"))
            return
        self.mapping = mapping
        self.expires = now + mapping.lifetime
        self._deadline = now + max(1.0, mapping.lifetime / 2)
        self._out.append(Granted(mapping))

    def release(self) -> bytes | None:
        """The datagram that ends the mapping (lifetime 0), if there is one."""
        if self.mapping is None:
            return None
        self.done = True
        return self._request(0)


def default_gateway(route_table: str) -> str | None:
    """The IPv4 default gateway in Linux's ``/proc/net/route`` text (the first default
    route with the gateway flag), or None."""
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[1] != "00000000":
            continue
        try:
            flags, gateway = int(fields[3], 16), int(fields[2], 16)
        except ValueError:
            continue
        if flags & 0x2 and gateway:  # RTF_GATEWAY
            return str(ipaddress.IPv4Address(gateway.to_bytes(4, "little")))
    return None
