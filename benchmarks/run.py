"""mesh benchmarks: one command, side by side on the same machine, JSON and a table.

    python benchmarks/run.py [--size-mb 50] [--repeat 3] [--streams 1000] [--out DIR]
    python benchmarks/run.py --veth [...]   # the 1500-MTU veth path: benchmarks/veth.py
    python benchmarks/run.py --portmap [...]  # connect time behind broken routers
    python benchmarks/run.py --udp [...]    # UDP datagrams and round trips: benchmarks/udp.py

Paths, all on 127.0.0.1, each forwarding to the same local services:

- ``direct``: no tunnel (the ceiling);
- ``mesh``: `mesh connect` -> `mesh share` on the direct path;
- ``mesh-relay``: the same through the embedded TURN relay (``--relay-only``);
  its per-allocation quota (``--relay-bandwidth``) raised out of the way;
- ``mesh-1189``, ``mesh-relay-1189``: the same two with path MTU discovery off
  (``MESH_PLPMTUD=off``): 1189-byte SCTP packets, what aiortc sends and what a
  path through the internet mostly carries. On loopback PLPMTUD finds 16 KiB
  packets; the ``SCTP packet B`` column says which size a path used;
- ``aiortc``: a stock aiortc data channel per connection, no tuning
  (benchmarks/floor.py; the floor);
- ``ssh -R``: OpenSSH remote forwarding through a throwaway sshd on loopback
  (needs sshd and root; skipped with the reason otherwise).

Measures, per path: bulk download MB/s with 1 stream and with 8 concurrent
streams; small HTTP GETs (p50/p99 latency on one keep-alive connection, the
latency added over direct, and requests/s from 8 clients); connect time
(``offer -> channel open`` where the path has one, and command start -> first
byte); 1000 concurrent streams each echoing 1 KiB byte-exact and held open
(RSS of the path's processes); and the peak RSS of those processes.
Ratios are against the floor and the ceiling measured in the same run: the
machine is shared and noisy, bare numbers are in the JSON.
"""

from __future__ import annotations

import argparse
import compileall
import concurrent.futures
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import sshd  # noqa: E402
from tests.conftest import EchoServer, Mesh, free_port, wait_port  # noqa: E402


# -- local services ------------------------------------------------------------------
class Source:
    """Sends ``size`` bytes to each connection after it says "go"."""

    def __init__(self, size: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.size = size
        self.block = os.urandom(256 * 1024)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        with conn:
            try:
                want = int(conn.recv(32).decode().split()[1])
                left = want
                while left > 0:
                    n = min(left, len(self.block))
                    conn.sendall(self.block[:n])
                    left -= n
            except (OSError, ValueError, IndexError):
                pass


def download(port: int, size: int, host: str = "127.0.0.1") -> float:
    with socket.create_connection((host, port)) as s:
        t0 = time.perf_counter()
        s.sendall(f"go {size}\n".encode())
        got = 0
        while chunk := s.recv(1 << 20):
            got += len(chunk)
        dt = time.perf_counter() - t0
    if got != size:
        raise RuntimeError(f"received {got} of {size} bytes")
    return dt


def wait_listening(port: int, deadline: float) -> None:
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.01)


def first_byte(port: int, deadline: float) -> None:
    """Wait until a connection through ``port`` yields a byte of the source."""
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.settimeout(5)
                s.sendall(b"go 1\n")
                if s.recv(1):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("no first byte")
        time.sleep(0.01)


# -- paths -------------------------------------------------------------------------
@dataclass
class Opened:
    port: int
    pids: list[int]
    open_ms: float | None = None
    started: float = 0.0
    """perf_counter() when the command was started."""
    stop: Callable[[], None] = lambda: None


@dataclass
class PathKind:
    name: str
    open: Callable[[int], Opened]
    close_all: Callable[[], None] = lambda: None
    skipped: str | None = None
    extra_pids: Callable[[], list[int]] = field(default=lambda: [])
    packet_bytes: Callable[[], int | None] = field(default=lambda: None)
    """The largest SCTP packet the path used (mesh: what PLPMTUD settled on)."""


