"""The ``mesh`` command line: builds configuration, calls the Python API, prints events.

Output contract: with ``--json`` every line on stdout is one JSON object with an
``event`` field (``ready``, ``listening``, ``connected``, ``disconnected``,
``rejected``, ``signal``, ``warning``, ``error``, ...). Without it, humans get
short lines (the ticket on stdout, the rest on stderr). Every ``MeshError``
becomes one line and the exit code of its class (the table is in
mesh/errors.py and the README); Ctrl-C exits 130, a bug 70.

Every check of a value lives in the configuration classes (mesh/node/config.py,
mesh/http/proxy.py, signaling/): this module only maps flags to fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from .errors import INTERNAL, INTERRUPTED, ConfigError, MeshError
from .node import environ, events

F = TypeVar("F", bound=Callable[..., Any])


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
        for noisy in ("aioice", "aiortc", "aiohttp", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL if noisy == "asyncio"
                                              else logging.ERROR)


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
            code = INTERRUPTED
    except MeshError as exc:
        out(events.ErrorEvent(str(exc)))
        code = exc.exit_code
    except KeyboardInterrupt:
        out(events.ErrorEvent("interrupted"))
        code = INTERRUPTED
    except Exception as exc:  # a bug: still one line (details with -v)
        logging.getLogger("mesh").debug("internal error", exc_info=True)
        out(events.ErrorEvent(f"internal error: {type(exc).__name__}: {exc}"))
        code = INTERNAL
    sys.exit(code)


def _configured(as_json: bool, build: Callable[[], Any]) -> Any:
    """``build()``, or one error line and the exit code of its ``MeshError``."""
    try:
        return build()
    except MeshError as exc:
        _Output(as_json)(events.ErrorEvent(str(exc)))
        sys.exit(exc.exit_code)


async def _forever() -> None:
    await asyncio.Event().wait()


# -- shared options ----------------------------------------------------------------------
def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print events as JSON lines.")(f)


def signal_option(f: F) -> F:
    return click.option("--signal", "signal_urls", multiple=True, metavar="URL",
                        help="Signaling server (repeatable; default: $MESH_SIGNAL).")(f)


def max_streams_option(f: F) -> F:
    return click.option("--max-streams", default=4096, show_default=True,
                        type=click.IntRange(1),
                        help="Connections tunnelled at once (per peer on a share).")(f)


def idle_option(f: F) -> F:
    return click.option("--idle-timeout", default=0.0, show_default=True,
                        type=click.FloatRange(0),
                        help="Close a connection idle this many seconds (0: never).")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
@click.version_option(package_name="mesh-tunnel", prog_name="mesh")
def main(verbose: int) -> None:
    """mesh: share a local TCP service with another machine, peer to peer."""
    _setup_logging(verbose)


# -- mesh signal ---------------------------------------------------------------------------
@main.command("signal")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Signaling (WebSocket) port; 0 picks a free one.")
@click.option("--stun-port", default=3478, show_default=True, type=click.IntRange(0, 65535),
              help="UDP/TCP port of the embedded STUN/TURN server (UDP port+1 answers STUN "
                   "too, for NAT type tests); 0 picks a free one.")
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
@json_option
def signal_cmd(host: str, port: int, stun_port: int, no_turn: bool, public_ip: str | None,
               turn_urls: tuple[str, ...], turn_secret: str | None, relay_allow: tuple[str, ...],
               max_allocations: int, max_allocations_per_user: int, relay_bandwidth: int,
               max_conns_per_ip: int, rate: float, redis_url: str | None,
               presence_ttl: float, gateways: tuple[str, ...], as_json: bool) -> None:
    """Run the rendezvous server: signaling plus STUN/TURN."""
    from signaling.rendezvous import Rendezvous, RendezvousConfig
    from signaling.server import ServerConfig

    out = _Output(as_json)
    config = _configured(as_json, lambda: RendezvousConfig(
        signal=ServerConfig(host=host, port=port, max_conns_per_ip=max_conns_per_ip,
                            rate=rate, gateways=frozenset(gateways)),
        stun_port=None if no_turn else stun_port, public_ip=public_ip, turn_urls=turn_urls,
        turn_secret=turn_secret.encode() if turn_secret else None, relay_allow=relay_allow,
        max_allocations=max_allocations, max_allocations_per_user=max_allocations_per_user,
        relay_bandwidth=relay_bandwidth, redis_url=redis_url, presence_ttl=presence_ttl))

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
            await _forever()
        finally:
            await server.stop()

    _run(out, run)


def _raise_fd_limit() -> None:
    """A server holds one socket per client: use the whole hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- mesh share ----------------------------------------------------------------------------
@main.command("share")
@click.argument("target")
@signal_option
@click.option("--name", default="", help="Name of the share: a DNS label (default: "
                                         "HOSTNAME-PORT).")
@click.option("--allow", multiple=True, metavar="NODE_ID",
              help="Admit only this peer key (repeatable).")
@click.option("--ttl", default=7 * 24 * 3600, show_default=True, type=click.IntRange(60),
              help="Seconds the ticket stays valid (at least 60).")
