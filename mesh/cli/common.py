"""What every ``mesh`` command shares: output, the run loop, exit codes, common options.

Output contract: with ``--json`` every line on stdout is one JSON object with an
``event`` field (``ready``, ``listening``, ``connected``, ``disconnected``,
``rejected``, ``signal``, ``warning``, ``error``, ...). Without it, humans get
short lines (the ticket on stdout, the rest on stderr). Every ``MeshError``
becomes one line and the exit code of its class (the table is in
mesh/errors.py and the README); Ctrl-C exits 130, a bug 70.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from mesh.errors import INTERNAL, INTERRUPTED, MeshError
from mesh.node import events

F = TypeVar("F", bound=Callable[..., Any])
FORCE_AFTER = 10.0
"""Seconds a stopping command gets to clean up before it is ended."""


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, event: events.Event) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(event.to_json(), default=str) + "\n")
            sys.stdout.flush()
        else:
            inner = event.inner if isinstance(event, events.Tagged) else event
            stream = (sys.stdout if isinstance(inner, events.Ready | events.NetcheckEvent
                                                      | events.Members)
                      else sys.stderr)
            stream.write(event.human() + "\n")
            stream.flush()


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if verbose < 2:
        for noisy in ("aioice", "aiortc", "aiohttp", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL if noisy == "asyncio"
                                              else logging.ERROR)


def run_until_stopped(out: Output, main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` until it returns, SIGTERM (exit 0) or SIGINT (exit 130).

    A signal lets ``main`` clean up (close peers, tell sessions the server is going
    away); a second signal, or ``FORCE_AFTER`` seconds, ends the process at once."""
    stopped_by: list[int] = []

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def force() -> None:
            sys.stdout.flush()
            os._exit(INTERRUPTED if stopped_by[0] == signal.SIGINT else 0)

        def stop(signum: int) -> None:
            stopped_by.append(signum)
            if len(stopped_by) > 1:
                force()
            loop.call_later(FORCE_AFTER, force)
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


def configured(as_json: bool, build: Callable[[], Any]) -> Any:
    """``build()``, or one error line and the exit code of its ``MeshError``."""
    try:
        return build()
    except MeshError as exc:
        Output(as_json)(events.ErrorEvent(str(exc)))
        sys.exit(exc.exit_code)


async def forever() -> None:
    await asyncio.Event().wait()


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


def portmap_option(f: F) -> F:
    return click.option("--no-portmap", is_flag=True,
                        help="Never ask the router for a port mapping (PCP, NAT-PMP; also "
                             "MESH_PORTMAP=off).")(f)


def ice_settings(no_portmap: bool) -> Any:
    """The transport settings from the environment, with ``--no-portmap`` applied."""
    from dataclasses import replace

    from mesh.node.config import ice_from_env

    ice = ice_from_env()
    return replace(ice, portmap=False) if no_portmap else ice


def resume_option(f: F) -> F:
    return click.option("--resume-timeout", default=60.0, show_default=True,
                        type=click.FloatRange(0), metavar="S",
                        help="Seconds an open connection waits for a lost peer connection "
                             "to be rebuilt, and carries on after (0: it ends with it).")(f)


def udp_options(*, max_flows: int, per: str) -> Callable[[F], F]:
    """``--udp-idle`` and ``--max-flows`` (a UDP share's flows)."""
    def apply(f: F) -> F:
        f = click.option("--max-flows", default=max_flows, show_default=True,
                         type=click.IntRange(1),
                         help=f"UDP flows (client addresses) {per}; more are refused.")(f)
        return click.option("--udp-idle", default=60.0, show_default=True,
                            type=click.FloatRange(min=0, min_open=True), metavar="S",
                            help="End a UDP flow after this many seconds without a "
                                 "datagram.")(f)
    return apply


def raise_fd_limit() -> None:
    """A server holds one socket per client: use the whole hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


