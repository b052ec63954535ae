"""Connect time behind a router whose port mapping is broken, against one without any.

    python benchmarks/run.py --portmap [--repeat 7]
    python benchmarks/portmap.py [--repeat 7]

Needs root (the NAT lab, tests/natlab/lab.py); without it every case is reported
skipped with the reason. The sharer is a public host (``none``); the connector sits
behind a symmetric NAT whose router is, per case:

- ``symmetric``: no port-mapping service at all (the baseline);
- ``symmetric-deadupnp``: garbage on PCP/NAT-PMP and an IGD announced over SSDP whose
  description never comes (tests/natlab/deadrouter.py);
- ``symmetric-garbageupnp``: the same, the description garbage;
- ``symmetric-deadupnp --no-portmap``: the dead router with port mapping off;
- ``symmetric-portmap``: miniupnpd answering (needs miniupnpd and nft).

Each repetition starts a fresh ``mesh connect`` (its router probe starts with it,
the worst case for "delays nothing") and reads its ``connected`` event:
``connect_ms`` (the connection's own clock) and the wall time from starting the
process to that event. Medians, and ratios against the baseline measured in this
run. Writes portmap.json and portmap.md to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.natlab.lab import SERVER_IP, Lab, available, portmap_available  # noqa: E402

CASES: list[tuple[str, str, tuple[str, ...]]] = [
    ("symmetric", "symmetric", ()),
    ("symmetric-deadupnp", "symmetric-deadupnp", ()),
    ("symmetric-garbageupnp", "symmetric-garbageupnp", ()),
    ("symmetric-deadupnp --no-portmap", "symmetric-deadupnp", ("--no-portmap",)),
    ("symmetric-portmap", "symmetric-portmap", ()),
]


class Mesh:
    """One ``mesh ... --json`` process in a namespace; ``event(name)`` waits for one."""

    def __init__(self, lab: Lab, ns: str, home: Path, *args: str) -> None:
        env = dict(os.environ, MESH_HOME=str(home), PYTHONPATH=str(ROOT), MESH_LAN="off",
                   MESH_PORTMAP="on", PYTHONUNBUFFERED="1")
        env.pop("MESH_ICE_ADDRESSES", None)
        self.started = time.monotonic()
        self.p = subprocess.Popen(lab.exec_prefix(ns) + [sys.executable, "-m", "mesh", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line)

    def event(self, name: str, timeout: float = 30) -> tuple[dict[str, Any], float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            with_time = time.monotonic()
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                return event, (with_time - self.started) * 1000
        raise RuntimeError(f"no {name} event in {timeout} s")

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()


def run_case(router: str, extra: tuple[str, ...], repeat: int, tmp: Path) -> dict[str, Any]:
    lab = Lab()
    procs: list[Mesh] = []
    echo: subprocess.Popen[str] | None = None
    try:
        lab.build("none", router)
        a, b = lab.sides["a"], lab.sides["b"]
        server = Mesh(lab, lab.wan, tmp / "srv", "signal", "--host", SERVER_IP, "--public-ip",
                      SERVER_IP, "--relay-allow", "198.18.0.0/15", "--json")
        procs.append(server)
        url = server.event("ready")[0]["url"]
        echo = subprocess.Popen(lab.exec_prefix(a.host_ns) + [
            sys.executable, str(ROOT / "tests" / "natlab" / "echo.py"), "7000"],
            stdout=subprocess.PIPE, text=True)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        share = Mesh(lab, a.host_ns, tmp / "a", "share", "7000", "--signal", url, "--json")
        procs.append(share)
        ticket = share.event("ready")[0]["ticket"]
        connect_ms, wall_ms, paths, mapped = [], [], set(), set()
        for i in range(repeat):
            conn = Mesh(lab, b.host_ns, tmp / f"b{i}", "connect", ticket, "--port", "9000",
                        "--json", *extra)
            try:
                event, wall = conn.event("connected", timeout=40)
            finally:
                conn.stop()
            connect_ms.append(float(event["connect_ms"]))
            wall_ms.append(wall)
            paths.add(event["path"])
            mapped.add(event.get("portmap") is not None)
        return {"connect_ms": connect_ms, "wall_ms": wall_ms,
                "connect_ms_median": round(statistics.median(connect_ms), 1),
                "wall_ms_median": round(statistics.median(wall_ms), 1),
                "path": ",".join(sorted(paths)), "mapped": any(mapped)}
    finally:
        for proc in procs:
            proc.stop()
        if echo is not None:
            echo.terminate()
            echo.wait(5)
        lab.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"repeat": args.repeat, "cases": {}}
    reason = available()
    with tempfile.TemporaryDirectory() as tmp:
        for name, router, extra in CASES:
            why = reason or (portmap_available() if router == "symmetric-portmap" else None)
            if why:
                results["cases"][name] = {"skipped": why}
                continue
            results["cases"][name] = run_case(router, extra, args.repeat, Path(tmp) / name)
            print(name, results["cases"][name].get("connect_ms_median"), flush=True)
    base = results["cases"].get("symmetric", {})
    for case in results["cases"].values():
        for key in ("connect_ms_median", "wall_ms_median"):
            if key in case and base.get(key):
                case[key.replace("_median", "_x_baseline")] = round(case[key] / base[key], 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "portmap.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"Connector behind each router, sharer public; {args.repeat} fresh `mesh connect` "
             "each (median).", "",
             "| router | path | mapped | connect ms | x baseline | start-to-connected ms "
             "| x baseline |", "|---|---|---|---|---|---|---|"]
    for name, r in results["cases"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {name} | {r['path']} | {'yes' if r['mapped'] else 'no'} | "
                     f"{r['connect_ms_median']} | {r.get('connect_ms_x_baseline', '-')} | "
                     f"{r['wall_ms_median']} | {r.get('wall_ms_x_baseline', '-')} |")
    (out / "portmap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