@click.option("--max-peers", default=64, show_default=True, type=click.IntRange(1),
              help="Admitted peers connected at once.")
@max_streams_option
@idle_option
@click.option("--new-ticket", is_flag=True,
              help="Replace this share name's secret: older tickets stop working.")
@click.option("--no-lan", is_flag=True,
              help="Do not advertise on the LAN or serve LAN signaling (also MESH_LAN=off).")
@click.option("--lan-open", is_flag=True,
              help="Admit LAN peers that connect by name without the ticket.")
@click.option("--http", "http_mode", is_flag=True,
              help="Speak HTTP to the service: request log, inspector, auth, headers.")
@click.option("--inspect", "inspect_addr", default=None, metavar="ADDR",
              help="With --http: where the request inspector listens (loopback only; "
                   "default 127.0.0.1:4040, or the next free port up to 4049).")
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
@json_option
def share_cmd(target: str, signal_urls: tuple[str, ...], name: str, allow: tuple[str, ...],
              ttl: int, max_peers: int, max_streams: int, idle_timeout: float,
              new_ticket: bool, no_lan: bool, lan_open: bool, http_mode: bool,
              inspect_addr: str | None, no_inspect: bool, basic_auth: str | None,
              host_header: str | None, public: bool, public_auth: str | None,
              as_json: bool) -> None:
    """Share a local service: TARGET is PORT or HOST:PORT."""
    from .node.config import ShareConfig
    from .node.share import Share
    from .proto.names import check_basic_auth, parse_hostport

    def build() -> ShareConfig:
        host, port = parse_hostport(target, "share target", default_host="127.0.0.1")
        http = _http_config(http_mode or public, inspect_addr, no_inspect, basic_auth,
                            host_header)
        return ShareConfig(
            port=port, host=host, name=name, signal_urls=environ.signal_urls(signal_urls),
            ttl=ttl, allow=frozenset(allow) if allow else None, max_peers=max_peers,
            max_streams=max_streams, idle_timeout=idle_timeout, new_ticket=new_ticket,
            lan=not no_lan and environ.lan_enabled(), lan_open=lan_open, http=http,
            public=public, public_auth=(check_basic_auth(public_auth, "--public-auth")
                                        if public_auth is not None else None))

    out = _Output(as_json)
    config = _configured(as_json, build)

    async def run() -> None:
        async with Share(config, on_event=out):
            await _forever()

    _run(out, run)


def _http_config(http_mode: bool, inspect_addr: str | None, no_inspect: bool,
                 basic_auth: str | None, host_header: str | None) -> Any:
    from .http.proxy import HttpConfig

    if not http_mode:
        given = [flag for flag, on in (("--basic-auth", basic_auth is not None),
                                       ("--host-header", host_header is not None),
                                       ("--no-inspect", no_inspect),
                                       ("--inspect", inspect_addr is not None)) if on]
        if given:
            raise ConfigError(f"{given[0]} needs --http")
        return None
    return HttpConfig.from_flags(basic_auth=basic_auth, host_header=host_header,
                                 inspect=inspect_addr, no_inspect=no_inspect)


# -- mesh gateway ----------------------------------------------------------------------------
@main.command("gateway")
@click.option("--domain", required=True, help="Serve shares as NAME.DOMAIN.")
@click.option("--listen", "listen", default="0.0.0.0:8080", show_default=True, metavar="ADDR",
              help="HOST:PORT to serve HTTP(S) on (port 0 picks a free one).")
@click.option("--tls-cert", default=None, metavar="FILE", help="PEM certificate (chain).")
@click.option("--tls-key", default=None, metavar="FILE", help="PEM private key.")
@signal_option
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
@json_option
def gateway_cmd(domain: str, listen: str, tls_cert: str | None, tls_key: str | None,
                signal_urls: tuple[str, ...], public_url: str | None, max_body: int,
                rate_per_share: float, rate_per_client: float, burst: float,
                max_streams_per_share: int, share_timeout: float, as_json: bool) -> None:
    """Serve --public shares to any HTTP client (webhooks) as NAME.DOMAIN."""
    from .node.config import GatewayConfig
    from .node.gateway import Gateway
    from .proto.names import parse_hostport

    def build() -> GatewayConfig:
        host, port = parse_hostport(listen, "--listen", default_host="0.0.0.0", zero_ok=True)
        return GatewayConfig(
            domain=domain, signal_urls=environ.signal_urls(signal_urls), host=host, port=port,
            tls_cert=tls_cert, tls_key=tls_key, public_url=public_url, max_body=max_body,
            rate_per_share=rate_per_share, burst_per_share=burst,
            rate_per_client=rate_per_client, burst_per_client=burst,
            max_streams_per_share=max_streams_per_share, share_timeout=share_timeout)

    out = _Output(as_json)
    config = _configured(as_json, build)

    async def run() -> None:
        _raise_fd_limit()
        async with Gateway(config, on_event=out):
            await _forever()

    _run(out, run)


