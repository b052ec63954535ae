"""Load generator for the signaling tier: N simulated nodes through 1 or 2 instances.

    python benchmarks/load.py --nodes 10000 --instances 1
    python benchmarks/load.py --nodes 2000 --instances 2 --rate 2500 --seconds 10

Starts real `mesh signal` processes (and, for 2 instances, a real redis-server
on a free port), registers N nodes over WebSocket (each signs the server's
challenge with its own key), then has nodes send envelopes to nodes on the
*other* instance at an offered rate. Reports registrations per second,
envelopes routed per second, p50/p99 routing latency (send -> deliver, one
clock), and each instance's RSS per 1,000 registered nodes. JSON goes to
``benchmarks/results/load-<instances>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh.proto import frames as p  # noqa: E402
from mesh.proto.identity import Identity  # noqa: E402
from tests.conftest import Mesh, free_port, wait_port  # noqa: E402


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Node:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.ident = Identity.generate()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.latencies: list[float] = []
        self.received = 0
        self.errors: dict[str, int] = {}

    async def register(self) -> None:
        ws = await self.http.ws_connect(self.url, max_msg_size=0)
        hello = p.parse_server_frame((await ws.receive()).data)
        assert isinstance(hello, p.Hello)
        sig = self.ident.sign(p.register_message(hello.nonce, self.ident.node_id))
        await ws.send_str(p.encode(p.Register(self.ident.node_id, sig)))
        reply = p.parse_server_frame((await ws.receive()).data)
        assert isinstance(reply, p.Registered), reply
        self.ws = ws

    async def pump(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                return
            frame = p.parse_server_frame(msg.data)
            if isinstance(frame, p.Deliver):
                (sent,) = struct.unpack_from("!d", frame.payload)
                self.latencies.append(time.perf_counter() - sent)
                self.received += 1
            elif isinstance(frame, p.Error):
                self.errors[frame.code] = self.errors.get(frame.code, 0) + 1


async def run(args: argparse.Namespace, urls: list[str], pids: list[int]) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        nodes = [Node(http, urls[i % len(urls)]) for i in range(args.nodes)]
        sem = asyncio.Semaphore(200)

        async def reg(node: Node) -> None:
            async with sem:
                await node.register()

        t0 = time.perf_counter()
        await asyncio.gather(*(reg(n) for n in nodes))
        reg_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)
        rss = [rss_mb(pid) for pid in pids]
        # the generator's own full GC pauses would be charged to the server
        gc.collect()
        gc.freeze()
        pumps = [asyncio.create_task(n.pump()) for n in nodes]
        cpu0 = [cpu_s(pid) for pid in [os.getpid(), *pids]]
        # senders and receivers on different instances when there are two
        pad = os.urandom(args.payload)
        total = int(args.rate * args.seconds)
        interval = 1.0 / args.rate
        sent = 0
        start = time.perf_counter()
        while sent < total:
            target_time = start + sent * interval
            delay = target_time - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            src = nodes[(2 * sent) % len(nodes)]
            dst = nodes[(2 * sent + 1) % len(nodes)]
            payload = struct.pack("!d", time.perf_counter()) + pad
            assert src.ws is not None
            await src.ws.send_str(p.encode(p.Send(dst.ident.node_id, payload, sent)))
            sent += 1
        send_s = time.perf_counter() - start
        deadline = time.perf_counter() + 10
        while sum(n.received for n in nodes) < total and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        done_s = time.perf_counter() - start
        cpu = [round(cpu_s(pid) - c, 2) for pid, c in zip([os.getpid(), *pids], cpu0,
                                                           strict=True)]
        received = sum(n.received for n in nodes)
        lat = sorted(x * 1000 for n in nodes for x in n.latencies)
        errors: dict[str, int] = {}
        for n in nodes:
            for code, count in n.errors.items():
                errors[code] = errors.get(code, 0) + count
        for task in pumps:
            task.cancel()
        for n in nodes:
            if n.ws is not None:
                await n.ws.close()
    return {
        "instances": len(urls), "nodes": args.nodes,
        "registrations_per_s": round(args.nodes / reg_s, 1),
        "rss_mb": [round(r, 1) for r in rss],
        "rss_mb_per_1000_nodes": [round(r / (args.nodes / len(urls)) * 1000, 2) for r in rss],
        "offered_envelopes_per_s": args.rate,
        "envelopes_sent": total, "envelopes_delivered": received,
        "routed_per_s": round(received / done_s, 1),
        "send_phase_s": round(send_s, 2),
        "latency_ms_p50": round(statistics.median(lat), 2) if lat else None,
        "latency_ms_p99": round(lat[int(len(lat) * 0.99) - 1], 2) if lat else None,
        "cross_instance": len(urls) > 1,
        "errors": errors,
        "cpu_s": {"generator": cpu[0], "instances": cpu[1:]},
        "wall_s": round(done_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--instances", type=int, choices=(1, 2), default=2)
    ap.add_argument("--rate", type=float, default=2500.0, help="offered envelopes per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--payload", type=int, default=1000, help="bytes per envelope")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="mesh-load-"))
    mesh = Mesh(tmp)
    redis_proc = None
    try:
        extra: list[str] = ["--no-turn", "--rate", "100000", "--max-conns-per-ip", "1000000"]
        if args.instances == 2:
            server = shutil.which("redis-server")
            if server is None:
                sys.exit("redis-server is needed for 2 instances (apt-get install redis-server)")
            port = free_port()
            redis_proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1",
                                           "--save", "", "--appendonly", "no"],
                                          stdout=subprocess.DEVNULL)
            wait_port(port)
            extra += ["--redis", f"redis://127.0.0.1:{port}/0"]
        procs = [mesh.signal(*extra) for _ in range(args.instances)]
        result = asyncio.run(run(args, [u for _, u in procs], [pr.p.pid for pr, _ in procs]))
    finally:
        mesh.close()
        if redis_proc is not None:
            redis_proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"load-{args.instances}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
