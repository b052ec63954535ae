"""A hostile signaling server for tests: routes like the real one, but alters what the
second node (the sharer) sends. Modes: ``flip`` changes one bit of the sealed envelope;
``forge`` replaces it with an answer the server made and signed with its own key."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from mesh.proto.envelope import seal_envelope
from mesh.proto.identity import Identity
from signaling.server import ServerConfig, SignalServer


def main() -> None:
    mode = sys.argv[1]
    first: list[str] = []
    forger = Identity.generate()

    def rewrite(sender: str, to: str, payload: bytes) -> bytes:
        if not first:
            first.append(sender)
        if sender == first[0]:
            return payload
        if mode == "flip":
            data = bytearray(payload)
            data[len(data) // 2] ^= 0x01
            return bytes(data)
        fake_sdp = "v=0\r\na=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n"
        return seal_envelope(forger, to, "answer", "whatever", {"sdp": fake_sdp}, time.time())

    async def run() -> None:
        server = SignalServer(ServerConfig(port=0), _rewrite=rewrite)
        url = await server.start()
        print(json.dumps({"event": "ready", "url": url}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
