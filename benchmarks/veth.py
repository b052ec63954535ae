"""Bulk throughput over a 1500-MTU veth between two network namespaces (an Ethernet LAN).

    python benchmarks/run.py --veth [--size-mb 100] [--repeat 3] [--baseline COMMIT]
    python benchmarks/veth.py [the same options] [--paths mesh,aiortc,...] [--profile]

Needs root (network namespaces); without it every path is reported skipped
with the reason. Namespace ``a`` (198.18.0.1) holds the service, the
signaling server with its TURN relay, and the sharing end of each path;
``b`` (198.18.0.2) the connecting end and the client that downloads. One veth
pair joins them; nothing leaves the two namespaces. Paths, one at a time in
one run:

- ``tcp``: the client in b straight to the service in a (the ceiling);
- ``mesh``: ``mesh share`` in a, ``mesh connect`` in b; path MTU discovery
  settles on 1400-byte SCTP packets on this link;
- ``mesh-relay``: the same with ``--relay-only``, through the TURN relay in a;
- ``mesh-no-offload``, ``mesh-relay-no-offload`` (on request): the same two
  with ``MESH_UDP_OFFLOAD=off``, one system call per datagram;
- ``mesh@COMMIT``, ``mesh-relay@COMMIT`` (``--baseline COMMIT``): the same
  two from another commit of this repository (``git archive``), run from its
  own tree, so "before" is measured in the same run as "after";
- ``aiortc``: stock aiortc (benchmarks/floor.py: listen in b, dial in a), the floor;
- ``libdatachannel``: node-datachannel's forwarder (benchmarks/ndc/forward.mjs,
  the same shape as the floor), the compiled-WebRTC anchor; needs Node and
  ``npm --prefix benchmarks/ndc install``, skipped with the reason otherwise;
- ``ssh -R``: ``ssh -R`` from a to a throwaway sshd in b.

Per path: MB/s of one download (median of ``--repeat``), each side's CPU
over the download as a share of one core (from /proc), and microseconds of
CPU per 1400 bytes delivered per side (a packet's worth at 1400-byte packets;
counted in bytes because with UDP GSO/GRO one veth frame carries dozens of
packets, so frame counts say nothing about per-packet work). ``--profile`` runs the mesh processes
under cProfile and prints each side's top entries. Ratios are against the
floor and, with ``--baseline``, against the baseline measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import Source, download, exchange  # noqa: E402

from tests import sshd  # noqa: E402
from tests.conftest import MESH, Proc, stop_all  # noqa: E402
from tests.natlab.lab import Lab, available  # noqa: E402

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
PER = 1400
"""Bytes per unit of the CPU-per-packet figure."""
SOURCE_PORT, SIGNAL_PORT, SSHD_PORT = 9000, 8765, 2222
NDC = ROOT / "benchmarks" / "ndc"


# -- helpers run inside a namespace (this file, re-executed) -----------------------------
def _serve_source() -> None:
    Source(0, host="0.0.0.0", port=SOURCE_PORT)
    print("ready", flush=True)
    time.sleep(10**6)


def _fetch(host: str, port: int, size: int, deadline_s: float) -> None:
    """Download ``size`` bytes (retrying while nothing listens yet); print seconds."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            print(json.dumps({"seconds": download(port, size, host)}), flush=True)
            return
        except (OSError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                print(json.dumps({"error": str(exc)}), flush=True)
                sys.exit(1)
            time.sleep(0.1)


# -- the lab and its processes --------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (sshd forks per connection)."""
    out = [pid]
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    for kid in kids.split():
        out += tree(int(kid))
    return out


@dataclass
class Opened:
    port: int
    """Where the client in b connects."""
    host: str = "127.0.0.1"
    a: list[int] = field(default_factory=list)
    """Processes of the sharing side (in a); their children count too."""
    b: list[int] = field(default_factory=list)
    relay: list[int] = field(default_factory=list)
    """The TURN relay's process, for the relayed paths."""
    packet: int | None = None
    stop: Callable[[], None] = lambda: None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="mesh-veth-"))
        self.lab = Lab()
        self.a, self.b = self.lab.build_pair(1500)
        self.procs: list[Proc] = []
        self.popens: list[subprocess.Popen[str]] = []
        self.homes = 0
        src = self.popen(self.a, [sys.executable, __file__, "_source"])
        assert src.stdout is not None and src.stdout.readline().strip() == "ready"
        self.signal_url = ""
        self.signal_pid = 0
        self.trees: dict[str, Path] = {"": ROOT}

    def popen(self, ns: str, argv: list[str], env: dict[str, str] | None = None,
              stdin: bool = False) -> subprocess.Popen[str]:
        p = subprocess.Popen(self.lab.exec_prefix(ns) + argv, stdout=subprocess.PIPE,
                             stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                             text=True, env=env)
        self.popens.append(p)
        return p

    def mesh(self, ns: str, *args: str, tree_dir: Path = ROOT, profile: str | None = None,
             extra_env: dict[str, str] | None = None) -> Proc:
        self.homes += 1
        env = dict(os.environ)
        for name in ("MESH_ICE_ADDRESSES", "MESH_SIGNAL"):
            env.pop(name, None)
        env.update(MESH_HOME=str(self.tmp / f"home{self.homes}"), PYTHONUNBUFFERED="1",
                   MESH_LAN="off", PYTHONPATH=str(tree_dir), **(extra_env or {}))
        cmd = MESH if tree_dir == ROOT and profile is None else [sys.executable]
        if profile is not None:
            cmd = [sys.executable, "-m", "cProfile", "-o", profile]
        if cmd != MESH:
            cmd = [*cmd, "-m", "mesh"]
        proc = Proc(list(args), env, cmd=self.lab.exec_prefix(ns) + cmd)
        self.procs.append(proc)
        return proc

    def signal(self) -> str:
        if not self.signal_url:
            proc = self.mesh(self.a, "signal", "--host", A_IP, "--port", str(SIGNAL_PORT),
                             "--public-ip", A_IP, "--relay-allow", "198.18.0.0/15",
                             "--relay-bandwidth", str(10**10), "--json")
            self.signal_url = str(proc.event("ready")["url"])
            self.signal_pid = proc.p.pid
        return self.signal_url

    def rx_packets(self) -> int:
        out = subprocess.run(self.lab.exec_prefix(self.b) + [
            "cat", "/sys/class/net/eth0/statistics/rx_packets"], capture_output=True, text=True)
        return int(out.stdout)

    def fetch(self, opened: Opened, size: int) -> dict[str, float]:
        a_pids = [p for pid in opened.a for p in tree(pid)]
        b_pids = [p for pid in opened.b for p in tree(pid)]
        cpu_a = sum(cpu_seconds(p) for p in a_pids)
        cpu_b = sum(cpu_seconds(p) for p in b_pids)
        cpu_relay = sum(cpu_seconds(p) for p in opened.relay)
        packets = self.rx_packets()
        t0 = time.perf_counter()
        res = subprocess.run(self.lab.exec_prefix(self.b) + [
            sys.executable, __file__, "_fetch", opened.host, str(opened.port), str(size), "60"],
            capture_output=True, text=True, timeout=120 + size / 1e6)
        wall = time.perf_counter() - t0
        out = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {}
        if res.returncode != 0 or "seconds" not in out:
            raise RuntimeError(f"download failed: {out.get('error') or res.stderr.strip()}")
        packets = self.rx_packets() - packets
        used_a = sum(cpu_seconds(p) for p in a_pids) - cpu_a
        used_b = sum(cpu_seconds(p) for p in b_pids) - cpu_b
        used_relay = sum(cpu_seconds(p) for p in opened.relay) - cpu_relay
        return {"seconds": out["seconds"], "wall": wall, "cpu_a": used_a, "cpu_b": used_b,
                "cpu_relay": used_relay, "packets": packets}

    def close(self) -> None:
        stop_all(self.procs)
        for p in self.popens:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.lab.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- paths ------------------------------------------------------------------------------
    def tcp(self) -> Opened:
        return Opened(SOURCE_PORT, host=A_IP)

    def mesh_path(self, relay: bool, commit: str = "", env: dict[str, str] | None = None
                  ) -> Opened:
        url = self.signal()
        tree_dir = self.trees[commit]
        prof = self.tmp / f"prof-{len(self.procs)}" if self.args.profile and not commit else None
        share = self.mesh(self.a, "share", f"127.0.0.1:{SOURCE_PORT}", "--signal", url,
                          "--json", "--no-lan", tree_dir=tree_dir,
                          profile=f"{prof}.share" if prof else None, extra_env=env)
        ticket = str(share.event("ready", timeout=60)["ticket"])
        conn = self.mesh(self.b, "connect", ticket, "--json",
                         *(["--relay-only"] if relay else []), tree_dir=tree_dir,
                         profile=f"{prof}.connect" if prof else None, extra_env=env)
        port = int(conn.event("listening", timeout=60)["port"])
        connected = conn.event("connected", timeout=60)
        if relay and connected["path"] != "relay":
            raise RuntimeError("expected the relay path")
        try:
            packet = int(conn.event("path_mtu", timeout=10)["packet"])
        except AssertionError:
            packet = 1189

        def stop() -> None:
            for proc in (conn, share):  # one SIGTERM each: a second one ends it at once,
                proc.p.send_signal(signal.SIGTERM)  # before cProfile writes its file
            for proc in (conn, share):
                try:
                    proc.p.wait(15)
                except subprocess.TimeoutExpired:
                    proc.p.kill()
            if prof is not None:
                for side in ("share", "connect"):
                    print_profile(side, Path(f"{prof}.{side}"))

        return Opened(port, a=[share.p.pid], b=[conn.p.pid], packet=packet, stop=stop,
                      relay=[self.signal_pid] if relay else [])

    def pair(self, listen: list[str], dial: list[str], env_a: dict[str, str],
             env_b: dict[str, str], packet: int | None) -> Opened:
        """A floor-shaped forwarder: ``listen`` in b prints an offer, ``dial`` in a answers."""
        lst = self.popen(self.b, listen, env_b, stdin=True)
        dia = self.popen(self.a, dial, env_a, stdin=True)
        info = exchange(lst, dia)

        def stop() -> None:
            for p in (lst, dia):
                p.kill()
                p.wait()

        return Opened(int(info["listening"]), a=[dia.pid], b=[lst.pid], packet=packet,
                      stop=stop)

    def aiortc(self) -> Opened:
        floor = [sys.executable, str(ROOT / "benchmarks/floor.py")]
        return self.pair([*floor, "listen", "0"], [*floor, "dial", f"127.0.0.1:{SOURCE_PORT}"],
                         dict(os.environ, MESH_ICE_ADDRESSES=A_IP),
                         dict(os.environ, MESH_ICE_ADDRESSES=B_IP), 1189)

    def libdatachannel(self) -> Opened:
        script = [str(shutil.which("node")), str(NDC / "forward.mjs")]
        return self.pair([*script, "listen", "0"], [*script, "dial", f"127.0.0.1:{SOURCE_PORT}"],
                         dict(os.environ), dict(os.environ), None)

    def ssh(self) -> Opened:
        d = self.tmp / "ssh"
        sshd.config(d, B_IP, SSHD_PORT)
        daemon = self.popen(self.b, sshd.daemon(d))
        time.sleep(0.5)
        remote = 9100
        client = self.popen(self.a, sshd.client(
            d, SSHD_PORT, B_IP, "-N", "-T", "-o", "ExitOnForwardFailure=yes", "-R",
            f"127.0.0.1:{remote}:127.0.0.1:{SOURCE_PORT}"))

        def stop() -> None:
            for p in (client, daemon):
                p.terminate()
                p.wait(5)

        return Opened(remote, a=[client.pid], b=[daemon.pid], stop=stop)


