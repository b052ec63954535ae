"""TURN over TCP holds nothing for strangers (hardening #4): a per-address cap, a
deadline for the first authenticated allocation, and the close of a connection
whose allocation has gone. Real sockets on loopback, the server in process."""

from __future__ import annotations

import asyncio
import secrets
import time

from mesh.proto import stun as s
from signaling.policy import RelayPolicy
from signaling.turn import TurnConfig, rest_credentials
from signaling.turn_server import TurnServer

SECRET = b"tcp-secret"


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            return await reader.read(65536) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  msg: s.Message, key: bytes | None = None) -> s.Message:
    writer.write(msg.encode(key=key, fingerprint=True))
    framer = s.StreamFramer()
    async with asyncio.timeout(5):
        while True:
            frames = framer.feed(await reader.read(65536))
            if frames:
                return s.parse(frames[0])


async def allocate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> s.Message:
    user, password = rest_credentials(SECRET, "legit", time.time())
    transport = (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")
    first = await request(reader, writer, s.Message(s.ALLOCATE, s.REQUEST,
                                                     secrets.token_bytes(12), (transport,)))
    nonce = first.get(s.NONCE)
    assert nonce is not None
    key = s.long_term_key(user, "mesh", password)
    msg = s.Message(s.ALLOCATE, s.REQUEST, secrets.token_bytes(12), (
        transport, (s.USERNAME, user.encode()), (s.REALM, b"mesh"), (s.NONCE, nonce)))
    return await request(reader, writer, msg, key)


async def test_turn_tcp_strangers_are_capped_and_timed_out_and_clients_stay() -> None:
    server = TurnServer(TurnConfig(secret=SECRET, relay_ip="127.0.0.1"), RelayPolicy(),
                        "127.0.0.1", 0, "127.0.0.1", tcp_per_address=4,
                        tcp_allocate_within=0.6, tcp_idle_check=0.3)
    await server.start()
    try:
        parked = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(10)]
        for _, writer in parked:  # a STUN header announcing a large body, then silence
            writer.write(b"\x00\x03\xff\xf0" + secrets.token_bytes(12) + b"x" * 1000)
        await asyncio.sleep(0.2)
        now = await asyncio.gather(*(closed(r, 0.1) for r, _ in parked))
        assert sum(now) == 6  # over the per-address cap: closed at once
        later = await asyncio.gather(*(closed(r, 2.0) for r, _ in parked))
        assert all(later)  # the rest: closed at the allocation deadline
        assert server._tcp_conns.total() == 0 and server._tcp_clients == {}
        # a client that authenticates in time keeps its connection past the deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert (await allocate(reader, writer)).cls == s.SUCCESS
        assert not await closed(reader, 1.5)
        binding = await request(reader, writer, s.Message(s.BINDING, s.REQUEST,
                                                          secrets.token_bytes(12)))
        assert binding.cls == s.SUCCESS
        # once its allocation is gone (expired here), the connection goes at the next check
        for alloc in server.core.allocations.values():
            alloc.expires = 0
        server.dispatch(server.core.expire(time.time()))
        assert await closed(reader, 2.0)
        writer.close()
        for _, w in parked:
            w.close()
    finally:
        await server.stop()
