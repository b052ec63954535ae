"""pytest fixtures for testing services and devices through mesh (loaded automatically
once mesh is installed; entry point ``pytest11``).

- ``mesh_signal``: the URL of a rendezvous (signaling + STUN/TURN) running for the
  test session on 127.0.0.1, on free ports, in a background thread;
- ``mesh_tunnel``: an async factory; ``await mesh_tunnel(port)`` shares
  ``127.0.0.1:port`` through ``mesh_signal`` and connects to it, returning the
  ``Tunnel`` (``.port``, ``.path``); everything is closed after the test.

A device test then reads::

    async def test_reading(mesh_tunnel):
        tunnel = await mesh_tunnel(8080)
        body = urllib.request.urlopen(f"http://127.0.0.1:{tunnel.port}/reading").read()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # every pytest run loads this plugin: keep aiortc out of its start-up
    from mesh.node.connect import Tunnel

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures below need pytest-asyncio
    pytest_asyncio = None  # type: ignore[assignment]


@pytest.fixture(scope="session")
def mesh_signal() -> Iterator[str]:
    from signaling.rendezvous import Rendezvous, RendezvousConfig
    from signaling.server import ServerConfig

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    url_box: list[str] = []
    started = threading.Event()

    async def serve() -> None:
        server = Rendezvous(RendezvousConfig(signal=ServerConfig(port=0), stun_port=0,
                                             relay_allow=("127.0.0.0/8",)))
        url_box.append(await server.start())
        started.set()
        await stop.wait()
        await server.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the mesh rendezvous did not start")
    yield url_box[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def _async_fixture(fn: Any) -> Any:
    return pytest_asyncio.fixture(fn) if pytest_asyncio is not None else fn


@_async_fixture
async def mesh_tunnel(mesh_signal: str) -> AsyncIterator[Callable[..., Awaitable[Tunnel]]]:
    from . import api

    stack = contextlib.AsyncExitStack()

    async def make(port: int, host: str = "127.0.0.1", **options: Any) -> Tunnel:
        running = await stack.enter_async_context(
            api.share(port, host=host, signal=mesh_signal, lan=False))
        return await stack.enter_async_context(api.connect(running.ticket, **options))

    async with stack:
        yield make
