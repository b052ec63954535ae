"""``mesh gateway``: a public HTTP(S) entry for shares that opted in with ``--public``.

The gateway is a mesh peer with a public address. It accepts HTTP/1.1 from
anyone (TLS when given a certificate) and routes by Host: ``NAME.DOMAIN`` goes
to the share published as NAME; ``/s/NAME/...`` works without wildcard DNS
(the prefix is removed before forwarding).

Finding a share (per name, cached, re-checked every ``recheck`` seconds):

1. ``lookup`` NAME on the signaling tier -> the node key holding it (404 if none);
2. a sealed ``pubreq`` envelope to that node; a ``--public`` share answers with
   a sealed ``publish`` carrying its ticket (and ``--public-auth``), but only to
   the gateway the tier names (pinned by the operator: ``mesh signal --gateway``);
   any other share answers ``reject`` (404). No answer: 502;
3. one peer connection per share (connect.py's ``Tunnel``, sharing the
   gateway's single signaling session), reused by every request and rebuilt by
   the tunnel itself when it fails.

Each request passes, before the share sees a byte: the parser defences of
httpproxy.py (431, 400, 408), a per-client-address and a per-share token
bucket (503), open streams per share (503), the body cap (413), the share's
``--public-auth`` (401). Then X-Forwarded-For/-Proto/-Host are *set* (an
internet caller's own copies are not trusted) and the request streams to the
share, where it appears in the sharer's log and inspector. The gateway
terminates TLS: it sees every request it forwards (see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any

import h11

from mesh.errors import AddressInUse, ConfigError, EnvelopeError, MeshError, PeerUnreachable
from mesh.http.capture import Exchange, Store
from mesh.http.config import HttpConfig
from mesh.http.policy import (
    Headers,
    Refusal,
    basic_auth_ok,
    forwarded,
    framing,
    header,
    is_upgrade,
    strip_hop_by_hop,
)
from mesh.http.proxy import HttpProxy, Route
from mesh.proto import ticket as ticket_mod
from mesh.proto.envelope import Opener, seal_envelope
from mesh.proto.identity import Identity
from mesh.proto.limits import ConnectionCounter, TokenBucket
from mesh.proto.names import check_basic_auth
from mesh.transport.duplex import TcpDuplex

from . import environ, events
from .certs import CertManager
from .config import ConnectConfig, GatewayConfig
from .connect import Tunnel
from .home import load_or_create
from .routing import Clients, route_name
from .signal_client import SignalClient

CHALLENGE = b"/.well-known/acme-challenge/"


@dataclass
class _Entry:
    name: str
    owner: str
    tunnel: Tunnel
    auth: tuple[str, str] | None
    checked: float
    bucket: TokenBucket
    streams: int = 0


class Gateway:
    def __init__(self, config: GatewayConfig, *, identity: Identity | None = None,
                 on_event: events.OnEvent = events.ignore) -> None:
        self.config = config
        self.identity = identity or load_or_create()
        self.on_event = on_event
        self.url = ""
        self.port = 0
        self.http_port = 0
        """With ACME: the plain HTTP listener's port."""
        self.store = Store(limit=50, body_cap=0)
        self._signal: SignalClient | None = None
        self._server: asyncio.Server | None = None
        self._plain: asyncio.Server | None = None
        self.certs: CertManager | None = None
        """Automatic certificates (``--acme-email``), served by SNI."""
        self._opener = Opener(self.identity, frozenset({"publish", "reject"}))
        self._waiting: dict[str, asyncio.Future[tuple[str, dict[str, Any]]]] = {}
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tunnels: set[Tunnel] = set()
        self._clients = Clients(config.rate_per_client, config.burst_per_client)
        self._http = HttpConfig(
            inspect=None, header_timeout=config.header_timeout,
            keepalive_timeout=config.idle_timeout, body_timeout=config.body_timeout,
            max_head=config.max_head,
            response_timeout=config.share_timeout, max_body=config.max_body,
            upstream_timeout=config.resolve_timeout)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._open = ConnectionCounter(config.max_requests_per_client)
        """Open requests per client address."""
        self._conns = ConnectionCounter(config.max_conns_per_client)
        """Open connections per client address."""

    def emit(self, event: events.Event) -> None:
        with contextlib.suppress(Exception):
            self.on_event(event)

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> str:
        cfg = self.config
        context = None
        if cfg.tls_cert and cfg.tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the TLS certificate: {exc}") from exc
        if cfg.acme_email:
            self.certs = CertManager(cfg.domain, cfg.acme_email, cfg.acme_directory,
                                     environ.home() / "certs", self._is_public,
                                     ca_bundle=cfg.acme_ca_bundle,
                                     renew_fraction=cfg.acme_renew_fraction,
                                     on_event=self.emit)
            context = self.certs.fallback
        self._tls = context is not None
        self._signal = SignalClient(self.identity, list(cfg.signal_urls), self._on_payload,
                                    lambda state, url: self.emit(events.Signal(state, url)),
                                    on_registered=self._announce_soon)
        await self._signal.start()
        self._server = await self._listen(
            self._on_client, cfg.host, cfg.port, context,
            "the gateway's address", "--listen HOST:PORT (port 0 picks a free one)")
        self.port = self._server.sockets[0].getsockname()[1]
        if self.certs is not None:  # plain HTTP for the challenges (and every share)
            self._plain = await self._listen(
                lambda r, w: self._on_client(r, w, tls=False), cfg.http_host, cfg.http_port,
                None, "the gateway's HTTP address", "--http-listen HOST:PORT")
            self.http_port = int(self._plain.sockets[0].getsockname()[1])
            self.certs.start()
        scheme = "https" if context else "http"
        shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
        self.url = f"{scheme}://{shown}:{self.port}"
        await self._announce()
        self.emit(events.GatewayReady(self.url, self.identity.node_id, cfg.domain))
        return self.url

    def public_base(self) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        scheme = "https" if self._tls else "http"
        default = 443 if self._tls else 80
        port = "" if self.port == default else f":{self.port}"
        return f"{scheme}://{self.config.domain}{port}"

    async def _announce(self) -> None:
        assert self._signal is not None
        with contextlib.suppress(MeshError):
            await self._signal.announce_gateway(self.config.domain, self.public_base())

    def _announce_soon(self) -> None:
        if self._server is not None:  # a re-registration: announce again
            task = asyncio.ensure_future(self._announce())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _listen(self, handler: Any, host: str, port: int, context: ssl.SSLContext | None,
                      what: str, flag: str) -> asyncio.Server:
        """A listener, or (everything started so far closed) an error naming ``what`` at
        host:port/tcp and the ``flag`` that moves it."""
        try:
            return await asyncio.start_server(handler, host, port, ssl=context,
                                              limit=self.config.max_head * 2)
        except OSError as exc:
            await self.close()
            where = f"{host}:{port}/tcp"
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(f"{what} {where} is taken; use {flag}") from exc
            raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from exc

    async def _is_public(self, name: str) -> bool:
        """A certificate is ordered only for a name a public share holds right now."""
        return isinstance(await self._resolve(name), _Entry)

    async def close(self) -> None:
        if self.certs is not None:
            await self.certs.close()
        if self._plain is not None:
            self._plain.close()
        if self._server is not None:
            self._server.close()
        for tunnel in list(self._tunnels):
            await tunnel.close()
        for task in list(self._tasks):
            task.cancel()
        if self._signal is not None:
            await self._signal.close()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- signaling ----------------------------------------------------------------
    def _on_payload(self, sender: str, payload: bytes) -> None:
        with contextlib.suppress(EnvelopeError):
            env = self._opener.open(payload, sender, time.time())
            waiting = self._waiting.get(env.session)
            if waiting is not None and not waiting.done():
                waiting.set_result((env.kind, env.body))
        for tunnel in list(self._tunnels):
            tunnel.on_payload(sender, payload)

    # -- HTTP ---------------------------------------------------------------------
    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, tls: bool | None = None) -> None:
        caller = TcpDuplex(reader, writer)
        client = caller.peer()
        if not self._conns.acquire(client):
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n"
                         b"retry-after: 5\r\nconnection: close\r\n\r\n")
            writer.close()  # before anything is read: an idle flood holds nothing here
            return
        try:
            await HttpProxy(caller, _Caller(self, client, self._tls if tls is None else tls),
                            config=self._http,
                            store=self.store, on_request=self._log, client_addr=client).run()
        finally:
            self._conns.release(client)

    def _log(self, ex: Exchange) -> None:
        self.emit(events.Request.from_exchange(ex))

    async def route(self, client: str, request: h11.Request, headers: Headers,
                    tls: bool = False) -> Route | Refusal:
        cfg = self.config
        now = time.monotonic()
        if self.certs is not None and request.target.startswith(CHALLENGE):
            answer = self.certs.challenge(request.target[len(CHALLENGE):].decode("latin-1"))
            return Refusal(200, answer) if answer else Refusal(404, "no such ACME challenge")
        if not self._clients.take(client, now):
            return Refusal(503, "mesh gateway: too many requests from your address; slow "
                                "down", (("retry-after", "1"),))
        host = header(headers, b"host")
        routed = route_name(host, request.target, cfg.domain)
        if routed is None:
            return Refusal(404, f"mesh gateway: no share here; use NAME.{cfg.domain} or "
                                "/s/NAME/")
        name, target = routed
        found = await self._resolve(name)
        if isinstance(found, Refusal):
            return found
        entry = found
        if not entry.tunnel.up:
            # the share may be back with another ticket (restarted with --new-ticket):
            # ask it again rather than keep rebuilding with the old one
            await self._drop(name, entry)
            found = await self._resolve(name)
            if isinstance(found, Refusal):
                return found
            entry = found
            if not entry.tunnel.up:
                return Refusal(502, f"mesh gateway: the share {name!r} is offline")
        if not entry.bucket.take(now):
            return Refusal(503, f"mesh gateway: the share {name!r} is over its request "
                                "rate; retry shortly", (("retry-after", "1"),))
        if self._open.at_limit(client):
            return Refusal(503, "mesh gateway: too many open requests from your address; "
                                "finish one first", (("retry-after", "1"),))
        if entry.streams >= cfg.max_streams_per_share:
            return Refusal(503, f"mesh gateway: the share {name!r} has too many open "
                                "requests; retry shortly", (("retry-after", "1"),))
        if entry.auth is not None and not basic_auth_ok(header(headers, b"authorization"),
                                                        entry.auth):
            return Refusal(401, "authentication required",
                           (("www-authenticate", f'Basic realm="{name}", charset="UTF-8"'),))
        out = strip_hop_by_hop(headers, keep_upgrade=is_upgrade(headers))
        if entry.auth is not None:
            out = [(k, v) for k, v in out if k != b"authorization"]
        out = forwarded(out, client=client, proto=b"https" if tls else b"http",
                        host=host) + framing(headers)
        entry.streams += 1
        self._open.acquire(client)

        def release() -> None:
            entry.streams -= 1
            self._open.release(client)

        return Route(key=name, opener=entry.tunnel.open_stream, target=target, headers=out,
                     peer=name, release=release)

    async def _resolve(self, name: str) -> _Entry | Refusal:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._entries.get(name)
            now = time.monotonic()
            if entry is not None and now - entry.checked < self.config.recheck:
                return entry
            assert self._signal is not None
            try:
                owner = (await self._signal.name("lookup", name)).owner
            except MeshError:
                return Refusal(502, "mesh gateway: lost its signaling server; retry shortly")
            if entry is not None and entry.owner == owner:
                entry.checked = now
                return entry
            if entry is not None:  # released, or now held by another key
                await self._forget(entry)
            if owner is None:
                return Refusal(404, f"mesh gateway: no share is published as {name!r}")
            made = await self._connect(name, owner)
            if isinstance(made, _Entry):
                self._entries[name] = made
            return made

    async def _drop(self, name: str, entry: _Entry) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self._entries.get(name) is entry:
                await self._forget(entry)

    async def _forget(self, entry: _Entry) -> None:
        self._entries.pop(entry.name, None)
        self._tunnels.discard(entry.tunnel)
        await entry.tunnel.close()

    async def _connect(self, name: str, owner: str) -> _Entry | Refusal:
        cfg = self.config
        assert self._signal is not None
        session = secrets.token_hex(12)
        reply: asyncio.Future[tuple[str, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future())
        self._waiting[session] = reply
        try:
            blob = seal_envelope(self.identity, owner, "pubreq", session, {"name": name},
                                 time.time())
            sent = await self._signal.send(owner, blob)
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
            self._waiting.pop(session, None)
        kind, body = reply.result()
        if kind != "publish":
            return Refusal(404, f"mesh gateway: no share is published as {name!r}")
        try:
            tk = ticket_mod.decode(str(body.get("ticket", "")), now=time.time())
            auth_text = body.get("auth")
            auth = check_basic_auth(auth_text, "auth") if isinstance(auth_text, str) else None
        except (MeshError, ValueError):
            return Refusal(502, f"mesh gateway: the share {name!r} sent a bad ticket")
        if tk.node_id != owner:
            return Refusal(502, f"mesh gateway: the share {name!r} sent another key's ticket")
        if not tk.tcp:
            return Refusal(502, f"mesh gateway: the share {name!r} carries UDP only")
        tunnel = Tunnel(ConnectConfig(
            ticket=tk, listen=False, signal_urls=cfg.signal_urls, control_socket=False,
            wait_for_path=cfg.resolve_timeout, use_lan_hints=False, ice=cfg.ice,
        ), identity=self.identity, on_event=self._tunnel_event(name), signal=self._signal)
        self._tunnels.add(tunnel)
        try:
            await tunnel.start()
        except MeshError as exc:
            self._tunnels.discard(tunnel)
            await tunnel.close()
            return Refusal(502, f"mesh gateway: the share {name!r} did not connect: {exc}")
        return _Entry(name, owner, tunnel, auth, time.monotonic(),
                      TokenBucket(cfg.rate_per_share, cfg.burst_per_share))

    def _tunnel_event(self, name: str) -> events.OnEvent:
        def forward(event: events.Event) -> None:
            if isinstance(event, events.Connected | events.Disconnected | events.Warning
                          | events.Resumed):
                self.emit(event)
        return forward


class _Caller:
    """The gateway's ``Role`` for one caller's connection."""

    def __init__(self, gateway: Gateway, client: str, tls: bool) -> None:
        self.gateway, self.client, self.tls = gateway, client, tls

    async def route(self, request: h11.Request, headers: Headers) -> Route | Refusal:
        return await self.gateway.route(self.client, request, headers, self.tls)

    def upstream_failed(self, text: str) -> None:
        pass

