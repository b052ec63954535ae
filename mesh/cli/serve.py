"""``mesh signal``, ``mesh gateway`` and ``mesh serve`` (both in one process): the server
side of a deployment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from mesh.errors import ConfigError
from mesh.node import environ, events
from mesh.node.certs import LETS_ENCRYPT

from .common import (
    Output,
    configured,
    forever,
    ice_settings,
    json_option,
    portmap_option,
    raise_fd_limit,
    run_until_stopped,
    signal_option,
)
from .edge import edge_fields, edge_options

F = TypeVar("F", bound=Callable[..., Any])


def acme_options(f: F) -> F:
    """``--acme-email``, ``--acme-directory``, ``--acme-ca-bundle``, ``--http-listen``."""
    f = click.option("--http-listen", default="0.0.0.0:80", show_default=True,
                     metavar="ADDR", help="With --acme-email: plain HTTP (ACME challenges, "
                     "and every share over HTTP).")(f)
    f = click.option("--acme-ca-bundle", default=None, metavar="FILE",
                     help="CA bundle that verifies the ACME server (a private CA).")(f)
    f = click.option("--acme-directory", default=LETS_ENCRYPT, show_default=True,
                     metavar="URL", help="The ACME server's directory URL.")(f)
    return click.option("--acme-email", default=None, metavar="EMAIL",
                        help="Get certificates for NAME.DOMAIN automatically (ACME, "
                             "HTTP-01); --listen then serves HTTPS.")(f)


def acme_fields(acme_email: str | None, acme_directory: str, acme_ca_bundle: str | None,
                http_listen: str) -> dict[str, Any]:
    from mesh.proto.names import parse_hostport

    host, port = parse_hostport(http_listen, "--http-listen", default_host="0.0.0.0")
    return {"acme_email": acme_email, "acme_directory": acme_directory,
            "acme_ca_bundle": acme_ca_bundle, "http_host": host, "http_port": port}


async def start_rendezvous(server: Any) -> str:
    """Start signaling and STUN/TURN; their errors as one-line configuration errors."""
    try:
        return str(await server.start())
    except ConnectionError as exc:
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot listen: {exc.strerror or exc}") from exc


# -- mesh signal ---------------------------------------------------------------------------
@click.command("signal")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int,
              help="Signaling (WebSocket) port; 0 picks a free one.")
@click.option("--stun-port", default=3478, show_default=True, type=int,
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
@click.option("--max-names-per-key", default=16, show_default=True, type=click.IntRange(1),
              help="Public names one node key may hold.")
@click.option("--max-sessions-per-key", default=8, show_default=True, type=click.IntRange(1),
              help="Processes (sessions) one node key may have registered at once.")
@click.option("--name-ttl-days", default=30.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Days a public name stays with a holder that is offline.")
@json_option
def signal_cmd(host: str, port: int, stun_port: int, no_turn: bool, public_ip: str | None,
               turn_urls: tuple[str, ...], turn_secret: str | None, relay_allow: tuple[str, ...],
               max_allocations: int, max_allocations_per_user: int, relay_bandwidth: int,
               max_conns_per_ip: int, rate: float, redis_url: str | None,
               presence_ttl: float, gateways: tuple[str, ...], max_names_per_key: int,
               max_sessions_per_key: int, name_ttl_days: float, as_json: bool) -> None:
    """Run the rendezvous server: signaling plus STUN/TURN."""
    from signaling.names import NameRules
    from signaling.rendezvous import RendezvousConfig
    from signaling.server import ServerConfig

    out = Output(as_json)
    config = configured(as_json, lambda: RendezvousConfig(
        signal=ServerConfig(host=host, port=port, max_conns_per_ip=max_conns_per_ip,
                            rate=rate, gateways=frozenset(gateways),
                            max_sessions_per_key=max_sessions_per_key,
                            names=NameRules(max_names_per_key, name_ttl_days * 86400)),
        stun_port=None if no_turn else stun_port, public_ip=public_ip, turn_urls=turn_urls,
        turn_secret=turn_secret.encode() if turn_secret else None, relay_allow=relay_allow,
        max_allocations=max_allocations, max_allocations_per_user=max_allocations_per_user,
        relay_bandwidth=relay_bandwidth, redis_url=redis_url, presence_ttl=presence_ttl))

    async def run() -> None:
        from signaling.rendezvous import Rendezvous

        raise_fd_limit()
        server = Rendezvous(config)
        url = await start_rendezvous(server)
        assert server.signal is not None
        sc = server.signal.config
        out(events.SignalReady(url, list(sc.stun_urls), list(sc.turn_urls)))
        try:
            await forever()
        finally:
            await server.stop()

    run_until_stopped(out, run)


# -- mesh gateway ----------------------------------------------------------------------------
@click.command("gateway")
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
@click.option("--max-requests-per-client", default=32, show_default=True,
              type=click.IntRange(1), help="Open requests per client address (503 beyond).")
@click.option("--max-conns-per-client", default=64, show_default=True,
              type=click.IntRange(1),
              help="Open connections per client address (503 and closed beyond).")
@click.option("--body-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a request body may stay silent (408 beyond).")
@click.option("--metrics", "metrics_listen", default=None, metavar="HOST:PORT",
              help="Serve Prometheus /metrics (pools, members, cache) here.")
@edge_options
@acme_options
@portmap_option
@json_option
def gateway_cmd(domain: str, listen: str, tls_cert: str | None, tls_key: str | None,
                signal_urls: tuple[str, ...], public_url: str | None, max_body: int,
                rate_per_share: float, rate_per_client: float, burst: float,
                max_streams_per_share: int, share_timeout: float,
                max_requests_per_client: int, max_conns_per_client: int, body_timeout: float,
                acme_email: str | None, acme_directory: str, acme_ca_bundle: str | None,
                http_listen: str, metrics_listen: str | None, no_portmap: bool,
                as_json: bool, **edge: Any) -> None:
    """Serve --public shares to any HTTP client (webhooks) as NAME.DOMAIN."""
    from mesh.node.config import GatewayConfig
    from mesh.proto.names import parse_hostport

    def build() -> GatewayConfig:
        host, port = parse_hostport(listen, "--listen", default_host="0.0.0.0")
        metrics_host, metrics_port = (parse_hostport(metrics_listen, "--metrics",
                                                     default_host="127.0.0.1")
                                      if metrics_listen else (None, 0))
        return GatewayConfig(
            domain=domain, signal_urls=environ.signal_urls(signal_urls), host=host, port=port,
            tls_cert=tls_cert, tls_key=tls_key, public_url=public_url, max_body=max_body,
            rate_per_share=rate_per_share, burst_per_share=burst,
            rate_per_client=rate_per_client, burst_per_client=burst,
            max_streams_per_share=max_streams_per_share, share_timeout=share_timeout,
            max_requests_per_client=max_requests_per_client,
            max_conns_per_client=max_conns_per_client, body_timeout=body_timeout,
            metrics_host=metrics_host, metrics_port=metrics_port,
            ice=ice_settings(no_portmap),
            **acme_fields(acme_email, acme_directory, acme_ca_bundle, http_listen),
            **edge_fields(**edge))

    out = Output(as_json)
    config = configured(as_json, build)

    async def run() -> None:
        from mesh.node.gateway import Gateway

        raise_fd_limit()
        async with Gateway(config, on_event=out):
            await forever()

    run_until_stopped(out, run)




# -- mesh serve ------------------------------------------------------------------------------
@click.command("serve")
@click.option("--domain", required=True, help="Serve shares as NAME.DOMAIN.")
@click.option("--host", default="0.0.0.0", show_default=True,
              help="Address signaling and STUN/TURN listen on.")
@click.option("--port", default=8765, show_default=True, type=int,
              help="Signaling (WebSocket) port; 0 picks a free one.")
@click.option("--stun-port", default=3478, show_default=True, type=int,
              help="UDP/TCP port of STUN/TURN; 0 picks a free one.")
@click.option("--no-turn", is_flag=True, help="Do not run the embedded STUN/TURN server.")
@click.option("--public-ip", default=None,
              help="Address sharers reach this machine at (STUN/TURN, and the URL shown).")
@click.option("--relay-allow", multiple=True, metavar="CIDR",
              help="Let the relay reach this normally refused range (repeatable).")
@click.option("--listen", "listen", default="0.0.0.0:8080", show_default=True, metavar="ADDR",
              help="HOST:PORT the gateway serves HTTP(S) on (port 0 picks a free one).")
@click.option("--tls-cert", default=None, metavar="FILE", help="PEM certificate (chain).")
@click.option("--tls-key", default=None, metavar="FILE", help="PEM private key.")
@click.option("--public-url", default=None, metavar="URL",
              help="Base URL shares print, when the gateway sits behind something else.")
@edge_options
@acme_options
@portmap_option
@json_option
def serve_cmd(domain: str, host: str, port: int, stun_port: int, no_turn: bool,
              public_ip: str | None, relay_allow: tuple[str, ...], listen: str,
              tls_cert: str | None, tls_key: str | None, public_url: str | None,
              acme_email: str | None, acme_directory: str, acme_ca_bundle: str | None,
              http_listen: str, no_portmap: bool, as_json: bool, **edge: Any) -> None:
    """Self-host in one command: signaling, STUN/TURN and the gateway in one process, the
    gateway's key pinned. `mesh signal` and `mesh gateway` remain for split deployments."""
    from mesh.node.config import GatewayConfig
    from mesh.node.home import load_or_create
    from mesh.proto.names import parse_hostport
    from signaling.rendezvous import RendezvousConfig
    from signaling.server import ServerConfig

    identity = configured(as_json, load_or_create)

    def build() -> tuple[RendezvousConfig, GatewayConfig]:
        gw_host, gw_port = parse_hostport(listen, "--listen", default_host="0.0.0.0")
        rendezvous = RendezvousConfig(
            signal=ServerConfig(host=host, port=port, gateways=frozenset({identity.node_id})),
            stun_port=None if no_turn else stun_port, public_ip=public_ip,
            relay_allow=relay_allow)
        # the signaling URL is known once it listens: checked now with a stand-in
        gateway = GatewayConfig(domain=domain, signal_urls=("ws://127.0.0.1:1/",),
                                host=gw_host, port=gw_port, tls_cert=tls_cert,
                                tls_key=tls_key, public_url=public_url,
                                ice=ice_settings(no_portmap),
                                **acme_fields(acme_email, acme_directory, acme_ca_bundle,
                                              http_listen),
                                **edge_fields(**edge))
        return rendezvous, gateway

    out = Output(as_json)
    rendezvous, gateway = configured(as_json, build)

    async def run() -> None:
        from dataclasses import replace

        from mesh.node.gateway import Gateway
        from signaling.rendezvous import Rendezvous

        raise_fd_limit()
        server = Rendezvous(rendezvous)
        local = await start_rendezvous(server)
        assert server.signal is not None
        shown = local if public_ip is None else local.replace("127.0.0.1", public_ip, 1)
        try:
            async with Gateway(replace(gateway, signal_urls=(local,)), identity=identity,
                               on_event=lambda e: None if isinstance(
                                   e, events.GatewayReady) else out(e)) as running:
                sc = server.signal.config
                # the gateway's pools, cache and ACME counters on the server's /metrics
                server.signal.extra_metrics = _chain(server.signal.extra_metrics,
                                                     running.metrics)
                out(events.Serving(shown, running.url, domain, identity.node_id,
                                   list(sc.stun_urls), list(sc.turn_urls)))
                await forever()
        finally:
            await server.stop()

    run_until_stopped(out, run)


def _chain(first: Any, second: Any) -> Any:
    def both() -> dict[str, float]:
        return {**(first() if first else {}), **second()}
    return both
