"""The in-process harness: a rendezvous, shares, connects and gateways in one event loop.

Everything real but the process boundary: the signaling server (in-memory
broker) and its embedded STUN/TURN on free loopback ports, real aiortc peer
connections over 127.0.0.1, real sockets to the services. Identities are made
in memory and nothing is written under the user's home, so a test needs no
subprocess and starts in milliseconds; the real-CLI tests keep what only the
CLI shows (exit codes, output lines, signals, a process's memory).

    async with Harness() as h:
        share = await h.share(port)               # a Share, events in h.events[share]
        tunnel = await h.connect(share.ticket)    # a Tunnel: tunnel.port, tunnel.path
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import Any

from mesh.node import events
from mesh.node.config import ConnectConfig, GatewayConfig, ShareConfig
from mesh.node.connect import Tunnel
from mesh.node.gateway import Gateway
from mesh.node.share import Share
from mesh.proto import ticket as ticket_mod
from mesh.proto.identity import Identity
from mesh.transport.ice import IceSettings
from signaling.rendezvous import Rendezvous, RendezvousConfig
from signaling.server import ServerConfig
from tests.conftest import Events

LOOPBACK = IceSettings(host_addresses=("127.0.0.1",))


class Recorder:
    """The events one object emitted, and a way to wait for the next of a kind."""

    def __init__(self, also: Callable[[events.Event], None] | None = None) -> None:
        self.events: list[events.Event] = []
        self._changed = asyncio.Event()
        self._also = also

    def __call__(self, event: events.Event) -> None:
        self.events.append(event)
        self._changed.set()
        if self._also is not None:
            self._also(event)

    def of(self, kind: type[events.Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait(self, kind: type[events.Event], timeout: float = 30.0,
                   where: Callable[[Any], bool] = lambda e: True, count: int = 1) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.of(kind) if where(e)]
                if len(found) >= count:
                    return found[count - 1]
                self._changed.clear()
                await self._changed.wait()


class Harness:
    def __init__(self, *, turn: bool = True, relay_allow: tuple[str, ...] = ("127.0.0.0/8",),
                 gateways: frozenset[str] = frozenset(), **rendezvous: Any) -> None:
        self.config = RendezvousConfig(
            signal=ServerConfig(port=0, gateways=gateways),
            stun_port=0 if turn else None, relay_allow=relay_allow, **rendezvous)
        self.server: Rendezvous | None = None
        self.url = ""
        self.recorders: dict[int, Recorder] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Harness:
        await self.start_server()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start_server(self) -> str:
        self.server = Rendezvous(self.config)
        self.url = await self.server.start()
        assert self.server.signal is not None
        self._ports = (self.server.signal.port,
                       self.server.turn.port if self.server.turn else None)
        return self.url

    async def stop_server(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def restart_server(self) -> str:
        """Start the rendezvous again on the ports it had (a server restart)."""
        signal_port, turn_port = self._ports
        await self.stop_server()
        self.config = replace(self.config, signal=replace(self.config.signal, port=signal_port),
                              stun_port=turn_port)
        return await self.start_server()

    def recorder(self, running: object) -> Recorder:
        return self.recorders[id(running)]

    async def _start(self, running: Any, recorder: Recorder) -> Any:
        self.recorders[id(running)] = recorder
        await running.start()
        self._stack.push_async_callback(running.close)
        return running

    async def share(self, port: int, *, identity: Identity | None = None,
                    on_event: Callable[[events.Event], None] | None = None,
                    **options: Any) -> Share:
        recorder = Recorder(on_event)
        options.setdefault("signal_urls", (self.url,))
        options.setdefault("name", "svc")
        config = ShareConfig(port=port, lan=False, control_socket=False,
                             persist_secret=False, ice=LOOPBACK, **options)
        share: Share = await self._start(Share(config, identity=identity or Identity.generate(),
                                               on_event=recorder), recorder)
        return share

    async def connect(self, ticket: str, *, identity: Identity | None = None,
                      on_event: Callable[[events.Event], None] | None = None,
                      **options: Any) -> Tunnel:
        recorder = Recorder(on_event)
        parsed = ticket_mod.decode(ticket)
        options.setdefault("use_lan_hints", False)
        config = ConnectConfig(ticket=parsed, control_socket=False, ice=LOOPBACK, **options)
        tunnel: Tunnel = await self._start(
            Tunnel(config, identity=identity or Identity.generate(), on_event=recorder),
            recorder)
        return tunnel

    async def gateway(self, identity: Identity,
                      on_event: Callable[[events.Event], None] | None = None,
                      **options: Any) -> Gateway:
        recorder = Recorder(on_event)
        config = GatewayConfig(domain=options.pop("domain", "mesh.test"),
                               signal_urls=(self.url,), host="127.0.0.1", port=0, ice=LOOPBACK,
                               **options)
        gateway: Gateway = await self._start(Gateway(config, identity=identity,
                                                     on_event=recorder), recorder)
        return gateway

    async def close(self) -> None:
        await self._stack.aclose()
        await self.stop_server()


class Node(Events):
    """A running share, connect or gateway, seen from a test's thread: ``event(name)``
    waits for the next event of that name (as ``--json`` prints it), like ``Proc.event``."""

    def __init__(self, obj: Any, inproc: InProc) -> None:
        super().__init__()
        self.obj = obj
        self.inproc = inproc

    def record(self, event: events.Event) -> None:  # on the loop's thread
        self.lines.put(json.dumps(event.to_json(), default=str))

    def stop(self) -> None:
        self.inproc.run(self.obj.close())


class InProc:
    """The harness on an event loop in a background thread, for tests that use blocking
    clients (urllib, http.client, sockets) against in-process shares and connects."""

    def __init__(self, **harness: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._unhandled)
        self.unhandled: list[str] = []
        """Exceptions nobody retrieved on the loop (kept as text, not logged: formatting a
        traceback calls ast.parse, which on Python 3.11 must not run in two threads)."""
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.harness = Harness(**harness)
        self.url = self.run(self.harness.start_server())

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.unhandled.append(f"{context.get('message')}: {context.get('exception')!r}")

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _node(self, start: Callable[[Callable[[events.Event], None]], Any]) -> Node:
        node = Node(None, self)

        async def go() -> Any:
            return await start(node.record)

        node.obj = self.run(go())
        return node

    def share(self, port: int, **options: Any) -> Node:
        return self._node(lambda record: self.harness.share(port, on_event=record, **options))

    def connect(self, ticket: str, **options: Any) -> Node:
        return self._node(lambda record: self.harness.connect(ticket, on_event=record,
                                                              **options))

    def gateway(self, identity: Identity, **options: Any) -> Node:
        return self._node(lambda record: self.harness.gateway(identity, on_event=record,
                                                              **options))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.harness.close(), timeout=30)
        with contextlib.suppress(Exception):  # worker threads (the ACME client's) finish
            self.run(self.loop.shutdown_default_executor(), timeout=30)  # as asyncio.run's
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        for text in self.unhandled:
            print(f"unretrieved on the harness loop: {text}", file=sys.stderr)
