"""``mesh name add|remove|show``: the members of a public name's pool."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click

from mesh.errors import ConfigError
from mesh.node import environ, events

from .common import Output, configured, run_until_stopped, signal_option

if TYPE_CHECKING:
    from mesh.node.signal_client import SignalClient


@click.group("name")
def name_cmd() -> None:
    """A public name's pool: the machines that may all serve it (the gateway balances
    requests across the ones online)."""


def run_name_op(name: str, node_id: str | None, signal_urls: tuple[str, ...],
                as_json: bool, act: Callable[[SignalClient], Awaitable[events.Event]]) -> None:
    """Check NAME (and NODE_ID), connect to the signaling server, print what ``act``
    returns: `mesh name ...` and `mesh release`."""
    from mesh.proto.names import check_name, check_node_id

    def build() -> tuple[str, ...]:
        check_name(name, "name")
        if node_id is not None:
            check_node_id(node_id, "NODE_ID")
        urls = environ.signal_urls(signal_urls)
        if not urls:
            raise ConfigError("pass --signal URL (or set MESH_SIGNAL)")
        return urls

    out = Output(as_json)
    urls = configured(as_json, build)

    async def run() -> None:
        from mesh.node.home import load_or_create
        from mesh.node.signal_client import SignalClient

        client = SignalClient(load_or_create(), list(urls), lambda sender, payload: None)
        await client.start()
        try:
            out(await act(client))
        finally:
            await client.close()

    run_until_stopped(out, run)


@name_cmd.command("add")
@click.argument("name")
@click.argument("node_id")
@signal_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def add_cmd(name: str, node_id: str, signal_urls: tuple[str, ...], as_json: bool) -> None:
    """Let NODE_ID (`mesh id` on that machine) serve NAME too: `mesh share PORT --public
    --name NAME` there joins the pool."""
    from mesh.node import members
    run_name_op(name, node_id, signal_urls, as_json,
         lambda client: members.change(client, client.identity, name, add=node_id))


@name_cmd.command("remove")
@click.argument("name")
@click.argument("node_id")
@signal_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def remove_cmd(name: str, node_id: str, signal_urls: tuple[str, ...], as_json: bool) -> None:
    """Take NODE_ID out of NAME's pool (the gateway stops sending it requests)."""
    from mesh.node import members
    run_name_op(name, node_id, signal_urls, as_json,
         lambda client: members.change(client, client.identity, name, remove=node_id))


@name_cmd.command("show")
@click.argument("name")
@signal_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def show_cmd(name: str, signal_urls: tuple[str, ...], as_json: bool) -> None:
    """The owner and members of NAME, and which are online."""
    from mesh.node import members
    run_name_op(name, None, signal_urls, as_json, lambda client: members.show(client, name))
