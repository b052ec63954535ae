"""LAN discovery over mDNS/DNS-SD (python-zeroconf): advertising shares and finding them.

The advert itself (signed TXT record) is mesh/proto/advert.py; this module is
the zeroconf glue (``Advertiser``, ``browse``) and ``resolve``: a ticket from a
ticket string, or from a share found on the LAN by name or node-id prefix.
Browsing is bounded: at most ``MAX_SERVICES`` adverts are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Sequence
from typing import Any

from mesh.errors import ConfigError
from mesh.proto import ticket as ticket_mod
from mesh.proto.advert import SERVICE, Advert, make_properties, open_secret, verify_properties
from mesh.proto.identity import Identity
from mesh.proto.names import valid_name
from mesh.proto.ticket import Ticket

from . import environ

MAX_SERVICES = 256


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

    def __init__(self, identity: Identity, name: str, port: int, is_open: bool,
                 protos: str = "tcp") -> None:
        self.identity, self.name, self.port, self.is_open = identity, name, port, is_open
        self.protos = protos
        self._zc: Any = None
        self._info: Any = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        from zeroconf import ServiceInfo
        from zeroconf.asyncio import AsyncZeroconf

        self.addresses = lan_addresses()
        props = make_properties(self.identity, self.name, self.port, self.addresses,
                                time.time(), self.is_open, self.protos)
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


async def resolve(target: str, now: float, browse_seconds: float = 2.0,
                  signal_urls: Sequence[str] = (), identity: Identity | None = None
                  ) -> tuple[Ticket, bool]:
    """A ticket from a ticket string; or, given ``signal_urls``, from one online machine
    serving the public name (poolconnect.py); or from a share found on the LAN by name
    or node-id prefix (at least 4 characters). Returns (ticket, found_by_name on the LAN).

    An advert is anybody's to send, so a name cannot hijack a node-id prefix: when
    the name matches one share and the prefix another, both are listed and nothing
    is picked.
    """
    if ticket_mod.looks_like_ticket(target) or target.strip().lower().startswith(
            ticket_mod.PREFIX):
        return ticket_mod.decode(target, now=now), False
    if signal_urls and valid_name(target.strip()):
        from .home import load_or_create
        from .poolconnect import ticket_by_name

        found = await ticket_by_name(target.strip(), list(signal_urls),
                                     identity or load_or_create(), now)
        if found is not None:
            return found, False
    if not environ.lan_enabled():
        ticket_mod.decode(target)  # LAN discovery is off: it must be a ticket (raises)
    needle = target.strip()
    if not needle:
        raise ConfigError("give a ticket or the name of a share on this network")
    adverts = await browse(browse_seconds)
    by_name = [a for a in adverts if a.name == needle]
    by_prefix = ([a for a in adverts if a.node_id.startswith(needle.lower())]
                 if len(needle) >= 4 else [])
    matches = by_name + [a for a in by_prefix if a not in by_name]
    if not matches:
        seen = ", ".join(sorted({a.name for a in adverts})) or "none"
        raise ConfigError(f"no share named {needle!r} on this network (visible: {seen})")
    if len(matches) > 1:
        listing = "; ".join(f"{a.name} {a.node_id[:12]} at {', '.join(a.addresses)}"
                            for a in matches)
        raise ConfigError(f"{needle!r} is ambiguous: {listing}; use a longer node id prefix"
                          " or the ticket")
    ad = matches[0]
    if not ad.open:
        raise ConfigError(f"share {ad.name!r} ({ad.node_id[:8]}) is not open to the LAN by "
                          "name; ask the sharer for its ticket")
    ticket = Ticket(node_id=ad.node_id, secret=open_secret(ad.node_id, ad.name),
                    expires=int(now) + 3600, name=ad.name, signal_urls=ad.signal_urls,
                    tcp="tcp" in ad.protos, udp="udp" in ad.protos)
    return ticket, True

