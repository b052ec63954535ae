"""LAN discovery over mDNS/DNS-SD (python-zeroconf): signed adverts, a hint only.

Service type ``_mesh._tcp.local.``; instance ``<name>-<node id prefix>``; the
SRV port is the sharer's LAN signaling endpoint (the same WebSocket protocol
as `mesh signal`, served by the share itself). TXT record (all values ASCII)::

    v=1   n=<share name>   id=<node id>   p=<port>   a=<addr,addr,...>
    t=<unix seconds the advert was made>   o=<1 if open to LAN peers by name, else 0>
    s=<base64 Ed25519 signature by the node key over
       "mesh-advert-v1\\n" + n + "\\n" + id + "\\n" + p + "\\n" + a + "\\n" + t + "\\n" + o>

An advert is only a hint: one with a bad signature, a malformed field, a TXT
record over ``MAX_TXT`` bytes, or (when a ticket pins a key) another key is
dropped, and the peer is admitted by the same signed handshake as through a
server. Browsing is bounded: at most ``MAX_SERVICES`` adverts are kept.

``make_properties``/``verify_properties`` are sans-I/O; the zeroconf glue is
``Advertiser`` and ``browse``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.proto.identity import Identity, decode_node_id, verify

SERVICE = "_mesh._tcp.local."
MAX_TXT = 1300
MAX_SERVICES = 256
MAX_NAME = 63


@dataclass(frozen=True)
class Advert:
    name: str
    node_id: str
    port: int
    addresses: tuple[str, ...]
    made: float
    open: bool

    @property
    def signal_urls(self) -> tuple[str, ...]:
        out = []
        for addr in self.addresses:
            host = f"[{addr}]" if ":" in addr else addr
            out.append(f"ws://{host}:{self.port}/")
        return tuple(out)


def _signed(name: str, node: str, port: str, addrs: str, made: str, is_open: str) -> bytes:
    return "\n".join(["mesh-advert-v1", name, node, port, addrs, made, is_open]).encode()


def make_properties(identity: Identity, name: str, port: int, addresses: list[str],
                    now: float, is_open: bool) -> dict[str, str]:
    addrs = ",".join(addresses)
    made = str(int(now))
    flag = "1" if is_open else "0"
    sig = identity.sign(_signed(name, identity.node_id, str(port), addrs, made, flag))
    return {"v": "1", "n": name, "id": identity.node_id, "p": str(port), "a": addrs,
            "t": made, "o": flag, "s": base64.b64encode(sig).decode()}


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
        sig = base64.b64decode(get.get("s", ""), validate=True)
        decode_node_id(node)
        if not (0 < len(name) <= MAX_NAME and port.isdigit() and made.isdigit()
                and flag in ("0", "1") and 0 < int(port) < 65536):
            return None
        addresses = tuple(a for a in addrs.split(",") if a)
        for a in addresses:
            ipaddress.ip_address(a)
        if not verify(node, _signed(name, node, port, addrs, made, flag), sig):
            return None
        return Advert(name, node, int(port), addresses, float(made), flag == "1")
    except (ValueError, UnicodeDecodeError, binascii.Error, AttributeError, TypeError):
        return None


def open_secret(node_id: str, name: str) -> bytes:
    """The admission secret of a share open to its LAN: anyone who sees the advert can
    compute it. Only used when the share says so (``o=1``)."""
    return hashlib.sha256(f"mesh-lan-open\n{node_id}\n{name}".encode()).digest()[:16]


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback."""
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out


def _instance(name: str, node: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]
    return f"{safe}-{node[:8]}.{SERVICE}"


class Advertiser:
    """Announces one share; withdraws it (mDNS goodbye) on close."""

    def __init__(self, identity: Identity, name: str, port: int, is_open: bool) -> None:
        self.identity, self.name, self.port, self.is_open = identity, name, port, is_open
        self._zc: Any = None
        self._info: Any = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        from zeroconf import ServiceInfo
        from zeroconf.asyncio import AsyncZeroconf

        self.addresses = lan_addresses()
        props = make_properties(self.identity, self.name, self.port, self.addresses,
                                time.time(), self.is_open)
        self._info = ServiceInfo(
            SERVICE, _instance(self.name, self.identity.node_id),
            addresses=[socket.inet_aton(a) for a in self.addresses], port=self.port,
            properties=props, server=f"mesh-{self.identity.node_id[:12]}.local.",
        )
        self._zc = AsyncZeroconf()
        await self._zc.async_register_service(self._info, allow_name_change=True)

    async def close(self) -> None:
        if self._zc is not None:
            with contextlib.suppress(Exception):
                await self._zc.async_unregister_service(self._info)
            with contextlib.suppress(Exception):
                await self._zc.async_close()
            self._zc = None


async def browse(seconds: float = 2.0) -> list[Advert]:
    """Verified adverts seen on the LAN within ``seconds`` (newest per node and name)."""
    from zeroconf import ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    zc = AsyncZeroconf()
    found: dict[tuple[str, str], Advert] = {}
    pending: set[asyncio.Task[None]] = set()
    seen: set[str] = set()

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE, name)
        if await info.async_request(zc.zeroconf, 1500):
            advert = verify_properties(info.properties)
            if advert is not None:
                key = (advert.node_id, advert.name)
                old = found.get(key)
                if old is None or old.made <= advert.made:
                    found[key] = advert

    def on_change(zeroconf: Any, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed or name in seen:
            return
        if len(seen) >= MAX_SERVICES:
            return
        seen.add(name)
        task = asyncio.ensure_future(resolve(name))
        pending.add(task)
        task.add_done_callback(pending.discard)

    browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE], handlers=[on_change])
    try:
        await asyncio.sleep(seconds)
        if pending:
            await asyncio.wait(set(pending), timeout=2.0)
    finally:
        await browser.async_cancel()
        await zc.async_close()
    return sorted(found.values(), key=lambda a: (a.name, a.node_id))