def mesh_path(mesh: Mesh, relay: bool, base_size: bool = False) -> PathKind:
    # the relay's per-allocation quota (--relay-bandwidth, 16 MiB/s by default) is
    # raised so the benchmark measures the data plane rather than the quota
    _, url = mesh.signal("--relay-allow", "127.0.0.0/8", "--relay-bandwidth", str(10**10))
    env = {"MESH_PLPMTUD": "off"} if base_size else {}
    packets: list[int] = []

    def open_(target: int) -> Opened:
        share = mesh.start("share", str(target), "--signal", url, "--json", "--no-lan", **env)
        ticket = str(share.event("ready")["ticket"])
        t0 = time.perf_counter()
        conn = mesh.start("connect", ticket, "--json", *(["--relay-only"] if relay else []),
                          **env)
        port = int(conn.event("listening")["port"])
        connected = conn.event("connected", timeout=60)
        if relay and connected["path"] != "relay":
            raise RuntimeError("expected the relay path")
        if not base_size:
            packets.append(int(conn.event("path_mtu", timeout=10)["packet"]))
        return Opened(port, [share.p.pid, conn.p.pid], float(connected["connect_ms"]), t0,
                      lambda: (conn.stop(), share.stop()))

    name = "mesh-relay" if relay else "mesh"
    return PathKind(name + ("-1189" if base_size else ""), open_,
                    packet_bytes=lambda: packets[-1] if packets else 1189)


def exchange(listen: subprocess.Popen[str], dial: subprocess.Popen[str]) -> dict[str, Any]:
    """A floor-shaped forwarder pair (floor.py, ndc/forward.mjs): ``listen``'s offer to
    ``dial``, its answer back; then ``listen``'s {"listening": PORT, "open_ms": T}."""
    assert listen.stdout and listen.stdin and dial.stdout and dial.stdin
    dial.stdin.write(listen.stdout.readline())
    dial.stdin.flush()
    listen.stdin.write(dial.stdout.readline())
    listen.stdin.flush()
    return dict(json.loads(listen.stdout.readline()))


