"""Run inside the lab's wan namespace: the plain STUN responder a router's ISP offers.

miniupnpd only maps ports when STUN shows its WAN address is not behind a filtering
NAT, and it checks that with RFC 5780 CHANGE-REQUEST Bindings. mesh's own STUN server
rightly answers those 420 (it has no alternate address); this one answers every
Binding request with XOR-MAPPED-ADDRESS from the same address, as RFC 3489-era
servers without a second address did. Usage: ``routerstun.py IP PORT``."""

from __future__ import annotations

import asyncio
import sys

from mesh.proto import stun


class Responder(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = stun.parse(data)
        except stun.StunError:
            return
        if msg.method != stun.BINDING or msg.cls != stun.REQUEST:
            return
        answer = stun.Message(stun.BINDING, stun.SUCCESS, msg.txid,
                              ((stun.XOR_MAPPED_ADDRESS, stun.xor_address(addr, msg.txid)),))
        self.transport.sendto(answer.encode(fingerprint=True), addr)  # type: ignore[attr-defined]


async def main() -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Responder, local_addr=(sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