def print_profile(side: str, path: Path) -> None:
    if not path.exists():
        print(f"{side}: no profile written")
        return
    print(f"--- {side}: top entries by own time ---")
    try:
        stats = pstats.Stats(str(path))
    except (EOFError, ValueError, TypeError) as exc:
        print(f"{side}: the profile is incomplete ({exc!r}: the process was killed?)")
        return
    stats.sort_stats("tottime").print_stats(12)


def skip_reason(name: str) -> str | None:
    if name == "libdatachannel":
        if shutil.which("node") is None:
            return "Node.js is not installed"
        if not (NDC / "node_modules" / "node-datachannel").exists():
            return "node-datachannel is not installed (npm --prefix benchmarks/ndc install)"
    if name == "ssh -R" and sshd.tools() is None:
        return "OpenSSH is not installed"
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mb * 1024 * 1024
    names = [p.strip() for p in args.paths.split(",") if p.strip()]
    if args.baseline:
        short = args.baseline[:7]
        names += [f"mesh@{short}", f"mesh-relay@{short}"]
    results: dict[str, Any] = {"link": "veth, MTU 1500, two network namespaces",
                               "size_mb": args.size_mb, "repeat": args.repeat, "paths": {}}
    paths = results["paths"]
    lab_missing = available()
    if lab_missing:
        for name in names:
            paths[name] = {"skipped": lab_missing}
        return results
    bench = Bench(args)
    try:
        if args.baseline:
            tree_dir = bench.tmp / "baseline"
            tree_dir.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline],
                                     capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(tree_dir)], input=archive.stdout, check=True)
            bench.trees[args.baseline[:7]] = tree_dir
        openers: dict[str, Callable[[], Opened]] = {
            "tcp": bench.tcp,
            "mesh": lambda: bench.mesh_path(relay=False),
            "mesh-relay": lambda: bench.mesh_path(relay=True),
            "mesh-no-offload": lambda: bench.mesh_path(False, env={"MESH_UDP_OFFLOAD": "off"}),
            "mesh-relay-no-offload": lambda: bench.mesh_path(
                True, env={"MESH_UDP_OFFLOAD": "off"}),
            "aiortc": bench.aiortc,
            "libdatachannel": bench.libdatachannel,
            "ssh -R": bench.ssh,
        }
        for commit in bench.trees:
            if commit:
                openers[f"mesh@{commit}"] = lambda c=commit: bench.mesh_path(False, c)
                openers[f"mesh-relay@{commit}"] = lambda c=commit: bench.mesh_path(True, c)
        for name in names:
            reason = skip_reason(name)
            if reason:
                paths[name] = {"skipped": reason}
                print(f"{name}: skipped ({reason})", flush=True)
                continue
            print(f"{name} ...", flush=True)
            opened = openers[name]()
            try:
                runs = [bench.fetch(opened, size) for _ in range(args.repeat)]
            except RuntimeError as exc:
                paths[name] = {"failed": str(exc)}
                print(f"{name}: failed ({exc})", flush=True)
                continue
            finally:
                opened.stop()
            mid = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
            res: dict[str, Any] = {
                "mb_s": round(size / 1e6 / statistics.median(r["seconds"] for r in runs), 2),
                "cpu_a": round(mid["cpu_a"] / mid["wall"], 2),
                "cpu_b": round(mid["cpu_b"] / mid["wall"], 2),
            }
            if opened.relay:
                res["cpu_relay"] = round(mid["cpu_relay"] / mid["wall"], 2)
            # per 1400 bytes delivered: the packet size in question, and a count no
            # offload changes (with UDP GSO/GRO one veth frame carries dozens of packets)
            units = size / PER
            res["us_per_1400b_a"] = round(mid["cpu_a"] / units * 1e6, 2)
            res["us_per_1400b_b"] = round(mid["cpu_b"] / units * 1e6, 2)
            if mid["packets"]:
                res["veth_frames"] = mid["packets"]
            if opened.packet is not None:
                res["packet_bytes"] = opened.packet
            paths[name] = res
            print(f"{name}: {res}", flush=True)
    finally:
        bench.close()
    floor = paths.get("aiortc", {}).get("mb_s")
    base = paths.get(f"mesh@{args.baseline[:7]}", {}).get("mb_s") if args.baseline else None
    base_relay = (paths.get(f"mesh-relay@{args.baseline[:7]}", {}).get("mb_s")
                  if args.baseline else None)
    for name, r in paths.items():
        if "mb_s" not in r:
            continue
        if floor:
            r["x_floor"] = round(r["mb_s"] / floor, 2)
        if name == "mesh" and base:
            r["x_baseline"] = round(r["mb_s"] / base, 2)
        if name == "mesh-relay" and base_relay:
            r["x_baseline"] = round(r["mb_s"] / base_relay, 2)
    return results


