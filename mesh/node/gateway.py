"""``mesh gateway``: a public HTTP(S) entry for shares that opted in with ``--public``.

The gateway is a mesh peer with a public address. It accepts HTTP/1.1 from
anyone (TLS when given a certificate) and routes by ``--routes`` rules first
(routes.py: host and path prefix to a name), then by Host: ``NAME.DOMAIN``
goes to the share published as NAME; ``/s/NAME/...`` works without wildcard
DNS (the prefix is removed before forwarding). A name may be served by a pool
of shares (``mesh name add``): upstreams.py finds and connects them, pool.py
picks one per request and keeps their health.

Each request passes, before the share sees a byte: the parser defences of
proxy.py (431, 400, 408), a per-client-address and a per-name token bucket
(503), open streams per name (503), the body cap (413), a CORS preflight
answered here (edge.py), the share's ``--public-auth`` (401), the cache
(``--cache-size``, cache.py). Then X-Forwarded-For/-Proto/-Host are *set* (an
internet caller's own copies are not trusted) and the request streams to the
chosen member, where it appears in the sharer's log and inspector; a request
safe to repeat whose member fails before answering goes once to another. The
answer passes the response policy (compression, headers, CORS) on its way
back. The gateway terminates TLS: it sees every request it forwards (see the
README).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
import time
from collections import Counter
from typing import Any

import h11

from mesh.errors import AddressInUse, ConfigError, EnvelopeError, MeshError
from mesh.http.cache import UNSAFE, HttpCache
from mesh.http.capture import Exchange, Store
from mesh.http.config import HttpConfig
from mesh.http.edge import CacheFill, Chain, EdgePolicy, PolicyFilter, preflight, render
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
from mesh.http.proxy import HttpProxy
from mesh.http.route import Answer, ResponseFilter, Route
from mesh.proto.envelope import Opener
from mesh.proto.identity import Identity
from mesh.proto.limits import ConnectionCounter
from mesh.proto.metrics import label
from mesh.proto.metrics import render as render_metrics
from mesh.transport import portmap
from mesh.transport.duplex import TcpDuplex

from . import environ, events
from .certs import CertManager
from .config import GatewayConfig
from .home import load_or_create
from .pool import COOKIE, member_token
from .routes import match
from .routing import Clients, cookie_value, route_name
from .signal_client import SignalClient
from .upstreams import Name, Upstreams

CHALLENGE = b"/.well-known/acme-challenge/"


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
        self._metrics: asyncio.Server | None = None
        self.metrics_port = 0
        self.certs: CertManager | None = None
        """Automatic certificates (``--acme-email``), served by SNI."""
        self._opener = Opener(self.identity, frozenset({"publish", "reject"}))
        self.upstreams = Upstreams(config, self.identity, self._signal_client, self.emit)
        self.cache = (HttpCache(int(config.cache_size * 1024 * 1024), debug=config.cache_debug)
                      if config.cache_size > 0 else None)
        self.counts: Counter[tuple[str, str, str]] = Counter()
        """(name, member, ok|failed|retried) -> requests."""
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

    def metrics(self) -> dict[str, float]:
        """For ``/metrics``: each name's pool and members, the cache, ACME."""
        now = time.monotonic()
        out: dict[str, float] = {}
        for name, entry in self.upstreams.names.items():
            up = set(entry.up())
            out[label("mesh_gateway_pool_members", name=name)] = len(entry.pool.members)
            out[label("mesh_gateway_pool_online", name=name)] = len(up)
            for node, member in entry.pool.members.items():
                tag = {"name": name, "member": node}
                out[label("mesh_gateway_member_up", **tag)] = float(node in up)
                out[label("mesh_gateway_member_ejected", **tag)] = float(
                    not member.health.usable(now))
                out[label("mesh_gateway_member_outstanding", **tag)] = member.outstanding
                out[label("mesh_gateway_member_ejections_total", **tag)] = (
                    member.health.ejections)
        for (name, node, outcome), count in self.counts.items():
            out[label("mesh_gateway_member_requests_total", name=name, member=node,
                      outcome=outcome)] = count
        if self.cache is not None:
            c = self.cache
            for result, count in (("hit", c.hits), ("miss", c.misses),
                                  ("revalidated", c.revalidated)):
                out[label("mesh_gateway_cache_requests_total", result=result)] = count
            out["mesh_gateway_cache_bytes"] = c.used
            out["mesh_gateway_cache_entries"] = len(c)
            out["mesh_gateway_cache_evictions_total"] = c.evictions
        if self.certs is not None:
            out.update(self.certs.metrics())
        return out

    def emit(self, event: events.Event) -> None:
        with contextlib.suppress(Exception):
            self.on_event(event)

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> str:
        cfg = self.config
        if cfg.ice.portmap:
            portmap.warm(cfg.ice.host_addresses)
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
        if cfg.metrics_host is not None:
            await self._serve_metrics(cfg.metrics_host, cfg.metrics_port)
        scheme = "https" if context else "http"
        shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
        self.url = f"{scheme}://{shown}:{self.port}"
        await self._announce()
        metrics = (f"http://{cfg.metrics_host}:{self.metrics_port}/metrics"
                   if cfg.metrics_host is not None else None)
        self.emit(events.GatewayReady(self.url, self.identity.node_id, cfg.domain, metrics))
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

    async def _serve_metrics(self, host: str, port: int) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
                line = await asyncio.wait_for(reader.readline(), 5)
                path = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
                if path == b"/metrics":
                    body = ("\n".join(render_metrics(self.metrics())) + "\n").encode()
                    head = b"200 OK\r\ncontent-type: text/plain; version=0.0.4"
                else:
                    body = b"only /metrics here\n"
                    head = b"404 Not Found\r\ncontent-type: text/plain"
                writer.write(b"HTTP/1.1 " + head + f"\r\ncontent-length: {len(body)}\r\n"
                             "connection: close\r\n\r\n".encode() + body)
                await writer.drain()
            writer.close()

        self._metrics = await self._listen(handler, host, port, None,
                                           "the gateway's metrics address", "--metrics HOST:PORT")
        self.metrics_port = int(self._metrics.sockets[0].getsockname()[1])

    async def _is_public(self, name: str) -> bool:
        """A certificate is ordered only for a name a public share holds right now."""
        return isinstance(await self.upstreams.resolve(name), Name)

    async def close(self) -> None:
        if self.certs is not None:
            await self.certs.close()
        if self._plain is not None:
            self._plain.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._server is not None:
            self._server.close()
        await self.upstreams.close()
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
            waiting = self.upstreams.waiting.get(env.session)
            if waiting is not None and not waiting.done():
                waiting.set_result((env.kind, env.body))
        for tunnel in list(self.upstreams.tunnels):
            tunnel.on_payload(sender, payload)

    def _signal_client(self) -> SignalClient:
        assert self._signal is not None
        return self._signal

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
                    tls: bool = False, last: dict[str, str] | None = None
                    ) -> Route | Answer | Refusal:
        """``last``: the member each name's previous request on this client connection
        went to (kept up to date here)."""
        cfg = self.config
        now = time.monotonic()
        if self.certs is not None and request.target.startswith(CHALLENGE):
            answer = self.certs.challenge(request.target[len(CHALLENGE):].decode("latin-1"))
            return Refusal(200, answer) if answer else Refusal(404, "no such ACME challenge")
        if not self._clients.take(client, now):
            return Refusal(503, "mesh gateway: too many requests from your address; slow "
                                "down", (("retry-after", "1"),))
        host = header(headers, b"host")
        ruled = match(cfg.routes, host, request.target) if cfg.routes else None
        rule = ruled[0] if ruled is not None else None
        routed = ((ruled[0].name, ruled[1]) if ruled is not None
                  else route_name(host, request.target, cfg.domain))
        if routed is None:
            return Refusal(404, f"mesh gateway: no share here; use NAME.{cfg.domain} or "
                                "/s/NAME/")
        name, target = routed
        policy = rule.policy if rule is not None and rule.policy is not None else cfg.edge
        early = preflight(policy, request.method, headers)
        if early is not None:
            return early
        found = await self.upstreams.resolve(name)
        if isinstance(found, Refusal):
            return found
        entry = found
        if not entry.bucket.take(now):
            return Refusal(503, f"mesh gateway: the share {name!r} is over its request "
                                "rate; retry shortly", (("retry-after", "1"),))
        if self._open.at_limit(client):
            return Refusal(503, "mesh gateway: too many open requests from your address; "
                                "finish one first", (("retry-after", "1"),))
        if entry.streams >= cfg.max_streams_per_share:
            return Refusal(503, f"mesh gateway: the share {name!r} has too many open "
                                "requests; retry shortly", (("retry-after", "1"),))
        mode = entry.pool.mode
        cookie = cookie_value(headers, COOKIE) if mode == "cookie" else None
        key = header(headers, mode[5:].lower().encode()) if mode.startswith("hash:") else None
        last = {} if last is None else last
        node = entry.pool.pick(entry.up(), now, key=None if key is None else
                               key.decode("latin-1"), cookie=cookie, prefer=last.get(name))
        if node is None:
            return Refusal(502, f"mesh gateway: the share {name!r} is offline")
        link = entry.links[node]
        if link.auth is not None and not basic_auth_ok(header(headers, b"authorization"),
                                                       link.auth):
            return Refusal(401, "authentication required",
                           (("www-authenticate", f'Basic realm="{name}", charset="UTF-8"'),))
        cache_key = f"{name}\n{(host or b'').decode('latin-1').lower()}\n" + target.decode(
            "latin-1")
        use_cache = self.cache is not None and (rule is None or rule.cache)
        found_entry = None
        if use_cache and self.cache is not None:
            found_entry = self.cache.lookup(cache_key, request.method, headers, now)
            if found_entry is not None and found_entry.fresh:
                self.cache.hits += 1
                stored = found_entry.entry
                return render(PolicyFilter(policy, headers, request.method, tls),
                              stored.status, stored.answer_headers(now, self.cache.debug,
                                                                   "hit"), stored.body)
        out = strip_hop_by_hop(headers, keep_upgrade=is_upgrade(headers))
        if link.auth is not None:
            out = [(k, v) for k, v in out if k != b"authorization"]
        out = forwarded(out, client=client, proto=b"https" if tls else b"http",
                        host=host) + framing(headers)
        revalidate = None
        if (found_entry is not None and request.method == b"GET"
                and header(headers, b"if-none-match") is None
                and header(headers, b"if-modified-since") is None):
            out += found_entry.entry.validators()
            revalidate = found_entry
        if use_cache and self.cache is not None and request.method in (b"GET", b"HEAD"):
            # a HEAD is answered from a stored GET, and never stored: it has no body
            fill: CacheFill | None = CacheFill(self.cache, cache_key, headers, revalidate,
                                               time.monotonic, request.method == b"GET")
        else:
            fill = None
        if self.cache is not None and request.method in UNSAFE:
            self.cache.invalidate(cache_key)
        last[name] = node
        return self._route_to(entry, node, client, request, headers, target, out, policy,
                              fill, cookie, tls, retry=True, last=last)

    def _route_to(self, entry: Name, node: str, client: str, request: h11.Request,
                  headers: Headers, target: bytes, out: Headers, policy: EdgePolicy,
                  fill: CacheFill | None, cookie: str | None, tls: bool,
                  retry: bool, last: dict[str, str]) -> Route:
        extra: Headers = []
        if entry.pool.mode == "cookie" and cookie != member_token(node):
            secure = "; Secure" if tls else ""
            extra.append((b"set-cookie", f"{COOKIE}={member_token(node)}; Path=/; HttpOnly; "
                                         f"SameSite=Lax{secure}".encode()))
        filters: list[ResponseFilter] = [] if fill is None else [fill]
        if policy.active or extra:
            filters.append(PolicyFilter(policy, headers, request.method, tls, extra))
        entry.streams += 1
        entry.pool.started(node)
        self._open.acquire(client)
        reported = [False]

        def report(status: int | None) -> None:
            if not reported[0]:
                reported[0] = True
                entry.pool.finished(node, status, time.monotonic())
                self.counts[(entry.name, node, "ok" if status is not None and status < 500
                             else "failed")] += 1

        def release() -> None:
            entry.streams -= 1
            self._open.release(client)
            if not reported[0]:  # ended before any answer (the caller left): no verdict
                reported[0] = True
                entry.pool.ended(node)

        async def again() -> Route | Refusal:
            other = entry.pool.pick(entry.up(), time.monotonic(), avoid=(node,))
            if other is None:
                return Refusal(502, f"mesh gateway: every member of {entry.name!r} failed")
            self.counts[(entry.name, other, "retried")] += 1
            last[entry.name] = other
            return self._route_to(entry, other, client, request, headers, target, out,
                                  policy, fill, None, tls, retry=False, last=last)

        link = entry.links[node]
        return Route(key=f"{entry.name}@{node}", opener=link.tunnel.open_stream,
                     target=target, headers=out, peer=entry.name, release=release,
                     report=report, retry=again if retry else None,
                     respond=Chain(filters) if filters else None, member=node)


class _Caller:
    """The gateway's ``Role`` for one caller's connection."""

    def __init__(self, gateway: Gateway, client: str, tls: bool) -> None:
        self.gateway, self.client, self.tls = gateway, client, tls
        self.last: dict[str, str] = {}

    async def route(self, request: h11.Request, headers: Headers) -> Route | Answer | Refusal:
        return await self.gateway.route(self.client, request, headers, self.tls, self.last)

    def upstream_failed(self, text: str) -> None:
        pass

