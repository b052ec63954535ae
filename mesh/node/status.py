"""Local control sockets: how `mesh status` sees every running share and connect.

Each running `mesh share`/`mesh connect` listens on a Unix socket
``<runtime dir>/<pid>.sock`` (mode 0600, in a 0700 directory). The runtime dir
is ``$MESH_HOME/run`` when ``MESH_HOME`` is set, else ``$XDG_RUNTIME_DIR/mesh``,
else the ``run`` folder of the config dir (environ.py). Protocol: the client sends one line
``status\\n``; the server answers one line of JSON (the snapshot) and closes.
Sockets whose process is gone are removed by the next ``query_all``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh.errors import IdentityError

from . import environ
from .home import check_private, private_dir

log = logging.getLogger("mesh.status")

Snapshot = Callable[[], dict[str, Any]]


def runtime_dir() -> Path:
    return environ.runtime()


def process_counts() -> dict[str, int]:
    """Open file descriptors and asyncio tasks of this process (leak checks)."""
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        tasks = -1
    return {"fds": fds, "tasks": tasks}


class ControlServer:
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None
        self.path = runtime_dir() / f"{os.getpid()}.sock"

    async def start(self) -> None:
        directory = self.path.parent
        try:
            private_dir(directory)
        except IdentityError as exc:  # someone else's directory: no socket in it
            log.warning("no status socket: %s", exc)
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._server = await asyncio.start_unix_server(self._handle, str(self.path))
            os.chmod(self.path, 0o600)
        except OSError:
            self._server = None  # status is a convenience: never fail the tunnel for it

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            if line.strip() == b"status":
                data = {"pid": os.getpid(), **self._snapshot(), **process_counts()}
                writer.write(json.dumps(data, default=str).encode() + b"\n")
                await writer.drain()
        except (TimeoutError, OSError, ValueError):
            pass
        finally:
            writer.close()


async def query_all(timeout: float = 2.0) -> list[dict[str, Any]]:
    directory = runtime_dir()
    check_private(directory)  # sockets planted in someone else's directory are not ours
    results: list[dict[str, Any]] = []
    for sock in sorted(directory.glob("*.sock")) if directory.is_dir() else []:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(sock)),
                                                    timeout)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):
                sock.unlink()  # the process is gone
            continue
        except (TimeoutError, OSError):
            continue
        try:
            writer.write(b"status\n")
            line = await asyncio.wait_for(reader.readline(), timeout)
            obj = json.loads(line)
            if isinstance(obj, dict):
                results.append(obj)
        except (TimeoutError, OSError, ValueError):
            pass
        finally:
            writer.close()
    return results


def describe(procs: list[dict[str, Any]]) -> list[str]:
    """`mesh status` for humans: a line per process, one more per share peer."""
    if not procs:
        return ["no mesh share or connect is running"]
    lines = []
    for proc in procs:
        up = f"up {proc.get('uptime_s', 0):.0f}s"
        if proc.get("kind") == "up":
            lines.append(f"mesh up {proc.get('file')}  pid {proc.get('pid')}  {up}  "
                         f"tunnels {len(proc.get('tunnels', []))}")
            for tunnel in proc.get("tunnels", []):
                lines += [f"  [{tunnel.get('tunnel')}] {line}"
                          for line in describe([{**tunnel, "pid": proc.get("pid")}])]
            continue
        if proc.get("kind") == "share":
            lines.append(f"share {proc.get('name')!r} -> {proc.get('target')}  "
                         f"pid {proc.get('pid')}  {up}  peers {len(proc.get('peers', []))}")
            for peer in proc.get("peers", []):
                lines.append(f"  {str(peer.get('peer'))[:8]}  {peer.get('path') or '-':6}  "
                             f"rtt {peer.get('rtt_ms')} ms  streams {peer.get('streams_open')}  "
                             f"in {peer.get('bytes_in')} B  out {peer.get('bytes_out')} B  "
                             f"up {peer.get('uptime_s', 0):.0f}s")
                lines += _udp_line(peer.get("udp"), "    ")
        else:
            lines.append(f"connect {proc.get('name')!r} on 127.0.0.1:{proc.get('port')}  "
                         f"pid {proc.get('pid')}  {up}  {proc.get('path') or 'disconnected'}  "
                         f"rtt {proc.get('rtt_ms')} ms  streams {proc.get('streams_open')}  "
                         f"in {proc.get('bytes_in')} B  out {proc.get('bytes_out')} B")
            lines += _udp_line(proc.get("udp"), "  ")
    return lines


def _udp_line(udp: Any, indent: str) -> list[str]:
    """UDP flows, datagrams and drops each way (``in``: from the peer)."""
    if not isinstance(udp, dict):
        return []
    return [f"{indent}udp flows {udp.get('flows_open')} open, {udp.get('flows_total')} total, "
            f"{udp.get('flows_refused')} refused  datagrams in {udp.get('datagrams_in')} "
            f"(dropped {udp.get('drops_in')})  out {udp.get('datagrams_out')} "
            f"(dropped {udp.get('drops_out')})"]