def floor_path() -> PathKind:
    procs: list[subprocess.Popen[str]] = []

    def open_(target: int) -> Opened:
        t0 = time.perf_counter()
        listen = subprocess.Popen([sys.executable, str(ROOT / "benchmarks/floor.py"), "listen",
                                   "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        dial = subprocess.Popen([sys.executable, str(ROOT / "benchmarks/floor.py"), "dial",
                                 f"127.0.0.1:{target}"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.extend([listen, dial])
        info = exchange(listen, dial)

        def stop() -> None:
            for p in (listen, dial):
                p.kill()
                p.wait()

        return Opened(int(info["listening"]), [listen.pid, dial.pid], float(info["open_ms"]),
                      t0, stop)

    def close_all() -> None:
        for p in procs:
            if p.poll() is None:
                p.kill()

    return PathKind("aiortc", open_, close_all, packet_bytes=lambda: 1189)


def ssh_path(tmp: Path) -> PathKind:
    if sshd.tools() is None:
        return PathKind("ssh -R", lambda t: Opened(0, []), skipped="OpenSSH is not installed")
    if os.geteuid() != 0:
        return PathKind("ssh -R", lambda t: Opened(0, []), skipped="sshd needs root here")
    d = tmp / "ssh"
    port = free_port()
    sshd.config(d, "127.0.0.1", port, "MaxStartups 100\nMaxSessions 100\n")
    daemon = subprocess.Popen(sshd.daemon(d), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_port(port)
    clients: list[subprocess.Popen[bytes]] = []

    def open_(target: int) -> Opened:
        remote = free_port()
        t0 = time.perf_counter()
        client = subprocess.Popen(
            sshd.client(d, port, "127.0.0.1", "-N", "-T", "-o", "ExitOnForwardFailure=yes",
                        "-R", f"127.0.0.1:{remote}:127.0.0.1:{target}"),
            stdin=subprocess.DEVNULL)
        clients.append(client)

        def stop() -> None:
            client.terminate()
            try:
                client.wait(5)
            except subprocess.TimeoutExpired:  # seen once: ssh sat on SIGTERM
                client.kill()
                client.wait()

        return Opened(remote, [client.pid], None, t0, stop)

    def sshd_pids() -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(daemon.pid)], capture_output=True, text=True)
        kids = [int(x) for x in out.stdout.split()]
        grand = []
        for kid in kids:
            more = subprocess.run(["pgrep", "-P", str(kid)], capture_output=True, text=True)
            grand += [int(x) for x in more.stdout.split()]
        return [daemon.pid, *kids, *grand]

    def close_all() -> None:
        for c in clients:
            if c.poll() is None:
                c.terminate()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(5)

    return PathKind("ssh -R", open_, close_all, extra_pids=sshd_pids)


# -- measurements ------------------------------------------------------------------------
def rss_kb(pid: int, field_name: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def http_latency(port: int, n: int, host: str | None = None, path: str = "/hello"
                 ) -> list[float]:
    """``n`` sequential GET ``path`` on one keep-alive connection (after 20 warm-ups), ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{port}"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        if i >= 20:  # warm-up excluded
            out.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return out


def http_rps(port: int, clients: int = 8, seconds: float = 3.0,
             host: str | None = None, path: str = "/hello") -> float:
    """GET ``path`` answered 200 per second, ``clients`` keep-alive clients at once."""
    stop = time.monotonic() + seconds

    def client(_: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        done = 0
        while time.monotonic() < stop:
            conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{port}"})
            resp = conn.getresponse()
            resp.read()
            done += resp.status == 200
        conn.close()
        return done

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client, range(clients)))
    return total / (time.monotonic() - t0)


def idle_streams(port: int, n: int) -> tuple[int, list[socket.socket]]:
    """Open ``n`` connections, echo 1 KiB on each, keep them open; return how many
    came back byte-exact."""
    socks: list[socket.socket] = []
    ok = 0
    payloads = {}
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        payloads[s.fileno()] = i.to_bytes(4, "big") * 256
        s.sendall(payloads[s.fileno()])
        socks.append(s)
    for s in socks:
        want = payloads[s.fileno()]
        got = b""
        s.settimeout(60)
        while len(got) < len(want):
            chunk = s.recv(len(want) - len(got))
            if not chunk:
                break
            got += chunk
        ok += got == want
    return ok, socks


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(kind: PathKind, services: dict[str, int], args: argparse.Namespace,
            size: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    opened: list[Opened] = []

    def open_(target: int) -> Opened:
        if kind.name == "direct":
            return Opened(target, [], None, time.perf_counter())
        o = kind.open(target)
        opened.append(o)
        wait_listening(o.port, time.monotonic() + 60)
        return o

    try:
        # connect time: a fresh path per repeat, command start -> first byte
        setups, opens = [], []
        for _ in range(args.repeat if kind.name != "direct" else 0):
            o = open_(services["source"])
            first_byte(o.port, time.monotonic() + 60)
            setups.append(time.perf_counter() - o.started)
            if o.open_ms is not None:
                opens.append(o.open_ms)
            o.stop()
            opened.remove(o)
        if setups:
            res["command_to_first_byte_s"] = round(statistics.median(setups), 3)
        if opens:
            res["offer_to_open_ms"] = round(statistics.median(opens), 1)
        bulk = open_(services["source"])
        runs = [download(bulk.port, size) for _ in range(args.repeat)]
        res["bulk_1_mb_s"] = round(size / 1e6 / statistics.median(runs), 2)
        part = size // 8
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: download(bulk.port, part), range(8)))
        res["bulk_8_mb_s"] = round(part * 8 / 1e6 / (time.perf_counter() - t0), 2)
        web = open_(services["http"])
        lat = http_latency(web.port, args.requests)
        res["http_p50_ms"] = round(statistics.median(lat), 3)
        res["http_p99_ms"] = round(pct(lat, 0.99), 3)
        res["http_rps"] = round(http_rps(web.port), 1)
        echo = open_(services["echo"])
        before = sum(rss_kb(p) for p in echo.pids + kind.extra_pids())
        ok, socks = idle_streams(echo.port, args.streams)
        time.sleep(0.5)
        pids = echo.pids + kind.extra_pids()  # the processes carrying these streams
        res["streams_exact"] = f"{ok}/{args.streams}"
        res["streams_rss_mb"] = round(sum(rss_kb(p) for p in pids) / 1024, 1)
        res["streams_rss_added_mb"] = round((sum(rss_kb(p) for p in pids) - before) / 1024, 1)
        for s in socks:
            s.close()
        every = [p for o in opened for p in o.pids] + kind.extra_pids()
        if kind.packet_bytes() is not None:
            res["packet_bytes"] = kind.packet_bytes()
        res["peak_rss_mb"] = round(max([rss_kb(p, "VmHWM") for p in every] or [0]) / 1024, 1)
    finally:
        for o in opened:
            o.stop()
    return res


def main() -> None:
    if "--veth" in sys.argv[1:]:
        import veth  # benchmarks/veth.py: throughput between two namespaces

        veth.main([a for a in sys.argv[1:] if a != "--veth"])
        return
    if "--portmap" in sys.argv[1:]:
        import portmap  # benchmarks/portmap.py: connect time behind broken routers

        portmap.main([a for a in sys.argv[1:] if a != "--portmap"])
        return
    if "--udp" in sys.argv[1:]:
        import udp  # benchmarks/udp.py: datagrams/s and round trips of UDP shares

        udp.main([a for a in sys.argv[1:] if a != "--udp"])
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--paths", default="direct,mesh,mesh-relay,mesh-1189,mesh-relay-1189,"
                    "aiortc,ssh -R")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    # Bytecode as `pip install` of a wheel leaves it: an editable checkout run with
    # PYTHONDONTWRITEBYTECODE=1 (as on CI machines) would otherwise recompile mesh's
    # own modules at every start and count that in "command start -> first byte".
    for package in ("mesh", "signaling"):
        compileall.compile_dir(str(ROOT / package), quiet=1)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    size = args.size_mb * 1024 * 1024
    tmp = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    mesh = Mesh(tmp)
    src, echo = Source(size), EchoServer()
    web = subprocess.Popen([sys.executable, str(ROOT / "tests/integration/httpservice.py"),
                            str(tmp / "http.jsonl")], stdout=subprocess.PIPE, text=True)
    assert web.stdout is not None
    services = {"source": src.port, "echo": echo.port, "http": int(web.stdout.readline())}
    wanted = [p.strip() for p in args.paths.split(",")]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "size_mb": args.size_mb, "repeat": args.repeat, "streams": args.streams,
        "paths": {},
    }
    kinds: list[PathKind] = []
    try:
        makers: dict[str, Callable[[], PathKind]] = {
            "direct": lambda: PathKind("direct", lambda t: Opened(t, [])),
            "mesh": lambda: mesh_path(mesh, relay=False),
            "mesh-relay": lambda: mesh_path(mesh, relay=True),
            "mesh-1189": lambda: mesh_path(mesh, relay=False, base_size=True),
            "mesh-relay-1189": lambda: mesh_path(mesh, relay=True, base_size=True),
            "aiortc": floor_path,
            "ssh -R": lambda: ssh_path(tmp),
        }
        for name in wanted:
            kind = makers[name]()
            kinds.append(kind)
            if kind.skipped:
                results["paths"][name] = {"skipped": kind.skipped}
                print(f"{name}: skipped ({kind.skipped})", flush=True)
                continue
            print(f"{name} ...", flush=True)
            results["paths"][name] = measure(kind, services, args, size)
            print(f"{name}: {results['paths'][name]}", flush=True)
    finally:
        for kind in kinds:
            kind.close_all()
        mesh.close()
        web.terminate()
        echo.close()
        shutil.rmtree(tmp, ignore_errors=True)
    paths = results["paths"]
    floor, ceiling = paths.get("aiortc", {}), paths.get("direct", {})
    direct_p50 = ceiling.get("http_p50_ms")
    for name, r in paths.items():
        if "skipped" in r:
            continue
        if direct_p50 is not None and name != "direct":
            r["http_added_p50_ms"] = round(r["http_p50_ms"] - direct_p50, 3)
        for key in ("bulk_1_mb_s", "bulk_8_mb_s", "http_rps"):
            if floor.get(key):
                r[f"{key}_vs_floor"] = round(r[key] / floor[key], 2)
            if ceiling.get(key):
                r[f"{key}_vs_ceiling"] = round(r[key] / ceiling[key], 4)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    cols = [("bulk 1 MB/s", "bulk_1_mb_s"), ("x floor", "bulk_1_mb_s_vs_floor"),
            ("bulk 8 MB/s", "bulk_8_mb_s"), ("x floor", "bulk_8_mb_s_vs_floor"),
            ("HTTP p50 ms", "http_p50_ms"), ("added p50 ms", "http_added_p50_ms"),
            ("HTTP p99 ms", "http_p99_ms"), ("req/s", "http_rps"),
            ("offer->open ms", "offer_to_open_ms"), ("cmd->1st byte s", "command_to_first_byte_s"),
            (f"{args.streams} streams exact", "streams_exact"),
            ("RSS w/ streams MB", "streams_rss_mb"), ("largest peak RSS MB", "peak_rss_mb"),
            ("SCTP packet B", "packet_bytes")]
    lines = [f"{args.size_mb} MB downloads, median of {args.repeat}; {args.requests} GETs; "
             f"{args.streams} echo streams held open. Floor: stock aiortc; ceiling: direct.",
             "", "| path | " + " | ".join(c for c, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, r in paths.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} |")
            continue
        lines.append(f"| {name} | " + " | ".join(str(r.get(k, "-")) for _, k in cols) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
