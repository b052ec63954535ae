"""UDP through mesh against UDP straight to the service, on 127.0.0.1.

    python benchmarks/run.py --udp [--count 100000] [--pings 2000] [--out DIR]

Paths: ``direct`` (to the service, the ceiling), ``mesh`` (`mesh share --udp`
and `mesh connect`, direct path) and ``mesh-relay`` (the same, ``--relay-only``
through the embedded TURN relay). Per path, with 1,200-byte datagrams:

- ``blast``: one sender process sends ``--count`` datagrams as fast as it can;
  a sink process counts what arrives: datagrams/s delivered (first to last
  arrival) and the share lost;
- ``paced``: 20,000 datagrams/s offered for 3 s (the target): the share delivered;
- round trip: ``--pings`` sequential datagrams through an echo service,
  p50/p99 in ms, and the p50 added over direct.

Sender, sink and echo each run in a process of their own (this file's ``serve``
and ``send`` modes), so the measuring never shares a core's GIL with mesh.
Writes udp.json and udp.md to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Mesh  # noqa: E402

SIZE = 1200
PACED_RATE = 20_000


# -- helper processes ----------------------------------------------------------------------
def serve(kind: str) -> None:
    """``sink``: count datagrams, print {"count", "first", "last"} 2 s after the last one
    (or on "report" from stdin via a second socket); ``echo``: send each one back."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1], flush=True)
    if kind == "echo":
        while True:
            data, addr = s.recvfrom(65536)
            s.sendto(data, addr)
    while True:  # one measurement per batch: a batch ends after 2 s of silence
        s.settimeout(None)
        s.recv(65536)
        first = last = time.perf_counter()
        count = 1
        s.settimeout(2.0)
        while True:
            try:
                s.recv(65536)
            except TimeoutError:
                break
            last = time.perf_counter()
            count += 1
        print(json.dumps({"count": count, "seconds": last - first}), flush=True)


def send(port: int, count: int, rate: float) -> None:
    """``count`` datagrams to ``port``, at ``rate`` per second (0: as fast as possible)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"\0" * SIZE
    start = time.perf_counter()
    for i in range(count):
        s.sendto(payload, ("127.0.0.1", port))
        if rate and i % 20 == 0:
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def helper(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                            text=True)


# -- measuring ---------------------------------------------------------------------------
def one_way(sink: subprocess.Popen[str], port: int, count: int, rate: float
            ) -> dict[str, float]:
    sender = helper("send", str(port), str(count), str(rate))
    assert sender.stdout is not None and sink.stdout is not None
    sent = json.loads(sender.stdout.readline())
    sender.wait()
    got = json.loads(sink.stdout.readline())
    return {"delivered": got["count"], "per_s": got["count"] / max(got["seconds"], 1e-9),
            "sent_per_s": count / sent["seconds"]}


def round_trips(port: int, n: int) -> list[float]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    payload = b"\0" * SIZE
    out = []
    for i in range(n + 50):
        t0 = time.perf_counter()
        s.sendto(payload, ("127.0.0.1", port))
        try:
            s.recv(65536)
        except TimeoutError:
            continue
        if i >= 50:  # the first ones warm the path up
            out.append((time.perf_counter() - t0) * 1000)
    s.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tunnel(mesh: Mesh, url: str, port: int, relay: bool) -> int:
    share = mesh.start("share", str(port), "--udp", "--signal", url, "--json", "--no-lan")
    conn = mesh.start("connect", str(share.event("ready")["ticket"]), "--json",
                      *(["--relay-only"] if relay else []))
    local = int(conn.event("listening")["port"])
    if conn.event("connected", timeout=60)["path"] != ("relay" if relay else "direct"):
        raise RuntimeError("the path is not the one asked for")
    return local


def measure(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mesh-udp-bench-"))
    mesh = Mesh(tmp)
    sink, echo = helper("serve", "sink"), helper("serve", "echo")
    assert sink.stdout is not None and echo.stdout is not None
    ports = {"sink": int(sink.stdout.readline()), "echo": int(echo.stdout.readline())}
    paths: dict[str, Any] = {}
    try:
        _, url = mesh.signal("--relay-allow", "127.0.0.0/8", "--relay-bandwidth", str(10**10))
        for name in ("direct", "mesh", "mesh-relay"):
            if name == "direct":
                local = dict(ports)
            else:
                local = {k: tunnel(mesh, url, p, name == "mesh-relay") for k, p in ports.items()}
            blast = one_way(sink, local["sink"], args.count, 0)
            paced = one_way(sink, local["sink"], PACED_RATE * 3, PACED_RATE)
            rtt = round_trips(local["echo"], args.pings)
            paths[name] = {
                "blast_sent_per_s": round(blast["sent_per_s"]),
                "blast_delivered_per_s": round(blast["per_s"]),
                "blast_lost_pct": round(100 * (1 - blast["delivered"] / args.count), 2),
                "paced_20k_delivered_pct": round(100 * paced["delivered"] / (PACED_RATE * 3),
                                                 2),
                "rtt_p50_ms": round(statistics.median(rtt), 3),
                "rtt_p99_ms": round(pct(rtt, 0.99), 3),
                "rtt_answered": f"{len(rtt)}/{args.pings}"}
            print(f"{name}: {paths[name]}", flush=True)
    finally:
        mesh.close()
        sink.kill()
        echo.kill()
    base = paths["direct"]["rtt_p50_ms"]
    for r in paths.values():
        r["rtt_added_p50_ms"] = round(r["rtt_p50_ms"] - base, 3)
        r["delivered_vs_direct"] = round(r["blast_delivered_per_s"]
                                         / paths["direct"]["blast_delivered_per_s"], 3)
    return {"size": SIZE, "count": args.count, "pings": args.pings, "paths": paths}


def main(argv: list[str]) -> None:
    if argv and argv[0] == "serve":
        serve(argv[1])
        return
    if argv and argv[0] == "send":
        send(int(argv[1]), int(argv[2]), float(argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    results = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "udp.json").write_text(json.dumps(results, indent=2) + "\n")
    cols = [("sent/s (blast)", "blast_sent_per_s"), ("delivered/s", "blast_delivered_per_s"),
            ("x direct", "delivered_vs_direct"), ("lost %", "blast_lost_pct"),
            ("20k/s offered: delivered %", "paced_20k_delivered_pct"),
            ("RTT p50 ms", "rtt_p50_ms"), ("added p50 ms", "rtt_added_p50_ms"),
            ("RTT p99 ms", "rtt_p99_ms"), ("answered", "rtt_answered")]
    lines = [f"{SIZE}-byte datagrams on 127.0.0.1: {args.count} sent as fast as one process "
             f"can, {PACED_RATE * 3} paced at {PACED_RATE}/s, {args.pings} round trips.", "",
             "| path | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in results["paths"].items():
        lines.append(f"| {name} | " + " | ".join(str(r.get(k, "-")) for _, k in cols) + " |")
    (out / "udp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
