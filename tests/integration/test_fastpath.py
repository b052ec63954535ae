"""The tuned data plane against itself and against stock aiortc, over real loopback UDP.

Each pair is two real peer connections in this process (ICE, DTLS and SCTP over
127.0.0.1); the tuning is per connection, so a stock one sits beside a tuned one.
Messages of every size from 1 byte to 64 KiB go both ways at once and must
arrive complete and in order; the tuned pair must have found 16 KiB packets,
a pair with a stock end must never have left aiortc's 1189 bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from mesh.proto import plpmtud
from mesh.transport.fastpath import TunedPeerConnection, TunedSctpTransport
from mesh.transport.ice import gather_on

TOTAL = 3 * 1024 * 1024


def messages(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, n = [], 0
    while n < TOTAL:
        size = rng.choice([1, 2, 1159, 1160, 1161, 4000, 16355, 16356, 16357, 32768, 65536])
        out.append(rng.randbytes(size))
        n += size
    return out


async def pump(channel: Any, msgs: list[bytes]) -> None:
    low = asyncio.Event()
    channel.bufferedAmountLowThreshold = 256 * 1024
    channel.on("bufferedamountlow", low.set)
    for m in msgs:
        channel.send(m)
        if channel.bufferedAmount > 1024 * 1024:
            low.clear()
            await low.wait()


def tuned(discover: bool) -> RTCPeerConnection:
    gather_on(("127.0.0.1",))  # both ends, stock or tuned, gather on loopback only
    return TunedPeerConnection(plpmtud=discover)


async def exchange(tuned_a: bool, tuned_b: bool,
                   discover: bool = True) -> tuple[int | None, int | None]:
    a = tuned(discover) if tuned_a else RTCPeerConnection()
    b = tuned(discover) if tuned_b else RTCPeerConnection()
    ch_a = a.createDataChannel("bulk")
    want_a, want_b = messages(1), messages(2)  # a sends want_a, b sends want_b
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    done = {"a": asyncio.Event(), "b": asyncio.Event()}
    ch_b_ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def collect(side: str, want: list[bytes]) -> Any:
        def on_message(msg: bytes) -> None:
            got[side].append(msg)
            if len(got[side]) == len(want):
                done[side].set()
        return on_message

    @b.on("datachannel")
    def _on_dc(channel: Any) -> None:
        channel.on("message", collect("b", want_a))
        ch_b_ready.set_result(channel)

    ch_a.on("message", collect("a", want_b))
    try:
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        ch_b = await asyncio.wait_for(ch_b_ready, 20)
        if ch_a.readyState != "open":
            opened = asyncio.Event()
            ch_a.on("open", opened.set)
            await asyncio.wait_for(opened.wait(), 20)
        await asyncio.sleep(0.3)  # tuned pairs: let the probe finish before the bulk
        await asyncio.wait_for(asyncio.gather(
            pump(ch_a, want_a), pump(ch_b, want_b), done["a"].wait(), done["b"].wait()), 120)
        for side, want in (("b", want_a), ("a", want_b)):
            assert [len(m) for m in got[side]] == [len(m) for m in want]
            assert (hashlib.sha256(b"".join(got[side])).digest()
                    == hashlib.sha256(b"".join(want)).digest())
        return tuple(  # type: ignore[return-value]
            pc.sctp.packet_size if isinstance(pc.sctp, TunedSctpTransport) else None
            for pc in (a, b))
    finally:
        await a.close()
        await b.close()


def test_tuned_pair_finds_16k_packets_and_moves_every_message_intact() -> None:
    assert asyncio.run(exchange(True, True)) == (16384, 16384)


@pytest.mark.parametrize(("tuned_a", "tuned_b"), [(True, False), (False, True)],
                         ids=["tuned-offers-to-stock", "stock-offers-to-tuned"])
def test_tuned_interoperates_with_stock_aiortc(tuned_a: bool, tuned_b: bool) -> None:
    sizes = asyncio.run(exchange(tuned_a, tuned_b))
    tuned_size = sizes[0] if tuned_a else sizes[1]
    assert tuned_size == plpmtud.BASE  # a stock peer never announced it takes more


def test_discovery_can_be_turned_off() -> None:
    assert asyncio.run(exchange(True, True, discover=False)) == (plpmtud.BASE, plpmtud.BASE)

