"""``mesh up``: every tunnel of a ``mesh.toml`` in one process, reloaded on SIGHUP.

Each entry of the file (configfile.py) runs as a ``Share`` or a ``Tunnel`` of its
own, with this machine's one node key; their events reach ``on_event`` tagged
with the entry's name (``Tagged``: a ``tunnel`` field in ``--json``). One control
socket answers ``mesh status`` for all of them. ``reload()`` reads the file
again: entries that are gone or changed stop, new or changed ones start, and
the others are not touched (their connections stay open). A file that no
longer parses changes nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError, MeshError
from mesh.proto.identity import Identity

from . import events
from .config import ConnectConfig, ShareConfig
from .configfile import ConnectEntry, Entry, load
from .connect import Tunnel
from .discovery import resolve
from .home import load_or_create
from .share import Share
from .status import ControlServer

log = logging.getLogger("mesh.up")


class Up:
    def __init__(self, path: Path, *, identity: Identity | None = None,
                 on_event: events.OnEvent = events.ignore, control_socket: bool = True) -> None:
        self.path = path
        self.identity = identity or load_or_create()
        self.on_event = on_event
        self.entries: dict[str, Entry] = {}
        self.running: dict[str, Share | Tunnel] = {}
        self.started = time.monotonic()
        self._control = ControlServer(self.snapshot) if control_socket else None

    async def start(self) -> None:
        """Start every entry; if one fails, stop the others and raise its error."""
        plan = load(self.path)
        try:
            for name, entry in plan.entries.items():
                await self._start(name, entry)
        except BaseException:
            await self.close()
            raise
        if self._control is not None:
            await self._control.start()
        self.on_event(events.UpReady(str(self.path), list(self.running)))

    async def reload(self) -> None:
        try:
            plan = load(self.path)
        except ConfigError as exc:
            self.on_event(events.Warning(f"reload refused, nothing changed: {exc}"))
            return
        new = plan.entries
        gone = [n for n in self.entries if n not in new]
        changed = [n for n in self.entries if n in new and new[n] != self.entries[n]]
        added = [n for n in new if n not in self.entries]
        for name in gone + changed:
            await self._stop(name)
        failed = []
        for name in changed + added:
            try:
                await self._start(name, new[name])
            except MeshError as exc:
                failed.append(name)
                self.on_event(events.Tagged(events.Warning(f"did not start: {exc}"), name))
        kept = [n for n in self.entries if n not in changed and n not in added]
        self.on_event(events.Reloaded(added=[n for n in added if n not in failed],
                                      removed=gone, changed=[n for n in changed
                                                             if n not in failed],
                                      kept=kept, failed=failed))

    async def _start(self, name: str, entry: Entry) -> None:
        def tagged(event: events.Event) -> None:
            self.on_event(events.Tagged(event, name))

        running: Share | Tunnel
        if isinstance(entry, ShareConfig):
            running = Share(replace(entry, control_socket=False), identity=self.identity,
                            on_event=tagged)
        else:
            running = Tunnel(await self._connect_config(entry), identity=self.identity,
                             on_event=tagged)
        try:
            await running.start()
        except MeshError as exc:
            raise type(exc)(f"[{name}] {exc}") from exc
        self.running[name] = running
        self.entries[name] = entry

    async def _connect_config(self, entry: ConnectEntry) -> ConnectConfig:
        config = replace(entry.config, control_socket=False)
        if entry.lan_name:  # find its share now
            ticket, by_name = await resolve(entry.target, time.time(),
                                            signal_urls=config.signal_urls,
                                            identity=self.identity)
            config = replace(config, ticket=ticket, by_name=by_name)
        return config

    async def _stop(self, name: str) -> None:
        running = self.running.pop(name, None)
        self.entries.pop(name, None)
        if running is not None:
            await running.close()

    async def close(self) -> None:
        if self._control is not None:
            await self._control.close()
        for name in list(self.running):
            await self._stop(name)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "up", "file": str(self.path),
                "uptime_s": round(time.monotonic() - self.started, 1),
                "tunnels": [{"tunnel": name, **running.snapshot()}
                            for name, running in self.running.items()]}

    async def __aenter__(self) -> Up:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
