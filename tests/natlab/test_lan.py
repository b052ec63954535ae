"""Zero-config on one LAN: namespaces on one bridge, multicast, no signaling server anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from mesh.node.home import load_or_create
from tests.conftest import MESH
from tests.natlab.conftest import HERE, LabRun
from tests.natlab.lab import Lab


@pytest.fixture
def lan(tmp_path: Any) -> Any:
    lab = Lab()
    hosts = lab.build_lan(3)
    run = LabRun(lab, tmp_path)
    run.lan = "on"
    yield run, hosts
    run.close()
    lab.close()


def ls(run: LabRun, ns: str, timeout: float = 2.0) -> list[dict[str, Any]]:
    res = subprocess.run(run.lab.exec_prefix(ns) + [*MESH, "ls", "--json", "--timeout",
                                                    str(timeout)],
                         capture_output=True, text=True, env=run.env("lister"), timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_share_found_by_name_and_connected_without_a_server(lan: Any) -> None:
    run, (a, b, c) = lan
    run.echo(a, 7000)
    share = run.mesh(a, "a", "share", "7000", "--name", "bench-echo", "--json")
    share.event("ready", timeout=30)
    warning = share.event("warning", timeout=5)
    assert "LAN mode" in warning["message"]
    node = load_or_create(run.tmp / "a").node_id
    # a third host advertises forgeries under the same name
    spoofer = subprocess.Popen(run.lab.exec_prefix(c) + [
        sys.executable, str(HERE / "spoof_advert.py"), "bench-echo", node, "10.77.0.3"],
        stdout=subprocess.PIPE, text=True, env=run.env("spoofer"))
    run.procs.append(spoofer)
    assert spoofer.stdout is not None and spoofer.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    listed = ls(run, b, timeout=2.5)
    took = time.monotonic() - t0
    assert [(s["name"], s["node_id"]) for s in listed] == [("bench-echo", node)], listed
    assert listed[0]["address"] .startswith("10.77.0.1:") and listed[0]["open"] is True
    assert took < 3.0 + 1.5  # 2.5 s of listening plus process start
    # connect by name: the forged adverts neither win nor make it ambiguous
    conn = run.mesh(b, "b", "connect", "bench-echo", "--port", "9000", "--json")
    connected = conn.event("connected", timeout=30)
    assert connected["path"] == "direct"
    assert run.client(b, 9000, 3 * 1024 * 1024)["ok"]
    # the URLs nobody typed are labelled as the share's LAN endpoint (issue 21 #8)
    assert share.event("signal")["lan"] is True
    assert conn.event("signal")["lan"] is True
    # a node id prefix works too
    conn2 = run.mesh(b, "b2", "connect", node[:10], "--port", "9001", "--json")
    conn2.event("connected", timeout=30)
    assert run.client(b, 9001, 100_000)["ok"]
    # a stopped share disappears from `mesh ls` within 10 s
    share.stop()
    stopped = time.monotonic()
    while any(s["node_id"] == node for s in ls(run, b, timeout=1.0)):
        assert time.monotonic() - stopped < 10
    print(f"listed in {took:.1f} s; gone {time.monotonic() - stopped:.1f} s after stop")


def test_ticket_with_lan_hints_and_ambiguity(lan: Any) -> None:
    run, (a, b, c) = lan
    run.echo(a, 7000)
    run.echo(c, 7000)
    one = run.mesh(a, "a", "share", "7000", "--name", "twin", "--json")
    one.event("ready", timeout=30)
    two = run.mesh(c, "c", "share", "7000", "--name", "twin", "--json")
    ticket = two.event("ready", timeout=30)["ticket"]
    time.sleep(1)
    res = subprocess.run(run.lab.exec_prefix(b) + [*MESH, "connect", "twin", "--json"],
                         capture_output=True, text=True, env=run.env("b"), timeout=60)
    assert res.returncode != 0
    err = json.loads(res.stdout.splitlines()[-1])
    assert err["event"] == "error" and "ambiguous" in err["message"]
    assert err["message"].count("twin") >= 2
    # the ticket carries the LAN endpoint: it works with no signaling server at all
    conn = run.mesh(b, "b", "connect", ticket, "--port", "9000", "--json")
    conn.event("connected", timeout=30)
    assert run.client(b, 9000, 1024 * 1024)["ok"]
