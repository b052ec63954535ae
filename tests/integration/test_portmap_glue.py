"""The port-mapping glue (mesh/transport/portmap.py) against a router on loopback:
a real UDP socket that answers PCP as RFC 6887 lays it out, NAT-PMP, or garbage."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest

from mesh.proto import portmap as pm
from mesh.transport import portmap

Answer = Callable[[bytes], list[bytes]]


class Router(asyncio.DatagramProtocol):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.got: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append(data)
        for reply in self.answer(data):
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


def pcp_router(data: bytes) -> list[bytes]:
    if data[0] != 2:
        return []
    lifetime = struct.unpack("!I", data[4:8])[0]
    nonce, port = data[24:36], struct.unpack("!H", data[40:42])[0]
    mapped = b"\0" * 10 + b"\xff\xff" + bytes([198, 18, 1, 1])
    head = struct.pack("!BBBBII12x", 2, 0x81, 0, 0, lifetime, 7)
    return [b"\x02garbage" * 3, head + struct.pack("!12sB3xHH16s", nonce, 17, port, 40000,
                                                   mapped)]


def natpmp_router(data: bytes) -> list[bytes]:
    if data[0] == 2:  # a PCP request: NAT-PMP's "unsupported version" answer
        return [struct.pack("!BBHI", 0, 0x80 + data[1], 1, 5)]
    if data[:2] == b"\0\0":
        return [struct.pack("!BBHI4s", 0, 128, 0, 5, bytes([198, 18, 1, 9]))]
    _, _, _, internal, _, lifetime = struct.unpack("!BBHHHI", data)
    return [struct.pack("!BBHIHHI", 0, 129, 0, 5, internal, 41000, lifetime)]


async def start_router(answer: Answer, host: str = "127.0.0.1"
                       ) -> tuple[Router, asyncio.BaseTransport, int]:
    loop = asyncio.get_running_loop()
    transport, router = await loop.create_datagram_endpoint(lambda: Router(answer),
                                                            local_addr=(host, 0))
    return router, transport, transport.get_extra_info("sockname")[1]


@pytest.fixture
def router_port(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def use(port: int) -> None:
        monkeypatch.setattr(pm, "PCP_PORT", port)
    return use


async def test_a_pcp_mapping_is_granted_refreshed_and_released(
        router_port: Callable[[int], None]) -> None:
    router, transport, port = await start_router(pcp_router)
    router_port(port)
    mapping = portmap.RouterMapping("127.0.0.1", "127.0.0.1", 5000, lifetime=2)
    await mapping.start()
    assert await mapping.wait(2) == ("198.18.1.1", 40000)
    assert mapping.dropped == 1  # the garbage datagram before the answer
    await asyncio.sleep(1.3)  # refreshed at half the 2 s lifetime
    assert len([d for d in router.got if d[0] == 2]) >= 2
    mapping.close()
    await asyncio.sleep(0.05)
    assert struct.unpack("!I", router.got[-1][4:8])[0] == 0  # lifetime 0: released
    transport.close()


async def test_a_nat_pmp_router_gives_the_mapping_and_its_address(
        router_port: Callable[[int], None]) -> None:
    _, transport, port = await start_router(natpmp_router)
    router_port(port)
    mapping = portmap.RouterMapping("127.0.0.1", "127.0.0.1", 5001)
    await mapping.start()
    assert await mapping.wait(2) == ("198.18.1.9", 41000)
    mapping.close()
    transport.close()


@pytest.mark.parametrize("answer", [lambda d: [], lambda d: [b"\xff" * 60, d[::-1]]],
                         ids=["silent", "garbage"])
async def test_a_silent_or_garbage_router_is_given_up_on_within_a_second(
        router_port: Callable[[int], None], answer: Answer) -> None:
    router, transport, port = await start_router(answer, "127.0.0.2")
    router_port(port)
    mapping = portmap.RouterMapping("127.0.0.2", "127.0.0.1", 5002)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await mapping.start()
    assert await mapping.wait(3) is None
    assert mapping.settled.is_set() and loop.time() - began < 1.5, mapping.reason
    assert mapping.reason is not None and "no PCP or NAT-PMP answer" in mapping.reason
    assert len(router.got) == 4  # two PCP and two NAT-PMP requests, then nothing
    mapping.close()
    transport.close()


async def test_the_probe_reports_each_protocol_and_remembers_the_first_that_maps(
        router_port: Callable[[int], None], monkeypatch: pytest.MonkeyPatch) -> None:
    """PCP and NAT-PMP against the loopback router; SSDP is multicast, which would leave
    loopback, so here the search finds nothing (the NAT lab runs it against miniupnpd)."""
    async def no_igd(gw: str, source: str) -> None:
        return None

    from mesh.transport import upnp

    monkeypatch.setattr(upnp, "discover", no_igd)
    _, transport, port = await start_router(natpmp_router, "127.0.0.3")
    router_port(port)
    report = await portmap.probe("127.0.0.3")
    assert report is not None
    assert report.as_dict() == {"gateway": "127.0.0.3", "pcp": False, "nat_pmp": True,
                                "upnp": False, "mapped": "198.18.1.9:41000",
                                "protocol": "nat-pmp"}
    assert portmap.router_protocol("127.0.0.3") == "nat-pmp"
    transport.close()
