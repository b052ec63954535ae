"""mDNS adverts of shares: the signed TXT record, sans-I/O.

A share advertises ``_mesh._tcp.local.``; instance ``<name>-<node id prefix>``;
the SRV port is the sharer's LAN signaling endpoint. TXT record (all values
ASCII)::

    v=1   n=<share name>   id=<node id>   p=<port>   a=<addr,addr,...>
    t=<unix seconds the advert was made>   o=<1 if open to LAN peers by name, else 0>
    u=<"udp" or "tcp+udp"; absent for a TCP share>
    s=<base64 Ed25519 signature by the node key over
       "mesh-advert-v1\\n" + n + "\\n" + id + "\\n" + p + "\\n" + a + "\\n" + t + "\\n" + o
       (+ "\\n" + u when u is present)>

An advert is only a hint: one with a bad signature, a malformed field or a TXT
record over ``MAX_TXT`` bytes is dropped (``verify_properties`` returns None),
and the peer is admitted by the same signed handshake as through a server.
Anyone on the LAN can send one, so it is fuzzed with the other parsers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .identity import Identity, decode_node_id, verify
from .names import is_number

SERVICE = "_mesh._tcp.local."
MAX_TXT = 1300
MAX_NAME = 63


@dataclass(frozen=True)
class Advert:
    name: str
    node_id: str
    port: int
    addresses: tuple[str, ...]
    made: float
    open: bool
    protos: str = "tcp"
    """``tcp``, ``udp`` or ``tcp+udp``."""

    @property
    def signal_urls(self) -> tuple[str, ...]:
        out = []
        for addr in self.addresses:
            host = f"[{addr}]" if ":" in addr else addr
            out.append(f"ws://{host}:{self.port}/")
        return tuple(out)


def _signed(name: str, node: str, port: str, addrs: str, made: str, is_open: str,
            protos: str = "tcp") -> bytes:
    parts = ["mesh-advert-v1", name, node, port, addrs, made, is_open]
    if protos != "tcp":  # a TCP share's advert reads as it did before UDP shares
        parts.append(protos)
    return "\n".join(parts).encode()


def make_properties(identity: Identity, name: str, port: int, addresses: list[str],
                    now: float, is_open: bool, protos: str = "tcp") -> dict[str, str]:
    addrs = ",".join(addresses)
    made = str(int(now))
    flag = "1" if is_open else "0"
    sig = identity.sign(_signed(name, identity.node_id, str(port), addrs, made, flag, protos))
    props = {"v": "1", "n": name, "id": identity.node_id, "p": str(port), "a": addrs,
             "t": made, "o": flag, "s": base64.b64encode(sig).decode()}
    if protos != "tcp":
        props["u"] = protos
    return props


def verify_properties(props: Mapping[Any, Any]) -> Advert | None:
    """A verified advert, or None for anything malformed, oversized or forged."""
    try:
        size = sum(len(k) + len(v or b"") + 2 for k, v in props.items())
        if size > MAX_TXT:
            return None
        get = {(k.decode() if isinstance(k, bytes) else k):
               (v.decode("ascii") if isinstance(v, bytes) else (v or ""))
               for k, v in props.items()}
        if get.get("v") != "1":
            return None
        name, node, port, addrs, made, flag = (get.get(k, "") for k in
                                               ("n", "id", "p", "a", "t", "o"))
        protos = get.get("u", "tcp")
        sig = base64.b64decode(get.get("s", ""), validate=True)
        decode_node_id(node)
        if not (0 < len(name) <= MAX_NAME and is_number(port) and is_number(made)
                and flag in ("0", "1") and 0 < int(port) < 65536
                and protos in ("tcp", "udp", "tcp+udp")):
            return None
        addresses = tuple(a for a in addrs.split(",") if a)
        for a in addresses:
            ipaddress.ip_address(a)
        if not verify(node, _signed(name, node, port, addrs, made, flag, protos), sig):
            return None
        return Advert(name, node, int(port), addresses, float(made), flag == "1", protos)
    except (ValueError, UnicodeDecodeError, binascii.Error, AttributeError, TypeError):
        return None


def open_secret(node_id: str, name: str) -> bytes:
    """The admission secret of a share open to its LAN: anyone who sees the advert can
    compute it. Only used when the share says so (``o=1``)."""
    return hashlib.sha256(f"mesh-lan-open\n{node_id}\n{name}".encode()).digest()[:16]