# -- mesh release ----------------------------------------------------------------------------
@main.command("release")
@click.argument("name")
@signal_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def release_cmd(name: str, signal_urls: tuple[str, ...], as_json: bool) -> None:
    """Give up a public name this machine's key holds."""
    from .node.home import load_or_create
    from .node.signal_client import SignalClient
    from .proto.names import check_name

    def build() -> tuple[str, ...]:
        check_name(name, "name")
        urls = environ.signal_urls(signal_urls)
        if not urls:
            raise ConfigError("pass --signal URL (or set MESH_SIGNAL)")
        return urls

    out = _Output(as_json)
    urls = _configured(as_json, build)

    async def run() -> None:
        client = SignalClient(load_or_create(), list(urls), lambda sender, payload: None)
        await client.start()
        try:
            await client.name("release", name)
        finally:
            await client.close()
        out(events.Released(name))

    _run(out, run)


# -- mesh connect -----------------------------------------------------------------------------
@main.command("connect")
@click.argument("ticket")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Local port to listen on (0 picks a free one).")
@click.option("--bind", "bind_host", default="127.0.0.1", show_default=True,
              help="Local address to listen on.")
@click.option("--signal", "signal_urls", multiple=True, metavar="URL",
              help="Signaling server to use instead of the ticket's (repeatable).")
@max_streams_option
@idle_option
@click.option("--retry-direct", default=30.0, show_default=True, type=click.FloatRange(1),
              help="While on the relay, try the direct path again every this many seconds.")
@click.option("--http", "http_mode", is_flag=True,
              help="Parse requests as HTTP and refuse a Host other than this listener "
                   "(421; guards against DNS rebinding from a browser tab).")
@click.option("--relay-only", is_flag=True,
              help="Connect only through the TURN relay: the sharer never sees this "
                   "machine's addresses.")
@json_option
def connect_cmd(ticket: str, port: int, bind_host: str, signal_urls: tuple[str, ...],
                max_streams: int, idle_timeout: float, retry_direct: float,
                http_mode: bool, relay_only: bool, as_json: bool) -> None:
    """Connect to a share: its service appears on a local port."""
    from .node.config import ConnectConfig
    from .node.connect import Tunnel
    from .node.discovery import resolve
    from .proto import ticket as ticket_mod

    options: dict[str, Any] = dict(
        port=port, host=bind_host, max_streams=max_streams, idle_timeout=idle_timeout,
        upgrade_interval=retry_direct, http=http_mode, relay_only=relay_only)

    def build() -> tuple[str, ...]:
        urls = environ.signal_urls(signal_urls) if signal_urls else ()
        if ticket_mod.looks_like_ticket(ticket) or ticket.startswith(ticket_mod.PREFIX):
            parsed = ticket_mod.decode(ticket, now=time.time())  # fail fast, before any I/O
            ConnectConfig(ticket=parsed, signal_urls=urls, **options)
        return urls

    out = _Output(as_json)
    urls = _configured(as_json, build)

    async def run() -> None:
        parsed, by_name = await resolve(ticket, time.time())
        config = ConnectConfig(ticket=parsed, signal_urls=urls, by_name=by_name, **options)
        async with Tunnel(config, on_event=out):
            await _forever()

    _run(out, run)


# -- mesh netcheck, ls, status, id -------------------------------------------------------------
@main.command("netcheck")
@click.option("--signal", "signal_urls", multiple=True, metavar="URL",
              help="Signaling server to check against (default: $MESH_SIGNAL).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def netcheck_cmd(signal_urls: tuple[str, ...], as_json: bool) -> None:
    """Report what this network allows: public address, NAT type, UDP, TURN, latency."""
    from .node.home import load_or_create
    from .node.netcheck import netcheck

    def build() -> tuple[str, ...]:
        urls = environ.signal_urls(signal_urls)
        if not urls:
            raise ConfigError("no signaling server: pass --signal ws://HOST:PORT/ or set "
                              "MESH_SIGNAL")
        return urls

    out = _Output(as_json)
    urls = _configured(as_json, build)

    async def run() -> None:
        out(await netcheck(load_or_create(), list(urls)))

    _run(out, run)


@main.command("ls")
@click.option("--timeout", default=2.0, show_default=True, type=click.FloatRange(0.2, 30),
              help="Seconds to listen for adverts.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per share.")
def ls_cmd(timeout: float, as_json: bool) -> None:
    """List the shares visible on this network (mDNS)."""
    from .node.discovery import browse

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
    from .node.status import describe, query_all

    procs = asyncio.run(query_all())
    if as_json:
        for proc in procs:
            click.echo(json.dumps({"event": "status", **proc}, default=str))
        return
    click.echo("\n".join(describe(procs)))


@main.command("id")
@json_option
def id_cmd(as_json: bool) -> None:
    """Print this machine's node id (creating the key on first use)."""
    from .node.home import load_or_create

    ident = _configured(as_json, load_or_create)
    if as_json:
        click.echo(json.dumps({"event": "id", "node_id": ident.node_id,
                               "home": str(environ.home())}))
    else:
        click.echo(ident.node_id)


def run_main() -> None:  # pragma: no cover - console entry alias
    with contextlib.suppress(BrokenPipeError):
        main()
