"""Which peer addresses the embedded TURN relay may send to.

By default the relay refuses every address that is not plainly on the public
internet: loopback, unspecified, private (RFC 1918), shared/CGNAT (RFC 6598),
link-local (including the 169.254.169.254 metadata service), multicast,
broadcast, reserved, benchmarking and documentation ranges, IETF protocol
assignments, and their IPv6 counterparts (ULA, link-local, loopback,
documentation, discard, site-local). IPv4 embedded in IPv6 is unwrapped first
(IPv4-mapped ``::ffff:0:0/96``, IPv4-compatible ``::/96``, 6to4 ``2002::/16``,
NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``, Teredo ``2001::/32``), so a
denied IPv4 address cannot be reached in IPv6 disguise. ``allow`` ranges
(``--relay-allow CIDR``) are checked after unwrapping and open a range, e.g.
a lab's addresses. The server's ``own`` addresses (``is_own``) get their own
rules in the TURN core (turn.py, RFC 8656 section 21): another allocation's
relayed address is a peer like any other (two relayed peers meet that way),
the server's STUN/TURN ports never are, and any other port on its own host
only where an ``allow`` range names the address. Sans-I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DENIED_V4 = [ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "255.255.255.255/32",
)]
DENIED_V6 = [ipaddress.IPv6Network(n) for n in (
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "2001:db8::/32",
    "100::/64", "2001::/23", "3fff::/20", "5f00::/16",
)]


def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address hidden in an IPv6 one, if any (possibly nested)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    raw = ip.packed
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if raw[:12] == bytes(12) and raw[12:] not in (bytes(4), b"\x00\x00\x00\x01"):
        return ipaddress.IPv4Address(raw[12:])  # IPv4-compatible ::a.b.c.d
    if ip.sixtofour is not None:
        return ip.sixtofour
    if raw[:12] == bytes.fromhex("0064ff9b0000000000000000"):
        return ipaddress.IPv4Address(raw[12:])  # NAT64 well-known prefix
    if raw[:6] == bytes.fromhex("0064ff9b0001"):
        return ipaddress.IPv4Address(raw[12:])  # NAT64 local-use prefix (RFC 8215), /96 form
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's (obfuscated-decoded) address
    return ip


class RelayPolicy:
    """Decides whether the relay may talk to a peer address."""

    def __init__(self, allow: Iterable[str] = (), own: Iterable[str] = ()) -> None:
        self.allow: list[Network] = [ipaddress.ip_network(c, strict=False) for c in allow]
        self.own: set[IPAddress] = set()
        for host in own:
            try:
                self.own.add(unwrap(ipaddress.ip_address(host)))
            except ValueError:
                continue  # a name, or 0.0.0.0-style wildcards: nothing to match
        self._seen: dict[str, bool] = {}

    def explicit(self, host: str) -> bool:
        """Whether an ``allow`` range names ``host`` (IPv4 in IPv6 unwrapped)."""
        try:
            ip: IPAddress = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(candidate.version == n.version and candidate in n
                   for candidate in {ip, unwrap(ip)} for n in self.allow)

    def is_own(self, host: str) -> bool:
        """Whether ``host`` is one of the server's own addresses."""
        try:
            return unwrap(ipaddress.ip_address(host.split("%", 1)[0])) in self.own
        except ValueError:
            return False

    def permitted(self, host: str) -> bool:
        # asked for every relayed datagram: remember the answers (bounded)
        known = self._seen.get(host)
        if known is None:
            if len(self._seen) >= 4096:
                self._seen.clear()
            known = self._seen[host] = self._decide(host)
        return known

    def _decide(self, host: str) -> bool:
        try:
            ip: IPAddress = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        inner = unwrap(ip)
        if self.explicit(host):
            return True
        if isinstance(inner, ipaddress.IPv4Address):
            if any(inner in n for n in DENIED_V4):
                return False
        elif any(inner in n for n in DENIED_V6):
            return False
        if isinstance(ip, ipaddress.IPv6Address) and inner is not ip:
            return True  # unwrapped to an allowed public IPv4 address
        return not (ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_loopback
                    or ip.is_link_local or ip.is_unspecified)
