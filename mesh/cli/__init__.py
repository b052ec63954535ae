"""The ``mesh`` command line: builds configuration, calls the Python API, prints events.

The output contract and exit codes are mesh/cli/common.py's; the commands live in
serve (signal, gateway), peer (share, connect, release), up (mesh.toml) and tools
(netcheck, ls, status, id). Every check of a value lives in the configuration classes
(mesh/node/config.py, mesh/http/config.py, signaling/): commands only map flags
to fields.
"""

from __future__ import annotations

import contextlib

import click

from .common import setup_logging
from .names import name_cmd
from .peer import connect_cmd, release_cmd, share_cmd
from .serve import gateway_cmd, serve_cmd, signal_cmd
from .service import service_cmd
from .tools import id_cmd, ls_cmd, netcheck_cmd, status_cmd
from .up import up_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
@click.version_option(package_name="mesh-tunnel", prog_name="mesh")
def main(verbose: int) -> None:
    """mesh: share a local TCP service with another machine, peer to peer."""
    setup_logging(verbose)



for command in (signal_cmd, share_cmd, gateway_cmd, release_cmd, connect_cmd, netcheck_cmd,
                ls_cmd, status_cmd, id_cmd, up_cmd, serve_cmd, service_cmd, name_cmd):
    main.add_command(command)


def run_main() -> None:  # pragma: no cover - console entry alias
    with contextlib.suppress(BrokenPipeError):
        main()
