"""The ``mesh`` command line: builds configuration, calls the Python API, prints events.

Output contract: with ``--json`` every line on stdout is one JSON object with an
``event`` field (``ready``, ``listening``, ``connected``, ``disconnected``,
``rejected``, ``signal``, ``warning``, ``error``, ...). Without it, humans get
short lines (the ticket on stdout, the rest on stderr). Every ``MeshError``
becomes one line and the exit code of its class; Ctrl-C exits 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import click

from mesh.node import events

from .errors import ConfigError, MeshError


class _Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, event: events.Event) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(event.to_json(), default=str) + "\n")
            sys.stdout.flush()
        else:
            stream = (sys.stdout if isinstance(event, events.Ready | events.NetcheckEvent)
                      else sys.stderr)
            stream.write(event.human() + "\n")
            stream.flush()


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if verbose < 2:
        for noisy in ("aioice", "aiortc", "aiohttp"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def _run(out: _Output, main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` until it returns, SIGTERM (exit 0) or SIGINT (exit 130)."""
    stopped_by: list[int] = []

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(signum: int) -> None:
            stopped_by.append(signum)
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
        await main()

    code = 0
    try:
        asyncio.run(runner())
    except asyncio.CancelledError:
        if stopped_by and stopped_by[0] == signal.SIGINT:
            out(events.ErrorEvent("interrupted"))
            code = 130
    except MeshError as exc:
        out(events.ErrorEvent(str(exc)))
        code = exc.exit_code
    except KeyboardInterrupt:
        out(events.ErrorEvent("interrupted"))
        code = 130
    except Exception as exc:  # a bug: still one line (details with -v)
        logging.getLogger("mesh").debug("internal error", exc_info=True)
        out(events.ErrorEvent(f"internal error: {type(exc).__name__}: {exc}"))
        code = 70
    sys.exit(code)


def _signal_urls(given: tuple[str, ...]) -> tuple[str, ...]:
    urls = [u for u in given if u]
    if not urls and os.environ.get("MESH_SIGNAL"):
        urls = [u.strip() for u in os.environ["MESH_SIGNAL"].split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"signaling URL must start with ws:// or wss://: {url!r}")
    return tuple(urls)


