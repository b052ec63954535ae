"""Public names cannot be squatted (hardening #15): a cap per key, a claim rate per
address, and names freed when their holder has been gone for the configured time.
The same rules through both brokers (the Redis one runs them in one Lua script,
against a real redis-server), then the claim rate through a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from mesh.proto import frames as p
from signaling.broker import MemoryBroker
from signaling.names import NameBook, NameQuota, NameRules
from signaling.redis_broker import RedisBroker
from tests.conftest import Mesh
from tests.integration.test_redis import redis_url  # noqa: F401
from tests.integration.test_signal_server import recv, register

RULES = NameRules(max_per_node=3, offline_ttl=0.5)


class _Box:
    def deliver_frame(self, frame: str) -> bool:
        return True

    def replaced(self) -> None:
        pass


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryBroker(names=RULES)
        return
    url = request.getfixturevalue("redis_url")
    b = RedisBroker(url, "test", names=RULES)
    await b.start()
    try:
        yield b
    finally:
        await b.close()


async def test_first_come_capped_per_key_and_released(broker: Any) -> None:
    assert await broker.claim_name("a", "n1") == "n1"
    assert await broker.claim_name("a", "n2") == "n1"  # taken
    assert await broker.claim_name("b", "n1") == "n1"
    assert await broker.claim_name("c", "n1") == "n1"
    assert await broker.claim_name("a", "n1") == "n1"  # a holder's re-claim is no new name
    with pytest.raises(NameQuota):
        await broker.claim_name("d", "n1")
    assert await broker.name_owner("d") is None
    assert not await broker.release_name("a", "n2")
    assert await broker.release_name("a", "n1")
    assert await broker.claim_name("a", "n2") == "n2"
    assert await broker.claim_name("d", "n1") == "n1"  # a slot came free


async def test_a_name_whose_holder_stays_away_goes_to_the_next_claimant(broker: Any) -> None:
    assert await broker.claim_name("gone", "away") == "away"
    await broker.attach("here", _Box())
    assert await broker.claim_name("kept", "here") == "here"
    await asyncio.sleep(0.7)  # past the offline ttl
    assert await broker.name_owner("gone") is None
    assert await broker.claim_name("gone", "next") == "next"
    assert await broker.claim_name("kept", "next") == "here"  # online: it keeps its name
    for i in range(3):  # the absent holder's count went down with its name
        assert await broker.claim_name(f"new{i}", "away") == "away"


def test_the_book_on_a_fake_clock() -> None:
    book = NameBook(NameRules(max_per_node=2, offline_ttl=100.0))
    offline = lambda node: False  # noqa: E731
    assert book.claim("x", "n1", 0.0, offline) == "n1"
    assert book.claim("x", "n2", 99.0, offline) == "n1"
    assert book.claim("x", "n1", 99.0, offline) == "n1"  # refreshed at 99
    assert book.claim("x", "n2", 198.0, offline) == "n1"
    assert book.owner("x", 199.0, offline) is None
    assert book.claim("x", "n2", 199.0, offline) == "n2"
    assert book.count("n1") == 0 and book.count("n2") == 1


async def test_claims_from_one_address_are_rate_limited(mesh: Mesh) -> None:
    proc = mesh.start("signal", "--port", "0", "--stun-port", "0", "--json")
    url = str(proc.event("ready")["url"])
    async with aiohttp.ClientSession() as http:
        codes: list[str] = []
        for _ in range(3):  # throwaway keys do not help: the rate is per address
            ws, _ = await register(http, url)
            for i in range(10):
                await ws.send_str(p.encode(p.NameOp("claim", f"squat{len(codes)}x{i}", i)))
            for _ in range(10):
                msg = await recv(ws)
                codes.append(str(msg.get("code") or msg["type"]))
            await ws.close()
        assert codes.count("name") == 20  # the burst
        assert codes.count("rate-limited") == 10
