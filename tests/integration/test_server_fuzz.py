"""Garbage at a real `mesh signal` over WebSocket: it keeps serving, memory stays flat."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
from pathlib import Path

import aiohttp

from mesh.proto import frames as p
from mesh.proto.identity import Identity
from tests.conftest import Mesh
from tests.integration.test_signal_server import still_serves

FRAMES_PER_CONN = 400
CONNS = 25


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def garbage(rng: random.Random, node: str) -> str | bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == 1:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(300)))
    if kind == 2:
        return "[" * rng.randrange(1, 5000)
    if kind == 3:
        return json.dumps({"type": "register", "node": node,
                           "sig": base64.b64encode(rng.randbytes(64)).decode()})
    if kind == 4:
        payload = base64.b64encode(rng.randbytes(rng.randrange(2000))).decode()
        return json.dumps({"type": "send", "to": node, "ref": rng.randrange(-5, 2**60),
                           "payload": payload})
    if kind == 5:
        return "x" * rng.choice([60_000, 66_000, 70_000])
    if kind == 6:
        return json.dumps({"type": rng.choice(["ping", "send", "register", "hello", 7, None]),
                           rng.choice(["to", "node", "x"]): rng.choice([1, "a", [], {}, None])})
    if kind == 7:
        return json.dumps(rng.random())
    if kind == 8:
        return p.encode(p.Ping())
    return json.dumps({"type": "send", "to": Identity.generate().node_id, "payload": "AA==",
                       "ref": 1})


async def hammer(url: str, seed: int, node: str) -> int:
    rng = random.Random(seed)
    sent = 0
    async with aiohttp.ClientSession() as http:
        ws = None
        while sent < FRAMES_PER_CONN:
            if ws is None or ws.closed:
                ws = await http.ws_connect(url, max_msg_size=0)
            frame = garbage(rng, node)
            try:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
            except (ConnectionError, aiohttp.ClientError):
                ws = None
            sent += 1
            if sent % 50 == 0 and ws is not None:
                await asyncio.sleep(0)  # let the server answer; drain what it sent
                with contextlib.suppress(asyncio.TimeoutError):
                    while True:
                        msg = await ws.receive(timeout=0.01)
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            ws = None
                            break
        if ws is not None:
            await ws.close()
    return sent


async def test_garbage_changes_nothing(mesh: Mesh) -> None:
    proc = mesh.start("signal", "--port", "0", "--stun-port", "0", "--json", "--rate", "100000",
                      "--max-conns-per-ip", "1000")
    url = str(proc.event("ready")["url"])
    async with aiohttp.ClientSession() as http:
        await still_serves(http, url)  # warm up: the baseline includes a normal session
    before = rss_kb(proc.p.pid)
    node = Identity.generate().node_id
    counts = await asyncio.gather(*(hammer(url, seed, node) for seed in range(CONNS)))
    async with aiohttp.ClientSession() as http:
        await still_serves(http, url)
    grown_mb = (rss_kb(proc.p.pid) - before) / 1024
    print(f"{sum(counts)} garbage frames; signaling RSS grew {grown_mb:.1f} MB")
    assert proc.p.poll() is None
    assert grown_mb < 50