def table(results: dict[str, Any]) -> str:
    cols = [("MB/s", "mb_s"), ("x floor", "x_floor"), ("x baseline", "x_baseline"),
            ("CPU a (share)", "cpu_a"), ("CPU b (connect)", "cpu_b"), ("CPU relay", "cpu_relay"),
            ("us CPU/1400 B a", "us_per_1400b_a"), ("us CPU/1400 B b", "us_per_1400b_b"),
            ("SCTP packet B", "packet_bytes")]
    lines = [f"{results['link']}; {results['size_mb']} MB downloads from a to b, median of "
             f"{results['repeat']}; CPU as a share of one core; us of CPU per 1400 bytes "
             "delivered (a packet's worth at 1400-byte packets).", "",
             "| path | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in results["paths"].items():
        if "skipped" in r or "failed" in r:
            lines.append(f"| {name} | {'skipped' if 'skipped' in r else 'failed'}: "
                         f"{r.get('skipped') or r.get('failed')} |")
            continue
        lines.append(f"| {name} | " + " | ".join(str(r.get(k, "-")) for _, k in cols) + " |")
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--paths", default="tcp,mesh,mesh-relay,aiortc,libdatachannel,ssh -R")
    ap.add_argument("--baseline", default="", help="also run mesh at this commit")
    ap.add_argument("--profile", action="store_true", help="cProfile the mesh processes")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    add_arguments(ap)
    args = ap.parse_args(argv)
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "veth.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (out / "veth.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_source":
        _serve_source()
    elif len(sys.argv) > 1 and sys.argv[1] == "_fetch":
        _fetch(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