def _fail(as_json: bool, exc: MeshError) -> None:
    _Output(as_json)(events.ErrorEvent(str(exc)))
    sys.exit(exc.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
@click.version_option(package_name="mesh-tunnel", prog_name="mesh")
def main(verbose: int) -> None:
    """mesh: share a local TCP service with another machine, peer to peer."""
    _setup_logging(verbose)


@main.command("signal")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Signaling (WebSocket) port; 0 picks a free one.")
@click.option("--stun-port", default=3478, show_default=True, type=click.IntRange(0, 65535),
              help="UDP/TCP port of the embedded STUN/TURN server; 0 picks a free one.")
@click.option("--no-turn", is_flag=True, help="Do not run the embedded STUN/TURN server.")
@click.option("--public-ip", default=None, help="Address to advertise for STUN/TURN.")
@click.option("--turn", "turn_urls", multiple=True, metavar="URL",
              help="External TURN server (e.g. coturn) to hand out instead (repeatable).")
@click.option("--turn-secret", default=None, metavar="SECRET",
              help="Shared secret for TURN REST credentials (coturn: static-auth-secret).")
@click.option("--relay-allow", multiple=True, metavar="CIDR",
              help="Let the relay reach this normally refused range (repeatable).")
@click.option("--max-allocations", default=1000, show_default=True, type=click.IntRange(1),
              help="TURN allocations in total.")
@click.option("--max-allocations-per-user", default=10, show_default=True,
              type=click.IntRange(1), help="TURN allocations per node.")
@click.option("--relay-bandwidth", default=16 * 1024 * 1024, show_default=True,
              type=click.IntRange(1024), help="Bytes per second one allocation may relay.")
@click.option("--max-conns-per-ip", default=64, show_default=True, type=click.IntRange(1),
              help="Concurrent connections allowed from one address.")
@click.option("--rate", default=50.0, show_default=True, type=click.FloatRange(0.1),
              help="Frames per second allowed per connection.")
@click.option("--redis", "redis_url", default=None, metavar="URL",
              help="Share presence and routing with other instances (redis://HOST:PORT/0).")
@click.option("--presence-ttl", default=15.0, show_default=True, type=click.FloatRange(1),
              help="With --redis: seconds until a dead instance's nodes vanish.")
@click.option("--gateway", "gateways", multiple=True, metavar="NODE_ID",
              help="Node id of a `mesh gateway` allowed to announce itself (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
def signal_cmd(host: str, port: int, stun_port: int, no_turn: bool, public_ip: str | None,
               turn_urls: tuple[str, ...], turn_secret: str | None, relay_allow: tuple[str, ...],
               max_allocations: int, max_allocations_per_user: int, relay_bandwidth: int,
               max_conns_per_ip: int, rate: float, redis_url: str | None,
               presence_ttl: float, gateways: tuple[str, ...], as_json: bool) -> None:
    """Run the rendezvous server: signaling plus STUN/TURN."""
    import ipaddress

    from signaling.rendezvous import Rendezvous, RendezvousConfig
    from signaling.server import ServerConfig

    out = _Output(as_json)
    try:
        if turn_urls and not turn_secret:
            raise ConfigError("--turn needs --turn-secret (the TURN server's shared secret)")
        for url in turn_urls:
            if not url.startswith(("turn:", "turns:")):
                raise ConfigError(f"--turn URL must start with turn: or turns: ({url!r})")
        for cidr in relay_allow:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"--relay-allow {cidr!r} is not a CIDR range") from None
        if public_ip is not None:
            try:
                ipaddress.ip_address(public_ip)
            except ValueError:
                raise ConfigError(f"--public-ip {public_ip!r} is not an IP address") from None
        from mesh.proto.identity import decode_node_id

        for key in gateways:
            try:
                decode_node_id(key)
            except ValueError:
                raise ConfigError(f"--gateway {key!r} is not a node id (see `mesh id`)") from None
    except MeshError as exc:
        _fail(as_json, exc)
    config = RendezvousConfig(
        signal=ServerConfig(host=host, port=port, max_conns_per_ip=max_conns_per_ip, rate=rate,
                            gateways=frozenset(gateways)),
        stun_port=None if no_turn else stun_port, public_ip=public_ip, turn_urls=turn_urls,
        turn_secret=turn_secret.encode() if turn_secret else None, relay_allow=relay_allow,
        max_allocations=max_allocations, max_allocations_per_user=max_allocations_per_user,
        relay_bandwidth=relay_bandwidth, redis_url=redis_url, presence_ttl=presence_ttl,
    )

    async def run() -> None:
        _raise_fd_limit()
        server = Rendezvous(config)
        try:
            url = await server.start()
        except ConnectionError as exc:
            raise ConfigError(str(exc)) from exc
        except OSError as exc:
            raise ConfigError(f"cannot listen: {exc.strerror or exc}") from exc
        assert server.signal is not None
        sc = server.signal.config
        out(events.SignalReady(url, list(sc.stun_urls), list(sc.turn_urls)))
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    _run(out, run)


def _raise_fd_limit() -> None:
    """A signaling server holds one socket per node: use the whole hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _parse_target(target: str) -> tuple[str, int]:
    host, sep, port_s = target.rpartition(":")
    if not sep:
        host, port_s = "127.0.0.1", target
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"cannot share {target!r}: give a port or HOST:PORT") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"cannot share port {port}: ports are 1-65535")
    return host, port


@main.command("share")
@click.argument("target")
@click.option("--signal", "signal_urls", multiple=True, metavar="URL",
              help="Signaling server (repeatable; default: $MESH_SIGNAL).")
@click.option("--name", default="", help="Name of the share (default: HOST-PORT).")
@click.option("--allow", multiple=True, metavar="NODE_ID",
              help="Admit only this peer key (repeatable).")
@click.option("--ttl", default=7 * 24 * 3600, show_default=True, type=click.IntRange(60),
              help="Seconds the ticket stays valid.")
@click.option("--max-peers", default=64, show_default=True, type=click.IntRange(1),
              help="Peers connected at once.")
@click.option("--max-streams", default=4096, show_default=True, type=click.IntRange(1),
              help="Concurrent connections per peer.")
@click.option("--idle-timeout", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Close a connection idle this many seconds (0: never).")
@click.option("--new-ticket", is_flag=True,
              help="Replace this share name's secret: older tickets stop working.")
@click.option("--no-lan", is_flag=True,
              help="Do not advertise on the LAN or serve LAN signaling (also MESH_LAN=off).")
@click.option("--lan-open", is_flag=True,
              help="Admit LAN peers that connect by name without the ticket.")
@click.option("--http", "http_mode", is_flag=True,
              help="Speak HTTP to the service: request log, inspector, auth, headers.")
@click.option("--inspect", "inspect_addr", default="127.0.0.1:4040", show_default=True,
              metavar="ADDR", help="With --http: where the request inspector listens "
                                   "(loopback only).")
@click.option("--no-inspect", is_flag=True, help="With --http: no inspector.")
@click.option("--basic-auth", default=None, metavar="USER:PASS",
              help="With --http: require these credentials (checked by this side).")
@click.option("--host-header", default=None, metavar="VALUE|rewrite",
              help="With --http: the Host the service sees (rewrite: the service's "
                   "host:port).")
@click.option("--public", is_flag=True,
              help="Claim --name on the signaling tier and serve the share through its "
                   "gateway (implies --http).")
@click.option("--public-auth", default=None, metavar="USER:PASS",
              help="With --public: the gateway demands these Basic credentials.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
def share_cmd(target: str, signal_urls: tuple[str, ...], name: str, allow: tuple[str, ...],
              ttl: int, max_peers: int, max_streams: int, idle_timeout: float,
              new_ticket: bool, no_lan: bool, lan_open: bool, http_mode: bool,
              inspect_addr: str, no_inspect: bool, basic_auth: str | None,
              host_header: str | None, public: bool, public_auth: str | None,
              as_json: bool) -> None:
    """Share a local service: TARGET is PORT or HOST:PORT."""
    from mesh.http.policy import parse_basic_auth
    from mesh.node.share import Share, ShareConfig
    from mesh.proto.identity import decode_node_id

    out = _Output(as_json)
    try:
        host, port = _parse_target(target)
        urls = _signal_urls(signal_urls)
        lan = not no_lan and os.environ.get("MESH_LAN", "on").lower() not in ("off", "0", "no")
        if not urls and not lan:
            raise ConfigError("no signaling server and LAN mode is off: pass --signal "
                              "ws://HOST:PORT/ or set MESH_SIGNAL (start one with `mesh signal`)")
        for key in allow:
            try:
                decode_node_id(key)
            except ValueError:
                raise ConfigError(f"--allow {key!r} is not a node id") from None
        http = _http_config(http_mode or public, inspect_addr, no_inspect, basic_auth,
                            host_header)
        pub_auth = None
        if public_auth is not None:
            if not public:
                raise ConfigError("--public-auth needs --public")
            try:
                pub_auth = parse_basic_auth(public_auth)
            except ValueError as exc:
                raise ConfigError(str(exc).replace("--basic-auth", "--public-auth")) from None
        if public:
            from mesh.proto.frames import valid_name

            if not name:
                raise ConfigError("--public needs --name NAME (the NAME in NAME.DOMAIN)")
            if not valid_name(name):
                raise ConfigError(f"--name {name!r}: a public name is one lower-case DNS "
                                  "label (a-z, 0-9, -)")
            if not urls:
                raise ConfigError("--public needs --signal URL (a server whose operator "
                                  "runs `mesh gateway`)")
    except MeshError as exc:
        _fail(as_json, exc)
    config = ShareConfig(
        port=port, host=host, name=name or f"{socket.gethostname()}-{port}",
        signal_urls=urls, ttl=ttl, allow=frozenset(allow) if allow else None,
        max_peers=max_peers, max_streams=max_streams, idle_timeout=idle_timeout,
        new_ticket=new_ticket, lan=lan, lan_open=lan_open, http=http, public=public,
        public_auth=pub_auth,
    )

    async def run() -> None:
        async with Share(config, on_event=out):
            await asyncio.Event().wait()

    _run(out, run)


def _http_config(http_mode: bool, inspect_addr: str, no_inspect: bool,
                 basic_auth: str | None, host_header: str | None) -> Any:
    from mesh.http.inspector import parse_addr
    from mesh.http.policy import parse_basic_auth
    from mesh.http.proxy import HttpConfig

    if not http_mode:
        given = [flag for flag, on in (("--basic-auth", basic_auth is not None),
                                       ("--host-header", host_header is not None),
                                       ("--no-inspect", no_inspect),
                                       ("--inspect", inspect_addr != "127.0.0.1:4040")) if on]
        if given:
            raise ConfigError(f"{given[0]} needs --http")
        return None
    try:
        auth = parse_basic_auth(basic_auth) if basic_auth is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if host_header is not None and (not host_header.strip() or any(
            c in host_header for c in "\r\n\0 ")):
        raise ConfigError("--host-header must be rewrite or a host[:port] without spaces")
    if not no_inspect:
        parse_addr(inspect_addr)  # loopback only: fail before any I/O
    return HttpConfig(basic_auth=auth, host_header=host_header,
                      inspect=None if no_inspect else inspect_addr)


@main.command("gateway")
@click.option("--domain", required=True, help="Serve shares as NAME.DOMAIN.")
@click.option("--listen", "listen", default="0.0.0.0:8080", show_default=True, metavar="ADDR",
              help="HOST:PORT to serve HTTP(S) on (port 0 picks a free one).")
@click.option("--tls-cert", default=None, metavar="FILE", help="PEM certificate (chain).")
@click.option("--tls-key", default=None, metavar="FILE", help="PEM private key.")
@click.option("--signal", "signal_urls", multiple=True, metavar="URL",
              help="Signaling server (repeatable; default: $MESH_SIGNAL).")
@click.option("--public-url", default=None, metavar="URL",
              help="Base URL shares print, when the gateway sits behind something else.")
@click.option("--max-body", default=10 * 1024 * 1024, show_default=True,
              type=click.IntRange(0), help="Largest request body in bytes (413 beyond).")
@click.option("--rate-per-share", default=100.0, show_default=True,
              type=click.FloatRange(0.1), help="Requests per second per share (503 beyond).")
@click.option("--rate-per-client", default=50.0, show_default=True,
              type=click.FloatRange(0.1),
              help="Requests per second per client address (503 beyond).")
@click.option("--burst", default=200.0, show_default=True, type=click.FloatRange(1),
              help="Requests a share or client may make at once before the rates apply.")
@click.option("--max-streams-per-share", default=64, show_default=True,
              type=click.IntRange(1), help="Open requests per share (503 beyond).")
@click.option("--share-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a share has to start answering (504 beyond).")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
def gateway_cmd(domain: str, listen: str, tls_cert: str | None, tls_key: str | None,
                signal_urls: tuple[str, ...], public_url: str | None, max_body: int,
                rate_per_share: float, rate_per_client: float, burst: float,
                max_streams_per_share: int, share_timeout: float, as_json: bool) -> None:
    """Serve --public shares to any HTTP client (webhooks) as NAME.DOMAIN."""
    from mesh.node.gateway import (
        Gateway,
        GatewayConfig,
        check_public_url,
        parse_listen,
        valid_domain,
    )

    out = _Output(as_json)
    try:
        urls = _signal_urls(signal_urls)
        if not urls:
            raise ConfigError("the gateway needs --signal URL (or MESH_SIGNAL)")
        if not valid_domain(domain):
            raise ConfigError(f"--domain {domain!r} is not a domain name")
        host, port = parse_listen(listen)
        if public_url is not None:
            check_public_url(public_url)
    except MeshError as exc:
        _fail(as_json, exc)
    config = GatewayConfig(
        domain=domain.lower(), signal_urls=urls, host=host, port=port, tls_cert=tls_cert,
        tls_key=tls_key, public_url=public_url, max_body=max_body,
        rate_per_share=rate_per_share, burst_per_share=burst,
        rate_per_client=rate_per_client, burst_per_client=burst,
        max_streams_per_share=max_streams_per_share, share_timeout=share_timeout)

    async def run() -> None:
        async with Gateway(config, on_event=out):
            await asyncio.Event().wait()

    _run(out, run)


@main.command("release")
@click.argument("name")
@click.option("--signal", "signal_urls", multiple=True, metavar="URL",
              help="Signaling server (repeatable; default: $MESH_SIGNAL).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def release_cmd(name: str, signal_urls: tuple[str, ...], as_json: bool) -> None:
    """Give up a public name this machine's key holds."""
    from mesh.node.home import load_or_create
    from mesh.node.signal_client import SignalClient

    out = _Output(as_json)
    try:
        urls = _signal_urls(signal_urls)
        if not urls:
            raise ConfigError("pass --signal URL (or set MESH_SIGNAL)")
        from mesh.proto.frames import valid_name

        if not valid_name(name):
            raise ConfigError(f"{name!r} is not a public name (one lower-case DNS label)")
    except MeshError as exc:
        _fail(as_json, exc)

    async def run() -> None:
        client = SignalClient(load_or_create(), list(urls), lambda sender, payload: None)
        await client.start()
        try:
            await client.name("release", name)
        finally:
            await client.close()
        out(events.Released(name))

    _run(out, run)


@main.command("connect")
@click.argument("ticket")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Local port to listen on (0 picks a free one).")
@click.option("--bind", "bind_host", default="127.0.0.1", show_default=True,
              help="Local address to listen on.")
@click.option("--signal", "signal_urls", multiple=True, metavar="URL",
              help="Signaling server to use instead of the ticket's (repeatable).")
@click.option("--max-streams", default=4096, show_default=True, type=click.IntRange(1),
              help="Local connections tunnelled at once.")
@click.option("--idle-timeout", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Close a connection idle this many seconds (0: never).")
@click.option("--retry-direct", default=30.0, show_default=True, type=click.FloatRange(1),
              help="While on the relay, try the direct path again every this many seconds.")
@click.option("--http", "http_mode", is_flag=True,
              help="Parse requests as HTTP and refuse a Host other than this listener "
                   "(421; guards against DNS rebinding from a browser tab).")
@click.option("--relay-only", is_flag=True,
              help="Connect only through the TURN relay: the sharer never sees this "
                   "machine's addresses.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
def connect_cmd(ticket: str, port: int, bind_host: str, signal_urls: tuple[str, ...],
                max_streams: int, idle_timeout: float, retry_direct: float,
                http_mode: bool, relay_only: bool, as_json: bool) -> None:
    """Connect to a share: its service appears on a local port."""
    from mesh.node.connect import ConnectConfig, Tunnel, resolve
    from mesh.proto import ticket as ticket_mod

    out = _Output(as_json)
    try:
        urls = _signal_urls(signal_urls) if signal_urls else ()
        if ticket_mod.looks_like_ticket(ticket) or ticket.startswith(ticket_mod.PREFIX):
            ticket_mod.decode(ticket, now=time.time())  # fail fast, before any I/O
    except MeshError as exc:
        _fail(as_json, exc)

    async def run() -> None:
        parsed, by_name = await resolve(ticket, time.time())
        config = ConnectConfig(ticket=parsed, port=port, host=bind_host, signal_urls=urls,
                               max_streams=max_streams, idle_timeout=idle_timeout,
                               upgrade_interval=retry_direct, by_name=by_name,
                               http=http_mode, relay_only=relay_only)
        async with Tunnel(config, on_event=out):
            await asyncio.Event().wait()

    _run(out, run)


@main.command("netcheck")
@click.option("--signal", "signal_urls", multiple=True, metavar="URL",
              help="Signaling server to check against (default: $MESH_SIGNAL).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def netcheck_cmd(signal_urls: tuple[str, ...], as_json: bool) -> None:
    """Report what this network allows: public address, NAT type, UDP, TURN, latency."""
    from dataclasses import asdict

    from mesh.node.home import load_or_create
    from mesh.node.netcheck import netcheck

    out = _Output(as_json)
    try:
        urls = _signal_urls(signal_urls)
        if not urls:
            raise ConfigError("no signaling server: pass --signal ws://HOST:PORT/ or set "
                              "MESH_SIGNAL")
    except MeshError as exc:
        _fail(as_json, exc)

    async def run() -> None:
        report = await netcheck(load_or_create(), list(urls))
        out(events.NetcheckEvent(**asdict(report)))

    _run(out, run)


@main.command("ls")
@click.option("--timeout", default=2.0, show_default=True, type=click.FloatRange(0.2, 30),
              help="Seconds to listen for adverts.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per share.")
def ls_cmd(timeout: float, as_json: bool) -> None:
    """List the shares visible on this network (mDNS)."""
    from mesh.node.discovery import browse

    out = _Output(as_json)

    async def run() -> None:
        adverts = await browse(timeout)
        now = time.time()
        for ad in adverts:
            row = {"event": "share", "name": ad.name, "node_id": ad.node_id,
                   "address": ", ".join(f"{a}:{ad.port}" for a in ad.addresses),
                   "age_s": round(max(0.0, now - ad.made), 1), "open": ad.open}
            if as_json:
                click.echo(json.dumps(row))
            else:
                click.echo(f"{ad.name:24} {ad.node_id[:12]}  {row['address']:22} "
                           f"up {row['age_s']:.0f}s{'  open' if ad.open else ''}")
        if not adverts and not as_json:
            click.echo("no shares visible on this network")

    _run(out, run)


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per running process.")
def status_cmd(as_json: bool) -> None:
    """Show every running share and connect on this machine."""
    from mesh.node.status import query_all

    procs = asyncio.run(query_all())
    if as_json:
        for proc in procs:
            click.echo(json.dumps({"event": "status", **proc}, default=str))
        return
    if not procs:
        click.echo("no mesh share or connect is running")
        return
    for proc in procs:
        up = f"up {proc.get('uptime_s', 0):.0f}s"
        if proc.get("kind") == "share":
            click.echo(f"share {proc.get('name')!r} -> {proc.get('target')}  pid {proc['pid']}  "
                       f"{up}  peers {len(proc.get('peers', []))}")
            for peer in proc.get("peers", []):
                click.echo(f"  {str(peer['peer'])[:8]}  {peer.get('path') or '-':6}  "
                           f"rtt {peer.get('rtt_ms')} ms  streams {peer['streams_open']}  "
                           f"in {peer['bytes_in']} B  out {peer['bytes_out']} B  "
                           f"up {peer['uptime_s']:.0f}s")
        else:
            click.echo(f"connect {proc.get('name')!r} on 127.0.0.1:{proc.get('port')}  "
                       f"pid {proc['pid']}  {up}  {proc.get('path') or 'disconnected'}  "
                       f"rtt {proc.get('rtt_ms')} ms  streams {proc.get('streams_open')}  "
                       f"in {proc.get('bytes_in')} B  out {proc.get('bytes_out')} B")


@main.command("id")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def id_cmd(as_json: bool) -> None:
    """Print this machine's node id (creating the key on first use)."""
    from mesh.node.home import load_or_create, mesh_home

    try:
        ident = load_or_create()
    except MeshError as exc:
        _fail(as_json, exc)
    info: dict[str, Any] = {"node_id": ident.node_id, "home": str(mesh_home())}
    if as_json:
        click.echo(json.dumps({"event": "id", **info}))
    else:
        click.echo(ident.node_id)


def run_main() -> None:  # pragma: no cover - console entry alias
    with contextlib.suppress(BrokenPipeError):
        main()
