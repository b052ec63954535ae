"""Local control sockets: how `mesh status` sees every running share and connect.

Each running `mesh share`/`mesh connect` listens on a Unix socket
``<runtime dir>/<pid>.sock`` (mode 0600, in a 0700 directory). The runtime dir
is ``$MESH_HOME/run`` when ``MESH_HOME`` is set, else the user runtime dir
(``$XDG_RUNTIME_DIR/mesh``). Protocol: the client sends one line
``status\\n``; the server answers one line of JSON (the snapshot) and closes.
Sockets whose process is gone are removed by the next ``query_all``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs

Snapshot = Callable[[], dict[str, Any]]


def runtime_dir() -> Path:
    home = os.environ.get("MESH_HOME")
    if home:
        return Path(home) / "run"
    return Path(platformdirs.user_runtime_dir("mesh"))


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
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
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
