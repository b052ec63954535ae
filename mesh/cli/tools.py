"""``mesh netcheck``, ``mesh ls``, ``mesh status`` and ``mesh id``: looking around."""

from __future__ import annotations

import asyncio
import json
import time

import click

from mesh.errors import ConfigError
from mesh.node import environ

from .common import Output, configured, json_option, portmap_option, run_until_stopped


# -- mesh netcheck, ls, status, id -------------------------------------------------------------
@click.command("netcheck")
@click.option("--signal", "signal_urls", multiple=True, metavar="URL",
              help="Signaling server to check against (default: $MESH_SIGNAL).")
@portmap_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def netcheck_cmd(signal_urls: tuple[str, ...], no_portmap: bool, as_json: bool) -> None:
    """Report what this network allows: public address, NAT type, UDP, TURN, latency,
    and the router's port mapping (PCP, NAT-PMP, UPnP)."""
    from mesh.node.home import load_or_create
    from mesh.node.netcheck import netcheck

    def build() -> tuple[str, ...]:
        urls = environ.signal_urls(signal_urls)
        if not urls:
            raise ConfigError("no signaling server: pass --signal ws://HOST:PORT/ or set "
                              "MESH_SIGNAL")
        return urls

    out = Output(as_json)
    urls = configured(as_json, build)

    async def run() -> None:
        out(await netcheck(load_or_create(), list(urls),
                           router=not no_portmap and environ.portmap_enabled()))

    run_until_stopped(out, run)


@click.command("ls")
@click.option("--timeout", default=2.0, show_default=True, type=click.FloatRange(0.2, 30),
              help="Seconds to listen for adverts.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per share.")
def ls_cmd(timeout: float, as_json: bool) -> None:
    """List the shares visible on this network (mDNS)."""
    from mesh.node.discovery import browse

    out = Output(as_json)

    async def run() -> None:
        adverts = await browse(timeout)
        now = time.time()
        for ad in adverts:
            row = {"event": "share", "name": ad.name, "node_id": ad.node_id,
                   "address": ", ".join(f"{a}:{ad.port}" for a in ad.addresses),
                   "age_s": round(max(0.0, now - ad.made), 1), "open": ad.open,
                   "proto": ad.protos}
            if as_json:
                click.echo(json.dumps(row))
            else:
                click.echo(f"{ad.name:24} {ad.node_id[:12]}  {row['address']:22} "
                           f"up {row['age_s']:.0f}s{'  open' if ad.open else ''}"
                           f"{'' if ad.protos == 'tcp' else '  ' + ad.protos}")
        if not adverts and not as_json:
            click.echo("no shares visible on this network")

    run_until_stopped(out, run)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per running process.")
def status_cmd(as_json: bool) -> None:
    """Show every running share and connect on this machine."""
    from mesh.node.status import describe, query_all

    procs = asyncio.run(query_all())
    if as_json:
        for proc in procs:
            click.echo(json.dumps({"event": "status", **proc}, default=str))
        return
    click.echo("\n".join(describe(procs)))


@click.command("id")
@json_option
def id_cmd(as_json: bool) -> None:
    """Print this machine's node id (creating the key on first use)."""
    from mesh.node.home import load_or_create

    ident = configured(as_json, load_or_create)
    if as_json:
        click.echo(json.dumps({"event": "id", "node_id": ident.node_id,
                               "home": str(environ.home())}))
    else:
        click.echo(ident.node_id)


