"""The Python API: ``async with mesh.share(...)`` and ``async with mesh.connect(...)``.

Both build the same frozen configurations the CLI builds and return the
running objects: ``Share`` (``.ticket``, ``.peers``, ``.snapshot()``) and
``Tunnel`` (``.port``, ``.path``, ``.link_info``, ``.snapshot()``). Errors are
``MeshError`` subclasses, as on the command line.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from mesh.node import events
from mesh.node.connect import ConnectConfig, Tunnel, resolve
from mesh.node.share import Share, ShareConfig
from mesh.proto.identity import Identity


def _urls(signal: str | Sequence[str] | None) -> tuple[str, ...]:
    if signal is None:
        env = os.environ.get("MESH_SIGNAL", "")
        return tuple(u.strip() for u in env.split(",") if u.strip())
    return (signal,) if isinstance(signal, str) else tuple(signal)


@asynccontextmanager
async def share(
    port: int,
    *,
    host: str = "127.0.0.1",
    name: str | None = None,
    signal: str | Sequence[str] | None = None,
    lan: bool | None = None,
    allow: Sequence[str] | None = None,
    identity: Identity | None = None,
    on_event: events.OnEvent = events.ignore,
    **options: Any,
) -> AsyncIterator[Share]:
    """Share ``host:port``; yields the running share (``share.ticket``).

    ``signal`` defaults to ``$MESH_SIGNAL``; ``lan`` (mDNS advert and LAN
    signaling) defaults to on unless ``MESH_LAN=off``. Other keyword arguments
    are ``ShareConfig`` fields (``max_peers``, ``idle_timeout``, ...).
    """
    if lan is None:
        lan = os.environ.get("MESH_LAN", "on").lower() not in ("off", "0", "no")
    config = ShareConfig(port=port, host=host, name=name or f"{host}-{port}",
                         signal_urls=_urls(signal), lan=lan,
                         allow=frozenset(allow) if allow else None,
                         control_socket=options.pop("control_socket", False), **options)
    running = Share(config, identity=identity, on_event=on_event)
    await running.start()
    try:
        yield running
    finally:
        await running.close()


@asynccontextmanager
async def connect(
    ticket_or_name: str,
    *,
    port: int = 0,
    signal: str | Sequence[str] | None = None,
    identity: Identity | None = None,
    on_event: events.OnEvent = events.ignore,
    **options: Any,
) -> AsyncIterator[Tunnel]:
    """Reach a share (by ticket, or by name on the LAN) on ``127.0.0.1:tunnel.port``.

    Returns once the peer connection is up and admitted (``tunnel.path`` is
    ``"direct"`` or ``"relay"``). Other keyword arguments are ``ConnectConfig``
    fields.
    """
    ticket, by_name = await resolve(ticket_or_name, time.time())
    config = ConnectConfig(ticket=ticket, port=port,
                           signal_urls=tuple(_urls(signal)) if signal else (),
                           by_name=by_name,
                           control_socket=options.pop("control_socket", False), **options)
    running = Tunnel(config, identity=identity, on_event=on_event)
    await running.start()
    try:
        yield running
    finally:
        await running.close()
