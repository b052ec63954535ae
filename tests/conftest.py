"""Shared fixtures: real processes on 127.0.0.1, each on a free port, stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# No test asks this machine's real router for a port mapping (only loopback and the
# lab's namespaces are ours to talk to); the NAT lab turns it back on inside them.
os.environ["MESH_PORTMAP"] = "off"

MESH = [shutil.which("mesh") or sys.executable, *([] if shutil.which("mesh") else ["-m", "mesh"])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> bool:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


class Events:
    """Events as ``--json`` prints them, arriving on ``lines`` (JSON text; None: the
    source ended); ``event(name)`` waits for the next one of that name not yet taken."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []

    def context(self) -> str:
        return ""

    def event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        for ev in self.events:
            if ev.get("event") == name and not ev.get("_taken"):
                ev["_taken"] = True
                return ev
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {name!r} event in {timeout} s{self.context()}; "
                                     f"events={self.events}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                time.sleep(0.2)
                raise AssertionError(f"ended before {name!r}{self.context()}; "
                                     f"events={self.events}")
            ev = json.loads(line)
            self.events.append(ev)
            if ev.get("event") == name:
                ev["_taken"] = True
                return ev


class Proc(Events):
    """A running `mesh ...` command whose --json events we read."""

    def __init__(self, args: list[str], env: dict[str, str], cmd: list[str] | None = None) -> None:
        super().__init__()
        self.args = args
        self.p = subprocess.Popen((cmd or MESH) + args, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, text=True, bufsize=1)
        self.stderr: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def context(self) -> str:
        return (f" from {self.args[:1]} (exit {self.p.poll()}); "
                f"stderr={''.join(self.stderr)}")

    def _pump_out(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.stderr.append(line)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.p.wait(timeout)
        # drain remaining events
        while True:
            try:
                line = self.lines.get(timeout=2)
            except queue.Empty:
                break
            if line is None:
                break
            self.events.append(json.loads(line))
        return code

    def peak_rss_kb(self) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def stop_all(procs: list[Proc], sig: int = signal.SIGTERM) -> None:
    """Signal every process at once, then wait for each (they stop in parallel)."""
    for proc in procs:
        if proc.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.p.send_signal(sig)
    for proc in procs:
        proc.stop(sig)


class Mesh:
    """Starts mesh processes with their own MESH_HOME and loopback-only ICE."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.homes = 0

    def env(self, home: str | None = None, **extra: str) -> dict[str, str]:
        if home is None:
            self.homes += 1
            home = f"home{self.homes}"
        env = dict(os.environ)
        # MESH_LAN=off: no mDNS from the host's network namespace (LAN tests run in
        # namespaces of their own, tests/natlab/test_lan.py)
        env.update(MESH_HOME=str(self.tmp / home), MESH_ICE_ADDRESSES="127.0.0.1",
                   PYTHONUNBUFFERED="1", MESH_LAN="off")
        env.pop("MESH_SIGNAL", None)
        env.update(extra)
        return env

    def start(self, *args: str, home: str | None = None, cmd: list[str] | None = None,
              **extra: str) -> Proc:
        proc = Proc(list(args), self.env(home, **extra), cmd)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 60, home: str | None = None,
            **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(MESH + list(args), capture_output=True, text=True,
                              timeout=timeout, env=self.env(home, **extra))

    def signal(self, *extra: str) -> tuple[Proc, str]:
        proc = self.start("signal", "--port", "0", "--stun-port", "0", "--json", *extra)
        return proc, str(proc.event("ready")["url"])

    def share(self, target: int | str, url: str, *extra: str, home: str | None = None
              ) -> tuple[Proc, str]:
        proc = self.start("share", str(target), "--signal", url, "--json", *extra, home=home)
        return proc, str(proc.event("ready")["ticket"])

    def connect(self, ticket: str, *extra: str) -> tuple[Proc, int]:
        proc = self.start("connect", ticket, "--json", *extra)
        port = int(proc.event("listening")["port"])
        proc.event("connected")
        return proc, port

    def close(self) -> None:
        stop_all(self.procs)


@pytest.fixture
def inproc() -> Iterator[Any]:
    """Shares, connects and gateways in this process (tests/harness.py), with a rendezvous
    of their own; for tests where the command line is not the point."""
    from tests.harness import InProc

    lab = InProc()
    yield lab
    lab.close()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    yield m
    m.close()


class ServiceStats:
    def __init__(self) -> None:
        self.connections = 0
        self.bytes = 0
        self.lock = threading.Lock()


class EchoServer:
    """A TCP echo service that counts what reached it."""

    def __init__(self) -> None:
        stats = self.stats = ServiceStats()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with stats.lock:
                    stats.connections += 1
                sock: socket.socket = self.request
                while True:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        return
                    if not data:
                        break
                    with stats.lock:
                        stats.bytes += len(data)
                    sock.sendall(data)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            request_queue_size = 512

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "www"
    root.mkdir()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    yield root, port
    proc.terminate()
    proc.wait(5)


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def require_tool(name: str, package: str) -> str:
    """Path of a system tool; skip without it (fail in CI, where .ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is missing (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
