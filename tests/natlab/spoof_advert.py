"""Run inside a lab namespace: advertise forged mesh shares under a victim's name.

1. the victim's node id with a signature made by another key;
2. a correct-looking advert whose TXT record is oversized.
Stays up until killed."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from mesh.proto.advert import SERVICE, make_properties
from mesh.proto.identity import Identity


async def main() -> None:
    name, victim, addr = sys.argv[1], sys.argv[2], sys.argv[3]
    forger = Identity.generate()
    props = make_properties(forger, name, 9999, [addr], time.time(), True)
    props["id"] = victim  # claims to be the victim; the signature is the forger's
    big = make_properties(forger, name, 9998, [addr], time.time(), True)
    for k in range(7):  # 7 x 240 bytes: over the 1300-byte bound on the whole record
        big[f"pad{k}"] = "x" * 240
    zc = AsyncZeroconf()
    for i, p in enumerate((props, big)):
        info = ServiceInfo(SERVICE, f"{name}-spoof{i}.{SERVICE}",
                           addresses=[socket.inet_aton(addr)], port=9999 - i, properties=p,
                           server=f"spoof{i}.local.")
        await zc.async_register_service(info)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
