"""UPnP-IGD port mapping, the third choice after PCP and NAT-PMP (async-upnp-client).

``discover(gw, source)``: one SSDP M-SEARCH for an InternetGatewayDevice, answers
read for ``SEARCH`` seconds at most (1 s). An SSDP answer is remote input (anyone on
the LAN can send one), so only an answer from the default gateway whose LOCATION
names the gateway itself is taken: mesh never fetches a description from elsewhere.

``UpnpMapping``: ``AddPortMapping`` of UDP ``port`` on the client's address (the
external port the same as the internal one, another on a conflict), a lease of
``LIFETIME`` seconds refreshed at half (a router that only grants permanent leases
gets one, deleted on close), ``GetExternalIPAddress`` for the address, and
``DeletePortMapping`` on ``close``. HTTP, XML and SOAP failures of the library become
``reason`` (one line); every request has a 2 s deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from async_upnp_client.aiohttp import AiohttpRequester
from async_upnp_client.client import UpnpAction, UpnpDevice
from async_upnp_client.client_factory import UpnpFactory
from async_upnp_client.exceptions import UpnpError
from async_upnp_client.search import async_search

log = logging.getLogger("mesh.upnp")

SEARCH = 1
"""Seconds SSDP answers are awaited (the issue's bound: discovery never takes longer)."""
LIFETIME = 1200
IGD = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
_devices: dict[str, UpnpDevice] = {}
"""Described gateways by description URL: a connection's mapping is then one request."""
FAILURES = (UpnpError, aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError)
"""What the library raises for a router that answers badly (or not at all)."""


def accept_location(gw: str, sender: str | None, location: str | None) -> str | None:
    """The description URL of an SSDP answer, if it came from ``gw`` and points at it."""
    if not location or sender != gw:
        return None
    try:
        url = urlsplit(location)
        host = url.hostname
    except ValueError:
        return None
    if url.scheme != "http" or host is None:
        return None
    try:
        same = ipaddress.ip_address(host) == ipaddress.ip_address(gw)
    except ValueError:
        return None
    return location if same else None


async def discover(gw: str, source: str) -> str | None:
    """The IGD description URL the gateway announces, within ``SEARCH`` seconds."""
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def answer(headers: Any) -> None:
        location = accept_location(gw, headers.get("_host"),
                                   headers.get("_location_original") or headers.get("location"))
        if location is not None and not found.done():
            found.set_result(location)

    search = asyncio.create_task(async_search(answer, timeout=SEARCH, search_target=IGD,
                                              source=(source, 0)))
    search.add_done_callback(lambda _: found.done() or found.cancel())
    try:
        return await asyncio.wait_for(found, SEARCH + 0.2)
    except asyncio.CancelledError:
        if search.cancelled() or not search.done():
            raise  # we are being cancelled, not the search ending empty
        return None
    except FAILURES as exc:
        log.debug("SSDP search failed: %s", exc)
        return None
    finally:
        search.cancel()
        with contextlib.suppress(BaseException):
            await search


class UpnpMapping:
    """One UDP mapping of ``port`` on ``client_ip`` through the IGD at ``location``."""

    def __init__(self, location: str, client_ip: str, port: int,
                 lifetime: int = LIFETIME) -> None:
        self.location, self.client_ip, self.port, self.lifetime = (location, client_ip,
                                                                    port, lifetime)
        self.external: tuple[str, int] | None = None
        self.reason: str | None = None
        self.settled = asyncio.Event()
        self._igd: UpnpDevice | None = None
        self._task: asyncio.Task[None] | None = None
        self._external_port = port

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def wait(self, timeout: float) -> tuple[str, int] | None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), timeout)
        return self.external

    async def _run(self) -> None:
        try:
            async with asyncio.timeout(6):
                self._igd = _devices.get(self.location)
                if self._igd is None:
                    self._igd = await UpnpFactory(AiohttpRequester(timeout=2), non_strict=True
                                                  ).async_create_device(self.location)
                    _devices[self.location] = self._igd
                lease = await self._add()
                answer = await _action(self._igd, "GetExternalIPAddress").async_call()
            address = answer.get("NewExternalIPAddress")
            if not isinstance(address, str) or not address:
                raise ValueError("the router gave no external address")
            self.external = (str(ipaddress.IPv4Address(address)), self._external_port)
        except FAILURES as exc:
            self.reason = f"UPnP: {exc or type(exc).__name__}"
            _devices.pop(self.location, None)
            return
        finally:
            self.settled.set()
        while lease:  # refresh at half the lease; a permanent one needs none
            await asyncio.sleep(lease / 2)
            try:
                async with asyncio.timeout(4):
                    await self._add()
            except FAILURES as exc:
                log.info("UPnP mapping refresh failed: %s", exc)

    async def _add(self) -> int:
        """AddPortMapping; the lease granted (0: permanent)."""
        assert self._igd is not None
        add = _action(self._igd, "AddPortMapping")
        for attempt in range(3):
            for lease in (self.lifetime, 0):
                try:
                    await add.async_call(
                        NewRemoteHost="", NewExternalPort=self._external_port,
                        NewProtocol="UDP", NewInternalPort=self.port,
                        NewInternalClient=self.client_ip, NewEnabled=True,
                        NewPortMappingDescription="mesh", NewLeaseDuration=lease)
                    return lease
                except UpnpError as exc:
                    code = getattr(exc, "error_code", None)
                    if code == 725 and lease:  # OnlyPermanentLeasesSupported
                        continue
                    if code == 718 and attempt < 2:  # ConflictInMappingEntry
                        self._external_port = 1024 + secrets.randbelow(64511)
                        break
                    raise
        raise ValueError("no free external port")

    async def aclose(self) -> None:
        """Stop refreshing and delete the mapping (2 s at most)."""
        if self._task is not None:
            self._task.cancel()
        igd, mapped, self.external = self._igd, self.external, None
        if igd is not None and mapped is not None:
            with contextlib.suppress(*FAILURES):
                async with asyncio.timeout(2):
                    await _action(igd, "DeletePortMapping").async_call(
                        NewRemoteHost="", NewExternalPort=self._external_port,
                        NewProtocol="UDP")


def _action(device: UpnpDevice, name: str) -> UpnpAction:
    """``name`` on the device's WANIPConnection (or WANPPPConnection) service."""
    for service in device.all_services:
        wan = any(kind in service.service_type for kind in ("WANIPConnection",
                                                            "WANPPPConnection"))
        if wan and service.has_action(name):
            return service.action(name)
    raise ValueError(f"the router's UPnP description has no {name}")
