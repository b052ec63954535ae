"""``mesh share``, ``mesh connect`` and ``mesh release``: a peer's commands."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from mesh.errors import ConfigError
from mesh.node import environ, events

if TYPE_CHECKING:
    from mesh.node.signal_client import SignalClient

from .common import (
    Output,
    configured,
    forever,
    ice_settings,
    idle_option,
    json_option,
    max_streams_option,
    portmap_option,
    raise_fd_limit,
    resume_option,
    run_until_stopped,
    signal_option,
    udp_options,
)


# -- mesh share ----------------------------------------------------------------------------
@click.command("share")
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
@click.option("--udp", is_flag=True, help="Share a UDP service (with --tcp: both, on "
                                           "one port).")
@click.option("--tcp", is_flag=True, help="Share TCP (the default; with --udp: both).")
@udp_options(max_flows=256, per="per peer")
@resume_option
@portmap_option
@json_option
def share_cmd(target: str, signal_urls: tuple[str, ...], name: str, allow: tuple[str, ...],
              ttl: int, max_peers: int, max_streams: int, idle_timeout: float,
              new_ticket: bool, no_lan: bool, lan_open: bool, http_mode: bool,
              inspect_addr: str | None, no_inspect: bool, basic_auth: str | None,
              host_header: str | None, public: bool, public_auth: str | None,
              udp: bool, tcp: bool, udp_idle: float, max_flows: int, resume_timeout: float,
              no_portmap: bool, as_json: bool) -> None:
    """Share a local service: TARGET is PORT or HOST:PORT."""
    from mesh.node.config import ShareConfig
    from mesh.proto.names import check_basic_auth, parse_hostport

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
                                        if public_auth is not None else None),
            udp=udp, tcp=tcp or not udp, udp_idle=udp_idle, max_flows=max_flows,
            resume_timeout=resume_timeout, ice=ice_settings(no_portmap))

    out = Output(as_json)
    config = configured(as_json, build)

    async def run() -> None:
        from mesh.node.share import Share

        if config.udp:
            raise_fd_limit()  # a socket toward the service per UDP flow
        async with Share(config, on_event=out):
            await forever()

    run_until_stopped(out, run)


def _http_config(http_mode: bool, inspect_addr: str | None, no_inspect: bool,
                 basic_auth: str | None, host_header: str | None) -> Any:
    from mesh.http.config import HttpConfig

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


# -- mesh release ----------------------------------------------------------------------------
@click.command("release")
@click.argument("name")
@signal_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def release_cmd(name: str, signal_urls: tuple[str, ...], as_json: bool) -> None:
    """Give up a public name this machine's key holds."""
    from .names import run_name_op

    async def release(client: SignalClient) -> events.Event:
        await client.name("release", name)
        return events.Released(name)

    run_name_op(name, None, signal_urls, as_json, release)


# -- mesh connect -----------------------------------------------------------------------------
@click.command("connect")
@click.argument("ticket")
@click.option("--port", default=0, show_default=True, type=int,
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
@click.option("--no-http-guard", is_flag=True,
              help="Skip the Host guard an HTTP share's ticket turns on (--http is the "
                   "guard itself).")
@click.option("--relay-only", is_flag=True,
              help="Connect only through the TURN relay: the sharer never sees this "
                   "machine's addresses.")
@udp_options(max_flows=1024, per="at once")
@resume_option
@portmap_option
@json_option
def connect_cmd(ticket: str, port: int, bind_host: str, signal_urls: tuple[str, ...],
                max_streams: int, idle_timeout: float, retry_direct: float,
                http_mode: bool, no_http_guard: bool, relay_only: bool, udp_idle: float,
                max_flows: int, resume_timeout: float, no_portmap: bool,
                as_json: bool) -> None:
    """Connect to a share: its service appears on a local port."""
    from mesh.node.config import ConnectConfig
    from mesh.proto import ticket as ticket_mod

    options: dict[str, Any] = dict(
        port=port, host=bind_host, max_streams=max_streams, idle_timeout=idle_timeout,
        upgrade_interval=retry_direct, http=http_mode, no_http_guard=no_http_guard,
        relay_only=relay_only, udp_idle=udp_idle, max_flows=max_flows,
        resume_timeout=resume_timeout, ice=ice_settings(no_portmap))

    def build() -> tuple[str, ...]:
        urls = environ.signal_urls(signal_urls) if signal_urls else ()
        if ticket_mod.looks_like_ticket(ticket) or ticket.startswith(ticket_mod.PREFIX):
            parsed = ticket_mod.decode(ticket, now=time.time())  # fail fast, before any I/O
            ConnectConfig(ticket=parsed, signal_urls=urls, **options)
        return urls

    out = Output(as_json)
    urls = configured(as_json, build)

    async def run() -> None:
        from mesh.node.connect import Tunnel
        from mesh.node.discovery import resolve

        parsed, by_name = await resolve(ticket, time.time(), signal_urls=urls)
        config = ConnectConfig(ticket=parsed, signal_urls=urls, by_name=by_name, **options)
        async with Tunnel(config, on_event=out):
            await forever()

    run_until_stopped(out, run)


