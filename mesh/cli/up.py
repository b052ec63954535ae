"""``mesh up``: every tunnel of a mesh.toml in one process (mesh/node/up.py)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import click

from .common import Output, configured, forever, json_option, run_until_stopped


@click.command("up")
@click.argument("file", required=False)
@click.option("--check", is_flag=True, help="Check the file and exit (0: it is good).")
@json_option
def up_cmd(file: str | None, check: bool, as_json: bool) -> None:
    """Run the tunnels of FILE (default: ./mesh.toml, then the config dir's); SIGHUP
    reloads it, touching only the entries that changed."""
    from mesh.node import events
    from mesh.node.configfile import find, load

    out = Output(as_json)
    plan = configured(as_json, lambda: load(find(file)))
    if check:
        if as_json:
            out(events.UpReady(str(plan.path), list(plan.entries)))
        else:
            click.echo(f"ok: {plan.describe()}")
        return

    async def run() -> None:
        from mesh.node.up import Up

        up = Up(plan.path, on_event=out)
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[Any]] = set()

        def reload() -> None:
            task = loop.create_task(up.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        async with up:
            loop.add_signal_handler(signal.SIGHUP, reload)
            await forever()

    run_until_stopped(out, run)
