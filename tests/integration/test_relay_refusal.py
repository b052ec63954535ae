"""A relay that refuses every address of the peer is reported as such, at once (issue 21
#3): "the relay refused 127.0.0.1 (loopback); ... --relay-allow 127.0.0.0/8" instead of
"no peer-to-peer path within 20 s". Two real peers and a real TURN server on loopback,
the relay with its default policy; the peer it should reach has host candidates only."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.errors import RelayRefused
from mesh.transport.ice import IcePlan, IceServer
from mesh.transport.peer import Peer
from mesh.transport.settings import IceSettings
from signaling.policy import RelayPolicy
from signaling.turn import TurnConfig, rest_credentials
from signaling.turn_server import TurnServer

SECRET = b"refusal-secret"
LOOPBACK = IceSettings(host_addresses=("127.0.0.1",))


async def attempt(allow: tuple[str, ...]) -> tuple[float, BaseException | None]:
    server = TurnServer(TurnConfig(secret=SECRET, relay_ip="127.0.0.1"), RelayPolicy(allow),
                        "127.0.0.1", 0, "127.0.0.1")
    await server.start()
    user, password = rest_credentials(SECRET, "n", time.time())
    plan = IcePlan(turn_udp=IceServer(f"turn:127.0.0.1:{server.port}", "127.0.0.1",
                                      server.port, "udp", user, password))
    relayed = Peer(plan, "relay", ice=LOOPBACK)
    host_only = Peer(IcePlan(), "direct", ice=LOOPBACK)
    started = time.monotonic()
    try:
        await relayed.accept(await host_only.answer(await relayed.offer()))
        try:
            await relayed.connected(20)
            return time.monotonic() - started, None
        except RelayRefused as exc:
            return time.monotonic() - started, exc
    finally:
        await relayed.close()
        await host_only.close()
        await server.stop()


def test_a_refused_relay_says_so_at_once_and_names_the_flag() -> None:
    took, error = asyncio.run(attempt(()))
    assert isinstance(error, RelayRefused), error
    assert "the relay refused 127.0.0.1 (loopback)" in str(error)
    assert "--relay-allow 127.0.0.0/8" in str(error)
    assert took < 5, took  # not the 20 s path timeout


def test_the_same_attempt_connects_where_the_relay_allows_it() -> None:
    took, error = asyncio.run(attempt(("127.0.0.0/8",)))
    assert error is None and took < 10


@pytest.mark.parametrize("hosts,needle", [
    (["10.0.0.7"], "10.0.0.7 (a private address); on a private network"),
    (["127.0.0.1", "::1"], "::1 (loopback); for a test on one machine"),
])
def test_the_explanation_names_what_was_refused(hosts: list[str], needle: str) -> None:
    from mesh.transport.relaywatch import explain
    assert needle in explain(hosts)
