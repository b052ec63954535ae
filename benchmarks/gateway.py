"""Gateway figures: latency added by `mesh gateway`, and requests per second through it.

    python benchmarks/gateway.py [--requests 500] [--seconds 5] [--clients 8]

Starts, on 127.0.0.1: a signaling server that pins a gateway, `mesh gateway`,
a small HTTP service (tests/integration/httpservice.py), `mesh share --public
--http`, and a `mesh connect` to the same share. Then, side by side:

- latency: ``--requests`` sequential GETs on one keep-alive connection, each
  directly to the service (the floor), through `mesh connect` (peer to peer),
  and through the gateway; p50/p99 and the latency each adds over direct;
- throughput: ``--clients`` keep-alive clients for ``--seconds`` through the
  gateway and through `mesh connect`: requests per second.

The gateway's per-client and per-share rate limits are raised for the run
(they are what a real deployment tunes). JSON and a markdown table go to
``benchmarks/results/gateway.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import http_latency, http_rps, pct  # noqa: E402
from tests.conftest import Mesh  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mesh-gw-bench-"))
    mesh = Mesh(tmp)
    service = subprocess.Popen([sys.executable, str(ROOT / "tests/integration/httpservice.py"),
                                str(tmp / "service.jsonl")], stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        service_port = int(service.stdout.readline())
        gw_id = json.loads(mesh.run("id", "--json", home="gw").stdout)["node_id"]
        _, url = mesh.signal("--gateway", gw_id)
        gateway = mesh.start("gateway", "--domain", "mesh.test", "--listen", "127.0.0.1:0",
                             "--signal", url, "--rate-per-client", "100000",
                             "--rate-per-share", "100000", "--burst", "100000",
                             "--max-streams-per-share", "1024", "--json", home="gw")
        gw_port = int(gateway.event("ready")["url"].rsplit(":", 1)[1])
        share = mesh.start("share", str(service_port), "--signal", url, "--name", "bench",
                           "--public", "--no-inspect", "--json", home="sharer")
        ticket = share.event("ready")["ticket"]
        share.event("public")
        _, local = mesh.connect(ticket)
        host = "bench.mesh.test"
        ports = {"direct": (service_port, None), "mesh connect": (local, None),
                 "gateway": (gw_port, host)}
        lat = {name: http_latency(port, args.requests, h) for name, (port, h) in ports.items()}
        rps = {name: http_rps(port, args.clients, args.seconds, h)
               for name, (port, h) in ports.items()}
    finally:
        mesh.close()
        service.terminate()
        service.wait(5)
    base = statistics.median(lat["direct"])
    rows = []
    results: dict[str, Any] = {"requests": args.requests, "clients": args.clients,
                               "seconds": args.seconds, "paths": {}}
    for name, values in lat.items():
        entry = {"p50_ms": round(statistics.median(values), 3),
                 "p99_ms": round(pct(values, 0.99), 3),
                 "added_p50_ms": round(statistics.median(values) - base, 3),
                 "rps": round(rps[name], 1), "rps_vs_direct": round(rps[name] / rps["direct"], 3)}
        results["paths"][name] = entry
        rows.append(f"| {name} | {entry['p50_ms']:.2f} | {entry['p99_ms']:.2f} | "
                    f"{entry['added_p50_ms']:.2f} | {entry['rps']:.0f} | "
                    f"{entry['rps_vs_direct']:.2f} |")
    gw, mc = results["paths"]["gateway"], results["paths"]["mesh connect"]
    results["gateway_added_over_mesh_connect_p50_ms"] = round(gw["p50_ms"] - mc["p50_ms"], 3)
    table = "\n".join([
        f"GET /hello, {args.requests} sequential on one keep-alive connection; "
        f"{args.clients} clients for {args.seconds:g} s for req/s",
        "",
        "| path | p50 ms | p99 ms | added p50 ms | req/s | req/s vs direct |",
        "|---|---|---|---|---|---|", *rows, "",
        f"gateway adds {results['gateway_added_over_mesh_connect_p50_ms']:.2f} ms (p50) "
        "over `mesh connect`"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gateway.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
