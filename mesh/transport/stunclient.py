"""One UDP socket asking STUN/TURN servers: requests matched to answers by transaction id.

Used by the peer (is UDP to the signaling server's STUN port open at all?) and
by ``mesh netcheck`` (mapped address from two server ports, TURN Allocate).
Each request is retransmitted on a short schedule (RFC 8489 section 6.2.1
in spirit, compressed: these are probes with a deadline, not a session).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any, cast

from mesh.proto import stun

Address = tuple[str, int]


class StunClient(asyncio.DatagramProtocol):
    """Open with ``await StunClient.open()``; ``close()`` when done."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, remote: Address | None = None) -> StunClient:
        loop = asyncio.get_running_loop()
        local = None if remote is not None else ("0.0.0.0", 0)
        _, proto = await loop.create_datagram_endpoint(cls, local_addr=local,
                                                       remote_addr=remote)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        fut = self.waiting.get(data[8:20])
        if fut is not None and not fut.done():
            fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        pass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def ask(self, raw: bytes, txid: bytes, addr: Address | None,
                  waits: tuple[float, ...] = (0.3, 0.5, 0.7)) -> stun.Message | None:
        """Send ``raw`` (retransmitted after each wait in ``waits``) until the answer
        with ``txid`` arrives; None if none does or it does not parse."""
        assert self.transport is not None
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[txid] = fut
        try:
            for wait in waits:
                if addr is None:
                    self.transport.sendto(raw)
                else:
                    self.transport.sendto(raw, addr)
                with contextlib.suppress(asyncio.TimeoutError):
                    return stun.parse(await asyncio.wait_for(asyncio.shield(fut), wait))
            return None
        except stun.StunError:
            return None
        finally:
            self.waiting.pop(txid, None)

    async def binding(self, addr: Address | None,
                      waits: tuple[float, ...] = (0.3, 0.5, 0.7)
                      ) -> tuple[Address | None, float]:
        """Our address as the server sees it (None: no answer), and the round trip in ms."""
        txid = secrets.token_bytes(12)
        t0 = time.monotonic()
        request = stun.Message(stun.BINDING, stun.REQUEST, txid).encode(fingerprint=True)
        reply = await self.ask(request, txid, addr, waits)
        return mapped(reply), (time.monotonic() - t0) * 1000


def mapped(msg: stun.Message | None) -> Address | None:
    if msg is None or msg.cls != stun.SUCCESS:
        return None
    value = msg.get(stun.XOR_MAPPED_ADDRESS)
    try:
        return stun.parse_xor_address(value, msg.txid) if value else None
    except stun.StunError:
        return None


async def answers(addr: Address, timeout: float = 1.0) -> bool:
    """True if a STUN Binding request to ``addr`` over UDP is answered within ``timeout``."""
    try:
        client = await StunClient.open(addr)
    except OSError:
        return False
    try:
        found, _ = await client.binding(None, (0.25, timeout - 0.25))
        return found is not None
    finally:
        client.close()
