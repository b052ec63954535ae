"""The Python API: ``async with mesh.share(...)`` and ``async with mesh.connect(...)``.

Both build, at call time, the same frozen configurations the CLI builds
(mesh/node/config.py), so a bad port, name or URL raises ``ConfigError`` at
once, before any I/O, with the CLI's message. Entering the context starts the
running object: ``Share`` (``.ticket``, ``.peers``, ``.snapshot()``) or
``Tunnel`` (``.port``, ``.path``, ``.link_info``, ``.open_stream()``,
``.snapshot()``). Errors are ``MeshError`` subclasses, as on the command line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from .node import environ, events
from .node.config import ConnectConfig, ShareConfig
from .node.connect import Tunnel
from .node.discovery import resolve
from .node.share import Share
from .proto import ticket as ticket_mod
from .proto.identity import Identity

T = TypeVar("T", Share, Tunnel)


class Running(Generic[T]):
    """An async context manager around a running ``Share`` or ``Tunnel``."""

    def __init__(self, make: Any, config: ShareConfig | ConnectConfig | None = None) -> None:
        self._make = make
        self.config = config
        """The configuration, when it is known before connecting (not for a LAN name)."""
        self._running: T | None = None

    async def __aenter__(self) -> T:
        running: T = await self._make()
        self._running = running
        await running.start()
        return running

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._running is not None:
            await self._running.close()


def share(port: int, *, host: str = "127.0.0.1", name: str | None = None,
          signal: str | Sequence[str] | None = None, lan: bool | None = None,
          allow: Sequence[str] | None = None, identity: Identity | None = None,
          on_event: events.OnEvent = events.ignore, **options: Any) -> Running[Share]:
    """Share ``host:port``; ``async with`` it to get the running share (``share.ticket``).

    ``signal`` defaults to ``$MESH_SIGNAL``; ``lan`` (mDNS advert and LAN
    signaling) defaults to on unless ``MESH_LAN=off``; ``name`` to
    ``<hostname>-<port>``. Other keyword arguments are ``ShareConfig`` fields
    (``max_peers``, ``idle_timeout``, ``http``, ``public``, ...).
    """
    config = ShareConfig(port=port, host=host, name=name or "",
                         signal_urls=environ.signal_urls(signal),
                         lan=environ.lan_enabled() if lan is None else lan,
                         allow=frozenset(allow) if allow else None,
                         control_socket=options.pop("control_socket", False), **options)

    async def make() -> Share:
        return Share(config, identity=identity, on_event=on_event)

    return Running(make, config)


def connect(ticket_or_name: str, *, port: int = 0, signal: str | Sequence[str] | None = None,
            identity: Identity | None = None, on_event: events.OnEvent = events.ignore,
            **options: Any) -> Running[Tunnel]:
    """Reach a share (by ticket, or by name on the LAN) on ``127.0.0.1:tunnel.port``.

    The context is entered once the peer connection is up and admitted
    (``tunnel.path`` is ``"direct"`` or ``"relay"``). Other keyword arguments are
    ``ConnectConfig`` fields.
    """
    urls = environ.signal_urls(signal) if signal else ()
    control_socket = options.pop("control_socket", False)
    given = checked = None
    if ticket_mod.looks_like_ticket(ticket_or_name):
        given = ticket_mod.decode(ticket_or_name, now=time.time())
        checked = ConnectConfig(ticket=given, port=port, signal_urls=urls,
                                control_socket=control_socket, **options)

    async def make() -> Tunnel:
        ticket, by_name = ((given, False) if given is not None
                           else await resolve(ticket_or_name, time.time(),
                                              signal_urls=urls, identity=identity))
        config = ConnectConfig(ticket=ticket, port=port, signal_urls=urls, by_name=by_name,
                               control_socket=control_socket, **options)
        return Tunnel(config, identity=identity, on_event=on_event)

    return Running(make, checked)
