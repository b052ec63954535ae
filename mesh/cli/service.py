"""``mesh service install|uninstall|status``: run mesh under systemd (mesh/node/service.py)."""

from __future__ import annotations

import json

import click

from .common import configured


@click.command("service", context_settings={"ignore_unknown_options": True})
@click.argument("action", type=click.Choice(["install", "uninstall", "status", "show"]))
@click.argument("command", type=click.Choice(["up", "signal", "gateway", "serve"]),
                default="up")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--user", is_flag=True, help="A user unit (~/.config/systemd/user), not a "
                                           "system one.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def service_cmd(action: str, command: str, args: tuple[str, ...], user: bool,
                as_json: bool) -> None:
    """Install, remove or inspect a systemd unit running `mesh COMMAND ARGS...`
    (show: print the unit without installing it)."""
    from mesh.node import service

    svc = configured(as_json, lambda: service.describe(command, args, user))
    if action == "show":
        click.echo(service.unit(svc), nl=False)
        return
    if action == "status":
        result: dict[str, object] = service.state(svc)
    else:
        done = configured(as_json, lambda: (service.install if action == "install"
                                            else service.uninstall)(svc))
        result = {"unit": svc.name, "path": str(svc.path), "done": done}
    if as_json:
        click.echo(json.dumps({"event": "service", **result}))
    else:
        click.echo(result.get("done") or ", ".join(f"{k} {v}" for k, v in result.items()))
