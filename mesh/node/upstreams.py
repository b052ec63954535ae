"""The gateway's upstreams: for each public name, its members and a tunnel to each.

Finding a name's members (per name, cached, re-checked every ``recheck``
seconds, and every ``RETRY`` seconds while a member listed online has no
tunnel up):

1. ``lookup`` NAME on the signaling tier: the key holding it, its pool's roster
   (checked here against the holder's signature, mesh/proto/roster.py) and
   which of them are online (404 if nobody holds the name);
2. to each online member without a tunnel, a sealed ``pubreq``; a ``--public``
   share that holds the name or is in its pool answers with a sealed
   ``publish`` carrying its ticket (and ``--public-auth``), but only to the
   gateway the tier names; any other answer leaves the member out;
3. one peer connection per member (connect.py's ``Tunnel``, sharing the
   gateway's signaling session), reused by every request and rebuilt by the
   tunnel itself when it fails. In a pool, streams do not wait for a lost
   member to come back (``resume_timeout`` 0): the request goes to another.

Which member serves a request, and member health, are pool.py's. With
``--health-path``, each member with a tunnel up is probed every
``health_interval`` seconds (a GET through the tunnel; any answer below 400
is healthy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from mesh.errors import MeshError, PeerUnreachable
from mesh.http.policy import Refusal
from mesh.http.route import Upstream
from mesh.proto import ticket as ticket_mod
from mesh.proto.envelope import seal_envelope
from mesh.proto.identity import Identity
from mesh.proto.limits import TokenBucket
from mesh.proto.names import check_basic_auth
from mesh.proto.roster import roster_for

from . import events
from .config import ConnectConfig, GatewayConfig
from .connect import Tunnel
from .pool import Pool
from .signal_client import SignalClient

log = logging.getLogger("mesh.gateway")

RETRY = 2.0
"""Seconds between attempts to reach a member listed online whose tunnel is down."""


@dataclass
class Link:
    node: str
    tunnel: Tunnel
    auth: tuple[str, str] | None


@dataclass
class Name:
    name: str
    owner: str
    pool: Pool
    bucket: TokenBucket
    checked: float = 0.0
    online: tuple[str, ...] = ()
    links: dict[str, Link] = field(default_factory=dict)
    streams: int = 0
    tried: float = 0.0
    """When members without a tunnel were last tried."""
    health_task: asyncio.Task[None] | None = None
    refresh: asyncio.Future[Name | Refusal] | None = None
    """A background re-check in progress."""

    def up(self) -> list[str]:
        return [n for n, link in self.links.items() if link.tunnel.up]


class Upstreams:
    """Every public name the gateway has served, with its members' tunnels."""

    def __init__(self, config: GatewayConfig, identity: Identity,
                 signal: Callable[[], SignalClient], emit: events.OnEvent) -> None:
        self.config, self.identity, self._signal, self.emit = config, identity, signal, emit
        self.names: dict[str, Name] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.waiting: dict[str, asyncio.Future[tuple[str, dict[str, Any]]]] = {}
        self.tunnels: set[Tunnel] = set()

    async def resolve(self, name: str) -> Name | Refusal:
        """The name's members, connected (at least the ones that answer), or why not.
        While some member is up, the re-check and the retry of members without a tunnel
        run in the background: a member that does not answer delays no request."""
        now = time.monotonic()
        entry = self.names.get(name)
        if entry is not None and entry.up():
            stale = now - entry.checked >= self.config.recheck
            missing = any(n not in entry.up() for n in entry.online)
            if (stale or (missing and now - entry.tried >= RETRY)) and (
                    entry.refresh is None or entry.refresh.done()):
                entry.tried = now
                entry.refresh = asyncio.ensure_future(self._refresh(name))
                entry.refresh.add_done_callback(_quiet)
            return entry
        return await self._refresh(name)

    async def _refresh(self, name: str) -> Name | Refusal:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            entry = self.names.get(name)
            if entry is not None and entry.up() and now - entry.checked < 0.5:
                return entry  # refreshed while this one waited for the lock
            try:
                result = await self._signal().name("lookup", name)
            except MeshError:
                if entry is not None and entry.up():
                    return entry
                return Refusal(502, "mesh gateway: lost its signaling server; retry shortly")
            if result.owner is None:
                if entry is not None:
                    await self.forget(entry)
                return Refusal(404, f"mesh gateway: no share is published as {name!r}")
            if entry is not None and entry.owner != result.owner:  # the name changed hands
                await self.forget(entry)
                entry = None
            if entry is None:
                cfg = self.config
                entry = Name(name, result.owner, Pool(cfg.balance),
                             TokenBucket(cfg.rate_per_share, cfg.burst_per_share))
                self.names[name] = entry
                if cfg.health_path:
                    entry.health_task = asyncio.ensure_future(self._probe_loop(entry))
            roster = roster_for(result.roster, name, result.owner)
            members = roster.nodes() if roster is not None else (result.owner,)
            entry.pool.keep(members)
            entry.online = tuple(n for n in result.online if n in members)
            entry.checked = entry.tried = now
            for node in list(entry.links):
                if node not in members:
                    await self._close_link(entry, node)
            wanted = [n for n in entry.online if n not in entry.up()]
            made = await asyncio.gather(*(self._link(entry, n) for n in wanted))
            failures = [m for m in made if isinstance(m, Refusal)]
            if not entry.up():
                return failures[0] if failures else Refusal(
                    502, f"mesh gateway: the share {name!r} is offline")
            return entry

    async def _link(self, entry: Name, node: str) -> Link | Refusal:
        await self._close_link(entry, node)
        made = await self._connect(entry.name, node, pooled=len(entry.pool.members) > 1)
        if isinstance(made, Link):
            entry.links[node] = made
        return made

    async def _close_link(self, entry: Name, node: str) -> None:
        link = entry.links.pop(node, None)
        if link is not None:
            self.tunnels.discard(link.tunnel)
            await link.tunnel.close()

    async def forget(self, entry: Name) -> None:
        if self.names.get(entry.name) is entry:
            del self.names[entry.name]
        if entry.health_task is not None:
            entry.health_task.cancel()
        if entry.refresh is not None and entry.refresh is not asyncio.current_task():
            entry.refresh.cancel()
        for node in list(entry.links):
            await self._close_link(entry, node)

    async def close(self) -> None:
        for entry in list(self.names.values()):
            await self.forget(entry)
        for tunnel in list(self.tunnels):
            await tunnel.close()

    # -- one member --------------------------------------------------------------------
    async def _connect(self, name: str, node: str, pooled: bool) -> Link | Refusal:
        cfg = self.config
        signal = self._signal()
        session = secrets.token_hex(12)
        reply: asyncio.Future[tuple[str, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future())
        self.waiting[session] = reply
        try:
            blob = seal_envelope(self.identity, node, "pubreq", session, {"name": name},
                                 time.time())
            sent = await signal.send(node, blob)
            both: set[asyncio.Future[Any]] = {reply, sent}
            done, _ = await asyncio.wait(both, timeout=cfg.resolve_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if reply not in done and sent in done and sent.exception() is not None:
                exc = sent.exception()
                if isinstance(exc, PeerUnreachable):
                    return Refusal(502, f"mesh gateway: the share {name!r} is offline")
                return Refusal(502, f"mesh gateway: cannot reach the share {name!r}")
            if reply not in done:
                with contextlib.suppress(asyncio.TimeoutError, MeshError):
                    await asyncio.wait_for(reply, cfg.resolve_timeout)
            if not reply.done():
                return Refusal(502, f"mesh gateway: the share {name!r} did not answer")
        except MeshError:
            return Refusal(502, f"mesh gateway: cannot reach the share {name!r}")
        finally:
            self.waiting.pop(session, None)
        kind, body = reply.result()
        if kind != "publish":
            return Refusal(404, f"mesh gateway: no share is published as {name!r}")
        try:
            tk = ticket_mod.decode(str(body.get("ticket", "")), now=time.time())
            auth_text = body.get("auth")
            auth = check_basic_auth(auth_text, "auth") if isinstance(auth_text, str) else None
        except (MeshError, ValueError):
            return Refusal(502, f"mesh gateway: the share {name!r} sent a bad ticket")
        if tk.node_id != node:
            return Refusal(502, f"mesh gateway: the share {name!r} sent another key's ticket")
        if not tk.tcp:
            return Refusal(502, f"mesh gateway: the share {name!r} carries UDP only")
        tunnel = Tunnel(ConnectConfig(
            ticket=tk, listen=False, signal_urls=cfg.signal_urls, control_socket=False,
            wait_for_path=cfg.resolve_timeout, use_lan_hints=False, ice=cfg.ice,
            # in a pool a broken stream goes to another member at once rather than wait
            # for this one to come back
            resume_timeout=0.0 if pooled else ConnectConfig.resume_timeout,
        ), identity=self.identity, on_event=self._tunnel_event, signal=signal)
        self.tunnels.add(tunnel)
        try:
            await tunnel.start()
        except MeshError as exc:
            self.tunnels.discard(tunnel)
            await tunnel.close()
            return Refusal(502, f"mesh gateway: the share {name!r} did not connect: {exc}")
        return Link(node, tunnel, auth)

    def _tunnel_event(self, event: events.Event) -> None:
        if isinstance(event, events.Connected | events.Disconnected | events.Warning
                      | events.Resumed):
            self.emit(event)

    # -- active health -----------------------------------------------------------------
    async def _probe_loop(self, entry: Name) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            await asyncio.gather(*(self._probe(entry, link) for link in list(
                entry.links.values()) if link.tunnel.up), return_exceptions=True)

    async def _probe(self, entry: Name, link: Link) -> None:
        health = entry.pool.member(link.node).health
        ok = False
        with contextlib.suppress(MeshError, OSError, h11.ProtocolError, TimeoutError,
                                 ConnectionError):
            ok = await asyncio.wait_for(self._get(entry, link), self.config.health_interval)
        if ok:
            health.success()
            health.ejected_until = 0.0
        else:
            health.failure(time.monotonic())

    async def _get(self, entry: Name, link: Link) -> bool:
        up = Upstream(await link.tunnel.open_stream())
        try:
            host = f"{entry.name}.{self.config.domain}".encode()
            headers = [(b"host", host), (b"user-agent", b"mesh-gateway-health")]
            await up.send(h11.Request(method=b"GET", target=self.config.health_path or "/",
                                      headers=headers))
            await up.send(h11.EndOfMessage())
            event = await up.next_event()
            return isinstance(event, h11.Response) and event.status_code < 400
        finally:
            up.close()


def _quiet(task: asyncio.Future[Any]) -> None:
    """A background re-check's outcome is in the entry; its error is only logged."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("re-checking a public name failed: %s", task.exception())
