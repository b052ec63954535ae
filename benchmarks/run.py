"""mesh benchmarks: one command, side by side on the same machine, JSON and a table.

    python benchmarks/run.py [--size-mb 100] [--repeat 3] [--out benchmarks/results]

Measures, through real processes on 127.0.0.1:
- bulk: MB/s of one TCP stream downloading ``--size-mb`` from a local source,
  directly (the ceiling) and through `mesh connect` -> `mesh share` (direct path);
- connect: the tunnel's own setup time (offer sent -> channel open and admitted,
  the ``connect_ms`` of the ``connected`` event) and command start -> first byte.
Ratios are given against the direct ceiling measured in the same run, since the
machine is shared and noisy; bare times are in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Mesh  # noqa: E402  (the same process harness the tests use)


class Source:
    """A TCP service that sends N bytes to each connection, then closes."""

    def __init__(self, size: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
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
                conn.recv(16)
                left = self.size
                while left > 0:
                    n = min(left, len(self.block))
                    conn.sendall(self.block[:n])
                    left -= n
            except OSError:
                pass


def download(port: int, expect: int) -> float:
    """Seconds to receive ``expect`` bytes from ``port``."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        s.sendall(b"go")
        got = 0
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        dt = time.perf_counter() - t0
    if got != expect:
        raise RuntimeError(f"received {got} of {expect} bytes")
    return dt


def first_byte(mesh: Mesh, ticket: str) -> tuple[float, float]:
    """(command start -> first byte, connect_ms) for a fresh `mesh connect`."""
    t0 = time.perf_counter()
    proc = mesh.start("connect", ticket, "--json")
    port = int(proc.event("listening")["port"])
    connected = proc.event("connected")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"go")
        s.recv(1)
        dt = time.perf_counter() - t0
    proc.stop()
    return dt, float(connected["connect_ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    size = args.size_mb * 1024 * 1024
    src = Source(size)
    tmp = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    mesh = Mesh(tmp)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "size_mb": args.size_mb,
    }
    try:
        _, url = mesh.signal()
        _, ticket = mesh.share(src.port, url)
        conn, local = mesh.connect(ticket)
        direct = [download(src.port, size) for _ in range(args.repeat)]
        tunnel = [download(local, size) for _ in range(args.repeat)]
        conn.stop()
        setups = [first_byte(mesh, ticket) for _ in range(args.repeat)]
    finally:
        mesh.close()
        shutil.rmtree(tmp, ignore_errors=True)
    mbps = lambda ts: args.size_mb / statistics.median(ts)  # noqa: E731
    results["bulk_1_stream"] = {
        "direct_mb_s": round(mbps(direct), 1),
        "mesh_direct_path_mb_s": round(mbps(tunnel), 1),
        "mesh_vs_direct": round(mbps(tunnel) / mbps(direct), 4),
        "runs_s": {"direct": direct, "mesh": tunnel},
    }
    results["connect"] = {
        "offer_to_channel_open_ms_p50": round(statistics.median(s[1] for s in setups), 1),
        "command_to_first_byte_s_p50": round(statistics.median(s[0] for s in setups), 3),
        "runs": setups,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = [
        "| measure | value |",
        "|---|---|",
        f"| bulk 1 stream, direct TCP (ceiling) | {results['bulk_1_stream']['direct_mb_s']} MB/s |",
        f"| bulk 1 stream, mesh (direct path) | "
        f"{results['bulk_1_stream']['mesh_direct_path_mb_s']} MB/s |",
        f"| mesh / ceiling | {results['bulk_1_stream']['mesh_vs_direct']:.3f} |",
        f"| connect: offer -> channel open (p50) | "
        f"{results['connect']['offer_to_channel_open_ms_p50']} ms |",
        f"| connect: command start -> first byte (p50) | "
        f"{results['connect']['command_to_first_byte_s_p50']} s |",
    ]
    (out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, default=str)[:2000])


if __name__ == "__main__":
    main()
