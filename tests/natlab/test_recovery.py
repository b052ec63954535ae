"""A network that drops and comes back costs the outage, not a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from tests.natlab.conftest import HERE


def start_pair(lab_run: Any, nat_a: str, nat_b: str, *connect_args: str) -> tuple[Any, Any, Any]:
    run = lab_run(nat_a, nat_b)
    url = run.signal()
    a, b = run.lab.sides["a"], run.lab.sides["b"]
    run.echo(a.host_ns, 7000)
    share = run.mesh(a.host_ns, "a", "share", "7000", "--signal", url, "--json")
    ticket = share.event("ready", timeout=30)["ticket"]
    conn = run.mesh(b.host_ns, "b", "connect", ticket, "--port", "9000", "--json",
                    *connect_args)
    first = conn.event("connected", timeout=40)
    return run, conn, first


def test_path_cut_and_restored(lab_run: Any) -> None:
    run, conn, first = start_pair(lab_run, "port-restricted", "port-restricted")
    assert first["path"] == "direct"
    b = run.lab.sides["b"]
    streamer = subprocess.Popen(run.lab.exec_prefix(b.host_ns) + [
        sys.executable, str(HERE / "streamer.py"), "9000", "60"], stdout=subprocess.PIPE,
        text=True)
    time.sleep(2)
    run.lab.cut("b")
    time.sleep(15)  # longer than the 8 s dead-link detection
    run.lab.restore("b")
    restored = time.monotonic()
    out, _ = streamer.communicate(timeout=120)
    stream = json.loads(out)
    # the open connection waited through the cut and carried on (issue 18): every byte
    assert not stream["corrupt"] and stream["received"] == stream["sent"], stream
    assert stream["ended"] == "eof", stream
    # the peer connection was declared dead and rebuilt
    events = [conn.event("disconnected", timeout=30)]
    again = conn.event("connected", timeout=60)
    assert again["path"] in ("direct", "relay")
    # new connections work within 45 s of the path coming back
    while True:
        result = run.client(b.host_ns, 9000, 1024 * 1024)
        if result["ok"]:
            break
        assert time.monotonic() - restored < 45, result
        time.sleep(1)
    print(f"recovered {time.monotonic() - restored:.1f} s after restore; {events}")


def test_relay_moves_back_to_direct(lab_run: Any) -> None:
    run = lab_run("port-restricted", "port-restricted")
    run.lab.block_udp_between_sides(True)
    url = run.signal()
    a, b = run.lab.sides["a"], run.lab.sides["b"]
    run.echo(a.host_ns, 7000)
    share = run.mesh(a.host_ns, "a", "share", "7000", "--signal", url, "--json")
    ticket = share.event("ready", timeout=30)["ticket"]
    conn = run.mesh(b.host_ns, "b", "connect", ticket, "--port", "9000", "--json",
                    "--retry-direct", "3")
    first = conn.event("connected", timeout=40)
    assert first["path"] == "relay"
    assert run.client(b.host_ns, 9000, 1024 * 1024)["ok"]
    run.lab.block_udp_between_sides(False)
    upgraded = conn.event("connected", timeout=40)
    assert upgraded["path"] == "direct" and upgraded["attempt"] == "upgrade", upgraded
    assert run.client(b.host_ns, 9000, 2 * 1024 * 1024)["ok"]
