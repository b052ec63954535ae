"""Path MTU discovery on a path that shrinks under a running stream.

The lab's links start jumbo-sized (MTU 9000), so both sides settle on 8192-byte
SCTP packets (16384 does not fit). Mid-stream the link between side b's router
and host drops to 1500: b's own large packets now fail with EMSGSIZE, and a's
are dropped by b's router (DF set) - a black hole for the size in use. Both
sides must notice (data stops being acknowledged), fall back to the 1189-byte
base, let the chunks already cut at 8192 through as IP fragments, and the
stream must carry on byte-exact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from tests.natlab.conftest import HERE
from tests.natlab.lab import sh


def set_mtu(ns: str, ifname: str, mtu: int) -> None:
    sh("ip", "-n", ns, "link", "set", ifname, "mtu", str(mtu))


def test_black_hole_falls_back_to_the_base_size(lab_run: Any) -> None:
    run = lab_run("port-restricted", "port-restricted")
    a, b = run.lab.sides["a"], run.lab.sides["b"]
    assert a.router_ns and b.router_ns
    for side, port in ((a, "pa"), (b, "pb")):
        set_mtu(run.lab.wan, port, 9000)
        set_mtu(side.router_ns, "wan0", 9000)
        set_mtu(side.router_ns, "lan0", 9000)
        set_mtu(side.host_ns, "eth0", 9000)
    url = run.signal()
    run.echo(a.host_ns, 7000)
    share = run.mesh(a.host_ns, "a", "share", "7000", "--signal", url, "--json")
    ticket = share.event("ready", timeout=30)["ticket"]
    conn = run.mesh(b.host_ns, "b", "connect", ticket, "--port", "9000", "--json")
    assert conn.event("connected", timeout=40)["path"] == "direct"
    assert conn.event("path_mtu", timeout=20)["packet"] == 8192, conn.events
    assert share.event("path_mtu", timeout=20)["packet"] == 8192, share.events

    streamer = subprocess.Popen(run.lab.exec_prefix(b.host_ns) + [
        sys.executable, str(HERE / "streamer.py"), "9000", "25", "400000"],
        stdout=subprocess.PIPE, text=True)
    time.sleep(4)
    set_mtu(b.router_ns, "lan0", 1500)
    set_mtu(b.host_ns, "eth0", 1500)
    out, _ = streamer.communicate(timeout=120)
    stream = json.loads(out)
    assert not stream["corrupt"] and stream["ended"] == "eof", stream
    assert stream["received"] == stream["sent"], stream
    # the sides whose large packets stopped getting through went back to the base size
    assert conn.event("path_mtu", timeout=30)["packet"] == 1189, conn.events
    assert share.event("path_mtu", timeout=30)["packet"] == 1189, share.events
    print(f"stream of {stream['sent']} bytes survived the MTU drop: {stream}")
