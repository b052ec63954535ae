"""The gateway's pool, routing and response-policy flags, shared by ``mesh gateway``
and ``mesh serve``: options in, ``GatewayConfig`` fields out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def edge_options(f: F) -> F:
    options = [
        click.option("--balance", default="least", show_default=True,
                     metavar="least|round-robin|cookie|hash:HEADER",
                     help="How requests to a pool spread across its online members."),
        click.option("--health-path", default=None, metavar="PATH",
                     help="Probe each pool member with GET PATH (an answer below 400 is "
                          "healthy)."),
        click.option("--health-interval", default=5.0, show_default=True,
                     type=click.FloatRange(0.2), help="Seconds between health probes."),
        click.option("--routes", "routes_file", default=None, metavar="FILE",
                     help="TOML rules mapping hosts and path prefixes to names."),
        click.option("--compress", is_flag=True,
                     help="gzip compressible answers for callers that accept it."),
        click.option("--security-headers", is_flag=True,
                     help="Add nosniff, X-Frame-Options, Referrer-Policy and, over TLS, "
                          "HSTS."),
        click.option("--header", "add_headers", multiple=True, metavar="'NAME: value'",
                     help="Add this header to every answer (repeatable)."),
        click.option("--cors", multiple=True, metavar="ORIGIN",
                     help="Allow this origin (or '*'): preflights answered at the gateway "
                          "(repeatable)."),
        click.option("--cache-size", default=0.0, show_default=True,
                     type=click.FloatRange(0), metavar="MB",
                     help="Shared HTTP cache in megabytes (0: off)."),
        click.option("--cache-header", is_flag=True,
                     help="Send X-Cache: HIT|MISS|REVALIDATED (debugging)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def edge_fields(balance: str, health_path: str | None, health_interval: float,
                routes_file: str | None, compress: bool, security_headers: bool,
                add_headers: tuple[str, ...], cors: tuple[str, ...], cache_size: float,
                cache_header: bool) -> dict[str, Any]:
    from mesh.http.edge import EdgePolicy
    from mesh.node.routes import check_header, check_origin, load

    return {
        "balance": balance, "health_path": health_path, "health_interval": health_interval,
        "routes": load(routes_file) if routes_file else (),
        "edge": EdgePolicy(compress, security_headers,
                           tuple(check_header(h) for h in add_headers),
                           tuple(check_origin(o) for o in cors)),
        "cache_size": cache_size, "cache_debug": cache_header,
    }
