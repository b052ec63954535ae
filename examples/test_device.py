"""A device test that reads like any other test: the sensor is reached through mesh.

    python -m pytest examples/test_device.py

`mesh_tunnel` (from mesh's pytest plugin) shares the device's port through a
rendezvous started for the session and connects to it; the test only sees a
local port. Point it at real hardware by sharing the board's HOST:PORT instead.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MESH_ICE_ADDRESSES", "127.0.0.1")  # everything stays on this machine

from iot_sensor import make_app


@pytest.fixture
async def sensor_port() -> Iterator[int]:
    runner = web.AppRunner(make_app("bench-sensor"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr,misc]
    await runner.cleanup()


def get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return dict(json.loads(resp.read()))


async def test_sensor_reading_through_the_tunnel(mesh_tunnel, sensor_port) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    tunnel = await mesh_tunnel(sensor_port)
    assert tunnel.path == "direct"
    first = await asyncio.to_thread(get, f"http://127.0.0.1:{tunnel.port}/reading")
    second = await asyncio.to_thread(get, f"http://127.0.0.1:{tunnel.port}/reading")
    assert first["sensor"] == "bench-sensor" and second["seq"] == int(first["seq"]) + 1  # type: ignore[call-overload]
    assert 15 < float(first["temperature_c"]) < 30  # type: ignore[arg-type]
