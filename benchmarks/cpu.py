"""Where the CPU goes during one bulk download through mesh, per process.

    python benchmarks/cpu.py [--relay] [--size-mb 150] [--base-size]
    python benchmarks/cpu.py --veth [--baseline COMMIT] [--size-mb 100]

Starts a signaling server, a share and a connect on 127.0.0.1 (``--relay``:
``mesh connect --relay-only``, through the embedded TURN relay; ``--base-size``:
``MESH_PLPMTUD=off``), downloads once, and prints MB/s and each process's CPU
time over the download as a share of one core (from /proc). A process well
under 100% while the transfer is slow means the path is paced by a window or a
round trip, not by computation. Linux only.

``--veth``: microseconds of CPU per packet per side at 1400-byte packets, on
the 1500-MTU veth between two namespaces (benchmarks/veth.py, needs root):
mesh, libdatachannel beside it, mesh at ``--baseline COMMIT`` (before), and
the top entries of each mesh side's profile (a second, profiled run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import Source, download  # noqa: E402

from tests.conftest import Mesh  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_packet_on_veth(argv: list[str]) -> None:
    import veth

    paths = ["--paths", "mesh,libdatachannel"]
    veth.main([*paths, *argv])
    rest, skip = [], False
    for arg in argv:  # the profiled run: this tree only
        if skip or arg.startswith("--baseline"):
            skip = arg == "--baseline"
            continue
        rest.append(arg)
    veth.main(["--paths", "mesh", "--repeat", "1", "--profile", *rest,
               "--out", tempfile.mkdtemp(prefix="mesh-cpu-profile-")])


def main() -> None:
    if "--veth" in sys.argv[1:]:
        per_packet_on_veth([a for a in sys.argv[1:] if a != "--veth"])
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay", action="store_true")
    ap.add_argument("--base-size", action="store_true")
    ap.add_argument("--size-mb", type=int, default=150)
    args = ap.parse_args()
    size = args.size_mb * 1024 * 1024
    env = {"MESH_PLPMTUD": "off"} if args.base_size else {}
    mesh = Mesh(Path(tempfile.mkdtemp(prefix="mesh-cpu-")))
    try:
        src = Source(size)
        sig, url = mesh.signal("--relay-allow", "127.0.0.0/8", "--relay-bandwidth",
                               str(10**10))
        share = mesh.start("share", str(src.port), "--signal", url, "--json", "--no-lan",
                           **env)
        ticket = str(share.event("ready")["ticket"])
        conn = mesh.start("connect", ticket, "--json",
                          *(["--relay-only"] if args.relay else []), **env)
        port = int(conn.event("listening")["port"])
        conn.event("connected")
        time.sleep(1)
        pids = {"signal+TURN": sig.p.pid, "share": share.p.pid, "connect": conn.p.pid,
                "this script": os.getpid()}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.perf_counter()
        seconds = download(port, size)
        wall = time.perf_counter() - t0
        usage = ", ".join(f"{name} {(cpu_seconds(pid) - before[name]) / wall:.0%}"
                          for name, pid in pids.items())
        path = "relay" if args.relay else "direct"
        print(f"{path}: {size / 1e6 / seconds:.1f} MB/s; CPU of one core: {usage}")
    finally:
        mesh.close()


if __name__ == "__main__":
    main()
