"""Gateway figures: latency added by `mesh gateway`, and requests per second through it.

    python benchmarks/gateway.py [--requests 500] [--seconds 5] [--clients 8]

Starts, on 127.0.0.1: a signaling server that pins a gateway, `mesh gateway`,
a small HTTP service (tests/integration/httpservice.py), `mesh share --public
--http`, and a `mesh connect` to the same share. Then, side by side:

- latency: ``--requests`` sequential GETs on one keep-alive connection, each
  directly to the service (the floor), through `mesh connect` (peer to peer),
  and through the gateway; p50/p99 and the latency each adds over direct;
- throughput: ``--clients`` keep-alive clients for ``--seconds`` through the
  gateway and through `mesh connect`: requests per second;
- pools: one public name served by 1, 2 then 3 `mesh share` processes (each
  with its own tests/integration/poolservice.py, admitted with `mesh name
  add`): req/s through the gateway for each size, and the ratio to 1 member;
- the cache (`--cache-size`): GET of a `max-age=60` answer, a hit after the
  first, against the same service's uncached answer through the same gateway:
  req/s and p50 each, and the ratios.

The gateway's per-client and per-share rate limits are raised for the run
(they are what a real deployment tunes). JSON and a markdown table go to
``benchmarks/results/gateway.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
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
                             "--max-streams-per-share", "1024", "--max-requests-per-client",
                             "1024", "--cache-size", "16", "--json", home="gw")
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
        pools = pool_figures(mesh, url, gw_port, gateway.p.pid, tmp, args)
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
    results["pool"] = pools
    table += "\n\n" + pool_table(pools, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gateway.md").write_text(table + "\n")
    print(table)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pool_figures(mesh: Mesh, url: str, gw_port: int, gw_pid: int, tmp: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    """req/s for a pool of 1, 2 and 3 members, and the cache-hit path against a miss."""
    host = "pool.mesh.test"
    services = []
    figures: dict[str, Any] = {"members": {}, "cpu": {}}
    shares: list[int] = []
    try:
        owner_id = ""
        for i in range(3):
            home = f"member{i}"
            svc = subprocess.Popen([sys.executable, str(ROOT / "tests/integration/poolservice.py"),
                                    home, str(tmp / f"{home}.jsonl")],
                                   stdout=subprocess.PIPE, text=True)
            services.append(svc)
            assert svc.stdout is not None
            port = int(svc.stdout.readline())
            node = json.loads(mesh.run("id", "--json", home=home).stdout)["node_id"]
            if i == 0:
                owner_id = node
            else:
                added = mesh.run("name", "add", "pool", node, "--signal", url, home="member0")
                assert added.returncode == 0, added.stderr
            share = mesh.start("share", str(port), "--signal", url, "--name", "pool",
                               "--public", "--no-inspect", "--json", home=home)
            share.event("public")
            shares.append(share.p.pid)
            # the gateway re-reads the pool as soon as a listed member has no tunnel
            deadline = time.monotonic() + 30
            while len(served_by(mesh, gw_port, host)) < i + 1:
                assert time.monotonic() < deadline, "the new member got no request"
            before = [cpu_seconds(pid) for pid in (gw_pid, *shares)]
            t0 = time.monotonic()
            figures["members"][str(i + 1)] = round(
                http_rps(gw_port, args.clients, args.seconds, host, "/who"), 1)
            spent = time.monotonic() - t0
            used = [(cpu_seconds(pid) - b) / spent for pid, b in zip((gw_pid, *shares), before,
                                                                     strict=True)]
            figures["cpu"][str(i + 1)] = {"gateway": round(used[0], 2),
                                          "busiest_member": round(max(used[1:]), 2)}
        figures["owner"] = owner_id
        one = figures["members"]["1"]
        figures["members_vs_1"] = {k: round(v / one, 3) for k, v in figures["members"].items()}
        miss = http_latency(gw_port, args.requests, host, "/who")
        hit = http_latency(gw_port, args.requests, host, "/cached")
        figures["cache"] = {
            "miss_p50_ms": round(statistics.median(miss), 3),
            "hit_p50_ms": round(statistics.median(hit), 3),
            "miss_rps": figures["members"]["3"],
            "hit_rps": round(http_rps(gw_port, args.clients, args.seconds, host, "/cached"), 1),
        }
        c = figures["cache"]
        c["hit_rps_vs_miss"] = round(c["hit_rps"] / c["miss_rps"], 3)
        c["hit_p50_vs_miss"] = round(c["hit_p50_ms"] / c["miss_p50_ms"], 3)
    finally:
        for svc in services:
            svc.terminate()
            svc.wait(5)
    return figures


def served_by(mesh: Mesh, gw_port: int, host: str) -> set[str]:
    import http.client
    seen = set()
    for _ in range(12):
        conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=30)
        conn.request("GET", "/who", headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 200:
            seen.add(body.decode())
        conn.close()
    return seen


def pool_table(pools: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [f"| {n} | {rps:.0f} | {pools['members_vs_1'][n]:.2f} | "
            f"{pools['cpu'][n]['gateway']:.2f} | {pools['cpu'][n]['busiest_member']:.2f} |"
            for n, rps in pools["members"].items()]
    c = pools["cache"]
    return "\n".join([
        f"One public name served by a pool: GET /who, {args.clients} clients for "
        f"{args.seconds:g} s (every process on this machine's cores)", "",
        "| members | req/s | vs 1 member | gateway CPU (cores) | busiest member CPU |",
        "|---|---|---|---|---|", *rows, "",
        f"this machine has {os.cpu_count()} cores: a pool scales while the gateway has CPU "
        "to spare", "",
        "The gateway's cache: a max-age=60 answer (hits) against an uncached one (3 members)",
        "", "| path | p50 ms | req/s |", "|---|---|---|",
        f"| miss (forwarded) | {c['miss_p50_ms']:.2f} | {c['miss_rps']:.0f} |",
        f"| hit (gateway) | {c['hit_p50_ms']:.2f} | {c['hit_rps']:.0f} |", "",
        f"hits: {c['hit_rps_vs_miss']:.2f}x the req/s, {c['hit_p50_vs_miss']:.2f}x the p50 "
        "of a forwarded request"])


if __name__ == "__main__":
    main()
