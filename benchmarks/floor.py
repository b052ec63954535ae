"""The floor: a minimal port forwarder on a *stock* aiortc data channel, no tuning.

    python benchmarks/floor.py listen PORT     # the `connect` side: prints its offer
    python benchmarks/floor.py dial HOST:PORT  # the `share` side: reads the offer

Two processes exchange SDP over stdin/stdout (one JSON line each way), so no
signaling server is involved. Each TCP connection accepted by ``listen`` gets
its own ordered, reliable data channel; ``dial`` connects it to HOST:PORT and
pipes bytes both ways, pausing on ``bufferedAmount`` like any careful user of
the stock API would. aiortc's SCTP is used exactly as shipped; the only
change from defaults is that ICE gathers 127.0.0.1 (benchmarks stay on
loopback), the same ``MESH_ICE_ADDRESSES`` switch mesh uses.

On the listen side, after the first line (``{"offer": ...}``) it prints
``{"listening": PORT, "open_ms": T}`` once the control channel is open, where
T is offer created -> channel open, the floor's counterpart of mesh's
``connect_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time

os.environ.setdefault("MESH_ICE_ADDRESSES", "127.0.0.1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import aioice.ice
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from mesh.node.environ import ice_addresses


def gather_on(addresses: tuple[str, ...] | None) -> None:
    """Host candidates on ``addresses`` only: stock aioice has no such option, so this
    script (and only this script: mesh passes addresses to its own ICE connection)
    replaces aioice's address discovery for its process."""
    if addresses:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


gather_on(ice_addresses())  # the loopback ICE address switch, as mesh uses it

HIGH = 1 << 20
LOW = 256 << 10


async def pipe_channel(channel: RTCDataChannel, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
    drained = asyncio.Event()
    drained.set()
    channel.bufferedAmountLowThreshold = LOW
    done = asyncio.get_running_loop().create_future()

    @channel.on("bufferedamountlow")
    def _low() -> None:
        drained.set()

    @channel.on("message")
    def _message(data: bytes | str) -> None:
        if isinstance(data, str):  # "eof" marker
            if writer.can_write_eof():
                writer.write_eof()
            return
        writer.write(data)

    @channel.on("close")
    def _closed() -> None:
        writer.close()
        if not done.done():
            done.set_result(None)

    async def upstream() -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                channel.send("eof")
                return
            channel.send(data)
            if channel.bufferedAmount > HIGH:
                drained.clear()
                await drained.wait()

    if channel.readyState != "open":
        opened = asyncio.get_running_loop().create_future()
        channel.on("open", lambda: opened.done() or opened.set_result(None))
        await opened
    up = asyncio.create_task(upstream())
    await done
    up.cancel()


async def listen(port: int) -> None:
    pc = RTCPeerConnection()
    ctl = pc.createDataChannel("ctl")
    t0 = time.perf_counter()
    await pc.setLocalDescription(await pc.createOffer())
    print(json.dumps({"offer": pc.localDescription.sdp}), flush=True)
    answer = json.loads(await asyncio.get_running_loop().run_in_executor(
        None, sys.stdin.readline))
    await pc.setRemoteDescription(RTCSessionDescription(answer["answer"], "answer"))
    opened = asyncio.get_running_loop().create_future()
    if ctl.readyState == "open":
        opened.set_result(None)
    ctl.on("open", lambda: opened.done() or opened.set_result(None))
    await opened
    open_ms = (time.perf_counter() - t0) * 1000

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = pc.createDataChannel("tcp")
        await pipe_channel(channel, reader, writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", port)
    print(json.dumps({"listening": server.sockets[0].getsockname()[1],
                      "open_ms": round(open_ms, 1)}), flush=True)
    await asyncio.Event().wait()


async def dial(target: str) -> None:
    host, port = target.rsplit(":", 1)
    tasks: set[asyncio.Future[None]] = set()
    pc = RTCPeerConnection()

    @pc.on("datachannel")
    def on_channel(channel: RTCDataChannel) -> None:
        if channel.label != "tcp":
            return

        early: list[bytes | str] = []
        channel.on("message", early.append)  # until the service connection is up

        async def run() -> None:
            reader, writer = await asyncio.open_connection(host, int(port))
            channel.remove_listener("message", early.append)
            for data in early:
                if isinstance(data, str):
                    writer.write_eof()
                else:
                    writer.write(data)
            await pipe_channel(channel, reader, writer)

        task = asyncio.ensure_future(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    offer = json.loads(await asyncio.get_running_loop().run_in_executor(
        None, sys.stdin.readline))
    await pc.setRemoteDescription(RTCSessionDescription(offer["offer"], "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    print(json.dumps({"answer": pc.localDescription.sdp}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    role, arg = sys.argv[1], sys.argv[2]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(listen(int(arg)) if role == "listen" else dial(arg))


if __name__ == "__main__":
    main()
